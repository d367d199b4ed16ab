//! `microunify`: list adapters, benchmark kernels, run the projection demo, compress a
//! checkpoint, inspect or decompress a compressed file.

mod adapters;
mod bench;
mod decompress;
mod demo;
mod infer;
mod inspect;
mod project;

use anyhow::Result;
use clap::{Parser, Subcommand};
use microunify::gpu::{BackendChoice, Gpu, GpuOptions};

#[derive(Parser)]
#[command(
    version,
    about = "Micro-structured weight unification and pruning on any GPU"
)]
struct Cli {
    /// Use the adapter whose name contains this (case-insensitive); env MICROUNIFY_ADAPTER.
    #[arg(long, global = true)]
    adapter: Option<String>,
    /// Restrict to one wgpu backend; env MICROUNIFY_BACKEND.
    #[arg(long, global = true, value_enum)]
    backend: Option<BackendChoice>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the adapters wgpu sees, with their limits and features.
    Adapters(adapters::Args),
    /// Benchmark a kernel against the copy bandwidth of the same adapter.
    Bench(bench::Args),
    /// Project a real network's weight shapes on the GPU and check it against the CPU.
    Demo(demo::Args),
    /// Compress a .safetensors checkpoint: project its weight tensors on the GPU.
    Project(project::Args),
    /// Run a compressed file's network on a test set: accuracy and images/s (--dense: the
    /// speedup over the dense GEMM on the same adapter).
    Infer(infer::Args),
    /// Validate a compressed file and print its per-layer storage.
    Inspect(inspect::Args),
    /// Write the dense checkpoint a compressed file stands for (original names, shapes, dtypes).
    Decompress(decompress::Args),
}

impl Cli {
    fn gpu_options(&self) -> GpuOptions {
        GpuOptions {
            adapter: self.adapter.clone(),
            backend: self.backend,
        }
    }

    fn open_gpu(&self) -> Result<Gpu> {
        let gpu = Gpu::new(&self.gpu_options())?;
        microunify::errln!("adapter: {gpu:?}");
        Ok(gpu)
    }
}

fn main() {
    microunify::cli::main(|| {
        let cli = Cli::parse();
        match &cli.command {
            Command::Adapters(a) => adapters::run(&cli.gpu_options(), a),
            Command::Bench(a) => cli.open_gpu().and_then(|g| bench::run(&g, a)),
            Command::Demo(a) => cli.open_gpu().and_then(|g| demo::run(&g, a)),
            // Both check their input before (or without) touching a GPU.
            Command::Project(a) => project::run(&cli.gpu_options(), a),
            Command::Infer(a) => infer::run(&cli.gpu_options(), a),
            Command::Inspect(a) => inspect::run(a),
            Command::Decompress(a) => decompress::run(a),
        }
    })
}
