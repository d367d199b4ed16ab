//! `microunify project`: one-shot compression of a `.safetensors` checkpoint. Every selected
//! 2-D (linear) or 4-D (conv) float tensor is projected on the GPU in one batched run with
//! `U = 0`; the result is written in the compressed format (`microunify::format`), other
//! tensors passing through unchanged. A compressed input is projected again: its selected
//! layers from their dense reconstruction, the others kept compressed as they are (see
//! `microunify::format::input`). The output path and the input are checked before a GPU is
//! opened, so bad arguments and bad files fail fast and without an adapter.

use anyhow::{Context, Result, bail};
use microunify::block::ConvLayout;
use microunify::format::dtype::layer_dtypes_text;
use microunify::format::input::{ProjectInput, Selection};
use microunify::fsio;
use microunify::gpu::projection::Tensor;
use microunify::gpu::{Gpu, GpuOptions, NetworkProjection};
use microunify::{BlockShape, Ratios, SelectionMode};
use regex::Regex;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint to compress (.safetensors).
    #[arg(long)]
    input: PathBuf,
    /// Compressed file to write (atomically).
    #[arg(long)]
    output: PathBuf,
    /// Block shape ROWSxCOLS for every layer.
    #[arg(long, default_value = "4x4")]
    block: BlockShape,
    /// Fraction of each layer's blocks to prune.
    #[arg(long)]
    prune: f64,
    /// Fraction of each layer's blocks to unify.
    #[arg(long)]
    unify: f64,
    /// Rank blocks across all selected layers instead of per layer.
    #[arg(long)]
    global: bool,
    /// Only tensors whose name matches this regex (default: all).
    #[arg(long)]
    include: Option<String>,
    /// Leave tensors whose name matches this regex uncompressed.
    #[arg(long)]
    exclude: Option<String>,
    /// GEMM view of conv weights: channel-major (PyTorch flatten) or position-major (NHWC).
    #[arg(long, default_value = "channel-major", value_parser = parse_layout)]
    layout: ConvLayout,
}

fn parse_layout(s: &str) -> Result<ConvLayout, String> {
    match s {
        "channel-major" => Ok(ConvLayout::ChannelMajor),
        "position-major" => Ok(ConvLayout::PositionMajor),
        _ => Err(format!(
            "unknown layout {s:?} (channel-major or position-major)"
        )),
    }
}

fn regex(flag: &str, pattern: &Option<String>) -> Result<Option<Regex>> {
    pattern
        .as_deref()
        .map(|p| Regex::new(p).with_context(|| format!("{flag} {p:?} is not a valid regex")))
        .transpose()
}

pub fn run(gpu_options: &GpuOptions, args: &Args) -> Result<()> {
    let ratios = Ratios::new(args.prune, args.unify, "--prune/--unify")?;
    let b = args.block;
    let selection = Selection {
        include: regex("--include", &args.include)?,
        exclude: regex("--exclude", &args.exclude)?,
        layout: args.layout,
    };
    // Before any reading or GPU work: an output that cannot be written is known now.
    fsio::check_writable(&args.output).context("--output cannot be written")?;
    let input = args.input.display();
    // A regular file only: a FIFO would block the read, a device never end it. Its length
    // is its own bound.
    let bytes = fsio::read_regular(&args.input, u64::MAX, "input checkpoint")?;
    let parsed =
        ProjectInput::parse(&bytes, &selection).with_context(|| format!("reading {input}"))?;
    drop(bytes);
    if parsed.selected.is_empty() {
        bail!(
            "no tensor selected: none of the {} tensors in {input} is a 2-D or 4-D {} tensor matching --include/--exclude",
            parsed.tensors,
            layer_dtypes_text()
        );
    }
    let specs = parsed.specs(b)?;

    let gpu = Gpu::new(gpu_options)?;
    microunify::errln!("adapter: {gpu:?}");
    let mode = if args.global {
        SelectionMode::Global(ratios)
    } else {
        SelectionMode::PerLayer(vec![ratios; specs.len()])
    };
    let start = Instant::now();
    let net = NetworkProjection::new(&gpu, specs.clone(), mode)?;
    for (l, s) in parsed.selected.iter().enumerate() {
        net.write(&gpu, Tensor::W, l, &s.gemm)?;
    }
    net.zero_dual(&gpu)?;
    net.run(&gpu)?;
    let matrices = (specs.iter().enumerate())
        .map(|(l, spec)| Ok(net.read_layer(&gpu, l)?.compress(spec)?))
        .collect::<Result<Vec<_>>>()?;
    let gpu_ms = start.elapsed().as_secs_f64() * 1e3;
    let (compressed, recompressed, kept) = (
        parsed.compressed,
        parsed.selected.iter().filter(|s| s.recompressed).count(),
        parsed.kept.layers.len(),
    );
    let out = parsed.finish(matrices)?;
    let size = out
        .write(&args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;

    microunify::outln!(
        "projected {} layers on {} in {gpu_ms:.1} ms (block {b}, prune {}, unify {}{}); {} tensors passed through",
        specs.len(),
        gpu.info.name,
        args.prune,
        args.unify,
        if args.global { ", global" } else { "" },
        out.passthrough.len()
    );
    if compressed {
        microunify::outln!(
            "the input was a compressed file: {recompressed} of its layers projected again from their dense reconstruction, {kept} kept as they were"
        );
    }
    crate::inspect::print_layers(&out);
    crate::inspect::print_sizes(size, &out);
    microunify::outln!("wrote {}", args.output.display());
    Ok(())
}
