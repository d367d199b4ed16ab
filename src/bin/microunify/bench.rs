//! `microunify bench projection`: the batched projection on real networks' weight shapes,
//! reported against a vec4 copy measured in the same run on the same adapter (and, as
//! `proc ms`, in process CPU time, which on lavapipe is the kernels' own work), after its
//! block states are checked against the CPU reference; `bench gemm` (in `bench/gemm.rs`):
//! the micro-structured GEMM against the dense one; `bench file` (in `bench/file.rs`): the
//! same for every compressed layer of a compressed file.

mod file;
mod gemm;

use anyhow::{Context, Result};
use microunify::bench::{AdapterJson, ProjectionCase, copy_gbps, projection_case};
use microunify::gpu::Gpu;
use microunify::{BlockShape, Ratios, nets};
use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    kernel: Kernel,
}

#[derive(clap::Subcommand)]
enum Kernel {
    /// The batched projection (stats, GPU selection, apply + dual update).
    Projection(ProjectionArgs),
    /// The micro-structured GEMM against the dense one, same weights, same adapter.
    Gemm(gemm::GemmArgs),
    /// Every compressed layer of a compressed file: micro GEMM against dense, per batch size.
    File(file::FileArgs),
}

#[derive(clap::Args)]
struct ProjectionArgs {
    /// Write the results as JSON here too (written atomically).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Networks to project (comma separated): lenet5, resnet18, bert-base-encoder.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "lenet5,resnet18,bert-base-encoder"
    )]
    nets: Vec<String>,
    /// Block shape for every layer.
    #[arg(long, default_value = "4x4")]
    block: BlockShape,
    /// Fraction of blocks pruned per layer.
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    prune: f64,
    /// Fraction of blocks unified per layer.
    #[arg(long, default_value_t = 0.3, allow_negative_numbers = true)]
    unify: f64,
    /// Timed runs per case (the median is reported).
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Skip timing the CPU reference.
    #[arg(long)]
    no_cpu: bool,
}

#[derive(Serialize)]
struct Report {
    adapter: AdapterJson,
    copy_gbps: f64,
    block: String,
    prune: f64,
    unify: f64,
    cases: Vec<ProjectionCase>,
}

pub fn run(gpu: &Gpu, args: &Args) -> Result<()> {
    match &args.kernel {
        Kernel::Projection(a) => projection(gpu, a),
        Kernel::Gemm(a) => gemm::run(gpu, a),
        Kernel::File(a) => file::run(gpu, a),
    }
}

fn projection(gpu: &Gpu, args: &ProjectionArgs) -> Result<()> {
    let ratios = Ratios::new(args.prune, args.unify, "--prune/--unify")?;
    let shapes = args
        .nets
        .iter()
        .map(|n| {
            nets::by_name(n).with_context(|| {
                format!("unknown network {n:?} (try lenet5, resnet18, bert-base-encoder)")
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let copy = copy_gbps(gpu, 64 << 20, args.runs)?;
    microunify::outln!("adapter: {}", gpu.info.name);
    microunify::outln!("copy (vec4, 64 MiB): {copy:.2} GB/s");
    microunify::outln!(
        "{:<20} {:>11} {:>6} {:>6} {:>10} {:>8} {:>8} {:>10} {:>10} {:>8}",
        "network",
        "params",
        "layers",
        "chunks",
        "gpu ms",
        "GB/s",
        "x copy",
        "proc ms",
        "cpu ms",
        "ratio"
    );
    let mut cases = Vec::new();
    for s in &shapes {
        let c = projection_case(gpu, s, args.block, ratios, args.runs, copy, !args.no_cpu)
            .with_context(|| format!("projecting {}", s.name))?;
        let ms = |m: Option<f64>| m.map_or("-".into(), |m| format!("{m:.1}"));
        microunify::outln!(
            "{:<20} {:>11} {:>6} {:>6} {:>10.2} {:>8.2} {:>8.2} {:>10} {:>10} {:>7.1}x",
            c.name,
            c.params,
            c.layers,
            c.chunks,
            c.gpu_ms,
            c.gbps,
            c.ratio_to_copy,
            ms(c.process_cpu_ms),
            ms(c.cpu_ms),
            c.compression_ratio
        );
        cases.push(c);
    }
    if let Some(path) = &args.json {
        let report = Report {
            adapter: AdapterJson::of(gpu),
            copy_gbps: copy,
            block: args.block.to_string(),
            prune: args.prune,
            unify: args.unify,
            cases,
        };
        write_json(path, &report)?;
    }
    Ok(())
}

/// Writes a benchmark's JSON atomically, creating its folder, and says where.
pub fn write_json(path: &std::path::Path, report: &impl serde::Serialize) -> Result<()> {
    let dir = microunify::fsio::parent_dir(path);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    microunify::fsio::write_atomic(path, serde_json::to_string_pretty(report)?.as_bytes())?;
    microunify::outln!("wrote {}", path.display());
    Ok(())
}
