//! `microunify bench file`: every compressed layer of a compressed file (format v2), its
//! micro-structured GEMM against the dense GEMM of the same weights at its GEMM view, for
//! each batch size; per layer and for the whole file (the sum of the layers' times). Each
//! product is checked once against the CPU reference on a sample of rows; a mismatch ends
//! the run (exit 1) naming the layer. A layer past the adapter's limits is reported and
//! skipped.

use super::write_json;
use anyhow::{Context, Result, bail};
use microunify::bench::{AdapterJson, FileCase, FileOutcome, file_case};
use microunify::cpu::gemm::GEMM_REL;
use microunify::format::CompressedFile;
use microunify::gpu::Gpu;
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct FileArgs {
    /// Compressed file (format v2, as `microunify project` writes).
    file: PathBuf,
    /// Batch sizes N (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    n: Vec<usize>,
    /// Write the results as JSON here too (written atomically).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Timed runs per product (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

/// A layer and batch size the adapter cannot run.
#[derive(Serialize)]
struct Skipped {
    layer: String,
    m: usize,
    k: usize,
    n: usize,
    reason: String,
}

/// The whole file at one batch size: sums over the layers measured.
#[derive(Serialize)]
struct Total {
    n: usize,
    layers: usize,
    dense_ms: f64,
    micro_ms: f64,
    speedup: f64,
    /// The same sums in process CPU time (on a CPU adapter the kernels' own work, which
    /// other processes sharing the cores do not inflate); `None` where it is not known.
    dense_cpu_ms: Option<f64>,
    micro_cpu_ms: Option<f64>,
    cpu_speedup: Option<f64>,
    bytes_dense: u64,
    bytes_micro: u64,
    gflops_dense: f64,
    gflops_micro: f64,
}

#[derive(Serialize)]
struct Report {
    adapter: AdapterJson,
    file: String,
    cases: Vec<FileCase>,
    skipped: Vec<Skipped>,
    totals: Vec<Total>,
}

fn total(n: usize, cases: &[FileCase]) -> Total {
    let of_n = || cases.iter().filter(|c| c.n == n);
    let dense_ms: f64 = of_n().map(|c| c.dense_ms).sum();
    let micro_ms: f64 = of_n().map(|c| c.micro_ms).sum();
    let flops: f64 = of_n().map(|c| 2.0 * (c.m * c.k * c.n) as f64).sum();
    let cpu = |f: fn(&FileCase) -> Option<f64>| of_n().map(f).sum::<Option<f64>>();
    let (dense_cpu_ms, micro_cpu_ms) = (cpu(|c| c.dense_cpu_ms), cpu(|c| c.micro_cpu_ms));
    Total {
        n,
        layers: of_n().count(),
        dense_ms,
        micro_ms,
        speedup: dense_ms / micro_ms,
        dense_cpu_ms,
        micro_cpu_ms,
        cpu_speedup: dense_cpu_ms.zip(micro_cpu_ms).map(|(d, m)| d / m),
        bytes_dense: of_n().map(|c| c.bytes_dense).sum(),
        bytes_micro: of_n().map(|c| c.bytes_micro).sum(),
        gflops_dense: flops / (dense_ms * 1e6),
        gflops_micro: flops / (micro_ms * 1e6),
    }
}

const MB: f64 = 1e6;

pub fn run(gpu: &Gpu, args: &FileArgs) -> Result<()> {
    let path = args.file.display();
    if let Some(&n) = args.n.iter().find(|&&n| n == 0) {
        bail!("--n {n}: every batch size must be at least 1");
    }
    let file = CompressedFile::read(&args.file).with_context(|| format!("reading {path}"))?;
    if file.layers.is_empty() {
        bail!("{path} has no compressed layers (nothing to measure)");
    }
    microunify::outln!("adapter: {}", gpu.info.name);
    microunify::outln!("file: {path} ({} compressed layers)", file.layers.len());
    let w = file
        .layers
        .iter()
        .map(|l| l.name.len())
        .max()
        .unwrap_or(0)
        .max(5);
    microunify::outln!(
        "{:<w$} {:>5} {:>5} {:>4} {:>6} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6}",
        "layer",
        "M",
        "K",
        "N",
        "block",
        "dense ms",
        "micro ms",
        "speedup",
        "GFLOP/s",
        "µ GFLOP",
        "dense MB",
        "micro MB",
        "ratio"
    );
    let (mut cases, mut skipped) = (Vec::new(), Vec::new());
    for layer in &file.layers {
        let cm = &layer.matrix;
        let (m, k) = (cm.view().rows, cm.view().cols);
        for &n in &args.n {
            match file_case(gpu, &layer.name, cm, n, args.runs)
                .with_context(|| format!("layer {} ({m}x{k}) at N = {n}", layer.name))?
            {
                FileOutcome::Measured(c) => {
                    microunify::outln!(
                        "{:<w$} {:>5} {:>5} {:>4} {:>6} {:>9.3} {:>9.3} {:>7.2}x {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>5.1}x",
                        c.layer,
                        c.m,
                        c.k,
                        c.n,
                        cm.block().to_string(),
                        c.dense_ms,
                        c.micro_ms,
                        c.speedup,
                        c.gflops_dense,
                        c.gflops_micro,
                        c.bytes_dense as f64 / MB,
                        c.bytes_micro as f64 / MB,
                        c.compression_ratio
                    );
                    cases.push(*c);
                }
                FileOutcome::TooLarge(reason) => {
                    microunify::outln!("{:<w$} {m:>5} {k:>5} {n:>4} skipped: {reason}", layer.name);
                    skipped.push(Skipped {
                        layer: layer.name.clone(),
                        m,
                        k,
                        n,
                        reason,
                    });
                }
            }
        }
    }
    let totals: Vec<Total> = args.n.iter().map(|&n| total(n, &cases)).collect();
    for t in &totals {
        microunify::outln!(
            "total N = {:>4}: {} layers, dense {:.3} ms, micro {:.3} ms, {:.2}x (process CPU time: {}; {:.2} against {:.2} GFLOP/s; {:.1} MB against {:.1} MB moved)",
            t.n,
            t.layers,
            t.dense_ms,
            t.micro_ms,
            t.speedup,
            t.cpu_speedup.map_or("-".into(), |s| format!("{s:.2}x")),
            t.gflops_micro,
            t.gflops_dense,
            t.bytes_micro as f64 / MB,
            t.bytes_dense as f64 / MB
        );
    }
    let worst = cases
        .iter()
        .map(|c| c.dense_err.max(c.micro_err))
        .fold(0.0, f64::max);
    microunify::outln!(
        "{} products checked against the CPU reference (up to {} rows each): largest error {worst:.1e} of an output's Σ|w·x| (bound {GEMM_REL:.0e}); {} skipped",
        cases.len(),
        microunify::bench::FILE_CHECK_ROWS,
        skipped.len()
    );
    if let Some(out) = &args.json {
        let report = Report {
            adapter: AdapterJson::of(gpu),
            file: path.to_string(),
            cases,
            skipped,
            totals,
        };
        write_json(out, &report)?;
    }
    Ok(())
}
