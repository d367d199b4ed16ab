//! `microunify demo`: one batched projection of a real network's weight shapes on the GPU,
//! checked against the CPU reference, with what it did per layer. Any difference that is
//! not a proven near-tie (src/cpu/agreement.rs) is an error: exit status 1.

use anyhow::{Context, Result, bail};
use microunify::bench::ProjectionWorkload;
use microunify::block::{BlockState, Ratios, SelectionMode, storage_bits};
use microunify::gpu::Gpu;
use microunify::{BlockShape, nets};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Network whose weight shapes are projected: lenet5, resnet18, bert-base-encoder.
    #[arg(long, default_value = "lenet5")]
    net: String,
    /// Block shape for every layer.
    #[arg(long, default_value = "4x4")]
    block: BlockShape,
}

/// The per-layer (prune, unify) targets of the LeNet-5 ADMM demo (train-gpu's defaults);
/// other networks use 0.5 / 0.3 everywhere.
fn ratios_for(net: &str, layer: &str) -> (f64, f64) {
    match (net, layer) {
        ("lenet5", "conv1") => (0.2, 0.4),
        ("lenet5", "conv2") => (0.7, 0.2),
        ("lenet5", "fc1") => (0.95, 0.04),
        ("lenet5", "fc2") => (0.5, 0.3),
        _ => (0.5, 0.3),
    }
}

pub fn run(gpu: &Gpu, args: &Args) -> Result<()> {
    let shapes = nets::by_name(&args.net).with_context(|| {
        format!(
            "unknown network {:?} (try lenet5, resnet18, bert-base-encoder)",
            args.net
        )
    })?;
    let specs = shapes.specs(args.block)?;
    let ratios = specs
        .iter()
        .map(|l| {
            let (p, u) = ratios_for(shapes.name, &l.name);
            Ratios::new(p, u, &l.name)
        })
        .collect::<microunify::Result<Vec<_>>>()?;
    microunify::outln!(
        "projecting {} ({} weights in {} layers, {} blocks) with random W and U on {}",
        shapes.name,
        shapes.params(),
        specs.len(),
        args.block,
        gpu.info.name
    );
    let work =
        ProjectionWorkload::with_mode(gpu, &shapes, args.block, SelectionMode::PerLayer(ratios))?;
    let start = Instant::now();
    work.net.run(gpu)?;
    let gpu_ms = start.elapsed().as_secs_f64() * 1e3;
    let states = work.net.states(gpu)?;

    let start = Instant::now();
    let verdict = work.verdict(&states)?;
    let cpu_ms = start.elapsed().as_secs_f64() * 1e3;

    microunify::outln!(
        "{:<22} {:>12} {:>6} {:>8} {:>8} {:>8} {:>9}  vs CPU",
        "layer",
        "GEMM view",
        "block",
        "dense",
        "unified",
        "pruned",
        "ratio"
    );
    let (mut bits, mut weights) = (0u64, 0u64);
    for (i, (l, s)) in work.net.layout.layers.iter().zip(&states).enumerate() {
        let count = |x| s.iter().filter(|&&y| y == x).count();
        let b = storage_bits(&l.grid(), s);
        bits += b;
        weights += l.view.len() as u64;
        microunify::outln!(
            "{:<22} {:>12} {:>6} {:>8} {:>8} {:>8} {:>8.1}x  {}",
            l.name,
            format!("{}x{}", l.view.rows, l.view.cols),
            l.block.to_string(),
            count(BlockState::Dense),
            count(BlockState::Unified),
            count(BlockState::Pruned),
            32.0 * l.view.len() as f64 / b as f64,
            verdict.layer(i)
        );
    }
    microunify::outln!(
        "network: compression {:.1}x ({} bits for {} weights); GPU {gpu_ms:.1} ms (first run, includes pipeline warm-up), CPU reference {cpu_ms:.1} ms",
        32.0 * weights as f64 / bits as f64,
        bits,
        weights
    );
    let near = verdict.differences.iter().filter(|d| d.near_tie()).count();
    if !verdict.agrees() {
        bail!(
            "the GPU projection differs from the CPU reference beyond near-ties:\n{}",
            verdict.failures(10)
        );
    }
    if near == 0 {
        microunify::outln!("agrees with the CPU reference: every block state is the same");
    } else {
        microunify::outln!(
            "agrees with the CPU reference: {near} block choices differ, each a proven near-tie (key within f32 rounding of the threshold)"
        );
    }
    Ok(())
}
