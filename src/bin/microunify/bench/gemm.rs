//! `microunify bench gemm`: the micro-structured GEMM against the dense one on the same
//! projected weights, same X, same adapter, over block shapes, ratios and batch sizes. Every
//! case is first checked once against the CPU reference; a mismatch ends the run (exit 1)
//! naming the case. Block shapes go through `BlockShape`, so the one block limit holds.
//! `cpu x` is the speedup in process CPU time per product: on a CPU adapter (lavapipe) the
//! kernels' own work, which other processes sharing the cores do not skew as they skew
//! wall-clock times.

use super::write_json;
use anyhow::{Context, Result};
use microunify::BlockShape;
use microunify::bench::{AdapterJson, GemmCase, gemm_case, random_compressed};
use microunify::cpu::gemm::GEMM_REL;
use microunify::gpu::Gpu;
use serde::Serialize;

/// The (prune, unify) pairs of the default grid: from all dense to 90% pruned, and mixes.
const RATIOS: [(f64, f64); 7] = [
    (0.0, 0.0),
    (0.5, 0.0),
    (0.75, 0.0),
    (0.9, 0.0),
    (0.0, 0.5),
    (0.0, 0.9),
    (0.5, 0.4),
];

#[derive(clap::Args)]
pub struct GemmArgs {
    /// Write the results as JSON here too (written atomically).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Fewer timed runs per case (3 instead of 7): the grid in a couple of minutes on lavapipe.
    #[arg(long)]
    quick: bool,
    /// Batch sizes N (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "1,8,256")]
    n: Vec<usize>,
    /// Block shapes (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "4x4,8x8,16x16,32x32")]
    blocks: Vec<BlockShape>,
    /// Matrix sizes M = K (comma separated); default 1024, plus 4096 on a non-CPU adapter.
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Only these (prune:unify) pairs of the grid, e.g. `0.5:0.4,0:0` (default: all seven).
    #[arg(long, value_delimiter = ',', value_parser = parse_ratios)]
    ratios: Vec<(f64, f64)>,
    /// Also time every candidate kernel of each case (as the autotuner does) and print
    /// each one's time and its ratio to the fastest.
    #[arg(long)]
    variants: bool,
}

fn parse_ratios(s: &str) -> Result<(f64, f64), String> {
    let (p, u) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected PRUNE:UNIFY"))?;
    let num = |v: &str| v.trim().parse::<f64>().map_err(|e| format!("{v:?}: {e}"));
    Ok((num(p)?, num(u)?))
}

#[derive(Serialize)]
struct Report {
    adapter: AdapterJson,
    cases: Vec<GemmCase>,
}

pub fn run(gpu: &Gpu, args: &GemmArgs) -> Result<()> {
    let sizes = if !args.sizes.is_empty() {
        args.sizes.clone()
    } else if gpu.info.device_type == wgpu::DeviceType::Cpu {
        vec![1024]
    } else {
        vec![1024, 4096]
    };
    let runs = if args.quick { 3 } else { 7 };
    microunify::outln!("adapter: {}", gpu.info.name);
    microunify::outln!(
        "{:>5} {:>5} {:>4} {:>6} {:>5} {:>5} {:>10} {:>10} {:>8} {:>8} {:>9} {:>9} {:>6}  {}",
        "M",
        "K",
        "N",
        "block",
        "prune",
        "unify",
        "dense ms",
        "micro ms",
        "speedup",
        "cpu x",
        "GFLOP/s",
        "GB/s µ",
        "ratio",
        "kernels (dense / micro)"
    );
    let mut cases = Vec::new();
    // One untimed case first: the first product of a process runs slower (thread pool and
    // page warm-up), which would skew whichever case came first.
    if let (Some(&size), Some(&block), Some(&n)) =
        (sizes.first(), args.blocks.first(), args.n.first())
    {
        let cm = random_compressed(0, size, size, block, 0.0, 0.0)?;
        gemm_case(gpu, &cm, n, (0.0, 0.0), 1, false).with_context(|| {
            format!("GEMM warm-up case M = K = {size}, N = {n}, block {block}, all dense")
        })?;
    }
    for &size in &sizes {
        for &block in &args.blocks {
            let ratios = if args.ratios.is_empty() {
                &RATIOS[..]
            } else {
                &args.ratios[..]
            };
            for (i, &(prune, unify)) in ratios.iter().enumerate() {
                let cm = random_compressed(i as u64, size, size, block, prune, unify)
                    .with_context(|| format!("projecting {size}x{size} {block}"))?;
                for &n in &args.n {
                    let c = gemm_case(gpu, &cm, n, (prune, unify), runs, args.variants).with_context(|| {
                        format!(
                            "GEMM case M = K = {size}, N = {n}, block {block}, prune {prune}, unify {unify}"
                        )
                    })?;
                    microunify::outln!(
                        "{:>5} {:>5} {:>4} {:>6} {:>5} {:>5} {:>10.3} {:>10.3} {:>7.2}x {:>8} {:>9.2} {:>9.2} {:>5.1}x  {} / {}",
                        c.m,
                        c.k,
                        c.n,
                        block.to_string(),
                        prune,
                        unify,
                        c.dense_ms,
                        c.micro_ms,
                        c.speedup,
                        c.cpu_speedup.map_or("-".into(), |s| format!("{s:.2}x")),
                        c.gflops_dense,
                        c.gbps_micro,
                        c.compression_ratio,
                        c.dense_kernel,
                        c.micro_kernel
                    );
                    for (family, times) in
                        [("dense", &c.dense_variants), ("micro", &c.micro_variants)]
                    {
                        print_variants(family, times);
                    }
                    cases.push(c);
                }
            }
        }
    }
    let worst = cases
        .iter()
        .map(|c| c.dense_err.max(c.micro_err))
        .fold(0.0, f64::max);
    microunify::outln!(
        "{} cases checked against the CPU reference: largest error {worst:.1e} of an output's Σ|w·x| (bound {GEMM_REL:.0e})",
        cases.len()
    );
    if let Some(path) = &args.json {
        let report = Report {
            adapter: AdapterJson::of(gpu),
            cases,
        };
        write_json(path, &report)?;
    }
    Ok(())
}

/// One line per family: each candidate's ms per product and its time over the fastest's.
fn print_variants(family: &str, times: &[(String, f64)]) {
    let Some(best) = times.iter().map(|t| t.1).min_by(f64::total_cmp) else {
        return;
    };
    let list: Vec<String> = times
        .iter()
        .map(|(name, ms)| format!("{name} {ms:.3} ms ({:.2}x)", ms / best))
        .collect();
    microunify::outln!("      {family}: {}", list.join(", "));
}
