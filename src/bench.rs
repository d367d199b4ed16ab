//! Measurements shared by `microunify bench` and the criterion benches: medians of
//! wall-clock runs that wait for the GPU, and throughput against a copy on the same adapter.

use crate::block::{BlockShape, BlockState, LayerSpec, Ratios, SelectionMode, storage_bits};
use crate::compressed::CompressedMatrix;
use crate::cpu::agreement::{self, Verdict};
use crate::cpu::gemm::{self as cpu_gemm, Epilogue};
use crate::cpu::projection as cpu;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::gpu::autotune;
use crate::gpu::buffers::POISON;
use crate::gpu::copy::VecCopy;
use crate::gpu::gemm::{Gemm, Path, candidates};
use crate::gpu::projection::{NetworkProjection, Tensor};
use crate::nets::NetShapes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::time::Instant;

/// The adapter a measurement ran on.
#[derive(Clone, Debug, Serialize)]
pub struct AdapterJson {
    pub name: String,
    pub backend: String,
    pub driver: String,
}

impl AdapterJson {
    pub fn of(gpu: &Gpu) -> Self {
        Self {
            name: gpu.info.name.clone(),
            backend: format!("{:?}", gpu.info.backend),
            driver: format!("{} {}", gpu.info.driver, gpu.info.driver_info)
                .trim()
                .to_string(),
        }
    }
}

/// Median of `runs` timings of `f` in milliseconds, after `warmup` untimed calls.
pub fn median_ms(warmup: usize, runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        f()?;
        t.push(start.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// CPU time this process has used so far (all threads), in milliseconds; `None` where the
/// platform does not say. On a CPU adapter (lavapipe) the kernels run on this process's
/// threads, so this measures their work whatever else competes for the cores.
pub fn process_cpu_ms() -> Option<f64> {
    #[cfg(unix)]
    {
        let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr()) } != 0 {
            return None;
        }
        // SAFETY: initialised by the successful call above.
        let u = unsafe { u.assume_init() };
        let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
        Some(ms(u.ru_utime) + ms(u.ru_stime))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Medians of `runs` calls of `f` after `warmup` untimed ones: wall-clock milliseconds and
/// process CPU milliseconds ([`process_cpu_ms`]) per call.
pub fn median_times(
    warmup: usize,
    runs: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(f64, Option<f64>)> {
    for _ in 0..warmup {
        f()?;
    }
    let (mut wall, mut cpu) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs.max(1) {
        let (start, c0) = (Instant::now(), process_cpu_ms());
        f()?;
        wall.push(start.elapsed().as_secs_f64() * 1e3);
        if let (Some(a), Some(b)) = (c0, process_cpu_ms()) {
            cpu.push(b - a);
        }
    }
    let median = |mut t: Vec<f64>| {
        t.sort_by(f64::total_cmp);
        t.get(t.len() / 2).copied()
    };
    Ok((median(wall).unwrap_or(0.0), median(cpu)))
}

/// Bandwidth of the vec4 copy kernel in GB/s (bytes read + written).
pub fn copy_gbps(gpu: &Gpu, bytes: u64, runs: usize) -> Result<f64> {
    let copy = VecCopy::new(gpu, bytes)?;
    let ms = median_ms(2, runs, || copy.run(gpu))?;
    Ok(copy.bytes_moved() as f64 / (ms * 1e6))
}

/// Reproducible weights in [-1, 1) for benchmarks.
pub fn random_weights(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// One projection case of `microunify bench projection`.
#[derive(Clone, Debug, Serialize)]
pub struct ProjectionCase {
    pub name: String,
    pub params: usize,
    pub layers: usize,
    pub gpu_ms: f64,
    pub gbps: f64,
    pub ratio_to_copy: f64,
    pub cpu_ms: Option<f64>,
    /// Median process CPU time per projection (all threads; [`process_cpu_ms`]): on a CPU
    /// adapter the kernels' own work, robust to other processes sharing the machine.
    pub process_cpu_ms: Option<f64>,
    pub chunks: usize,
    pub compression_ratio: f64,
}

/// A network's weights resident on the GPU with random W and U, ready to project.
pub struct ProjectionWorkload {
    pub net: NetworkProjection,
    pub w: Vec<Vec<f32>>,
    pub u: Vec<Vec<f32>>,
}

impl ProjectionWorkload {
    /// The same ratios for every layer.
    pub fn new(gpu: &Gpu, shapes: &NetShapes, block: BlockShape, ratios: Ratios) -> Result<Self> {
        let mode = SelectionMode::PerLayer(vec![ratios; shapes.layers.len()]);
        Self::with_mode(gpu, shapes, block, mode)
    }

    /// Any selection mode.
    pub fn with_mode(
        gpu: &Gpu,
        shapes: &NetShapes,
        block: BlockShape,
        mode: SelectionMode,
    ) -> Result<Self> {
        let layers = shapes.specs(block)?;
        let net = NetworkProjection::new(gpu, layers, mode)?;
        let mut w = Vec::new();
        let mut u = Vec::new();
        for (l, spec) in net.layout.layers.iter().enumerate() {
            let wl = random_weights(2 * l as u64, spec.view.len());
            let ul: Vec<f32> = random_weights(2 * l as u64 + 1, spec.view.len())
                .iter()
                .map(|x| x * 0.01)
                .collect();
            net.write(gpu, Tensor::W, l, &wl)?;
            net.write(gpu, Tensor::U, l, &ul)?;
            w.push(wl);
            u.push(ul);
        }
        Ok(Self { net, w, u })
    }

    /// The projection's input `V = W + U` per layer (the same f32 additions the GPU does).
    pub fn input(&self) -> Vec<Vec<f32>> {
        self.w
            .iter()
            .zip(&self.u)
            .map(|(w, u)| w.iter().zip(u).map(|(a, b)| a + b).collect())
            .collect()
    }

    /// The verdict of the GPU's block states after the first run (later runs project the
    /// updated `U`) against the CPU reference.
    pub fn verdict(&self, states: &[Vec<BlockState>]) -> Result<Verdict> {
        let v = self.input();
        let refs: Vec<&[f32]> = v.iter().map(Vec::as_slice).collect();
        agreement::selection(&self.net.layout.layers, &self.net.mode, &refs, states)
    }

    /// [`Error::Mismatch`] unless the states agree with the reference up to near-ties.
    pub fn check(&self, states: &[Vec<BlockState>]) -> Result<Verdict> {
        let verdict = self.verdict(states)?;
        if !verdict.agrees() {
            return Err(Error::Mismatch {
                what: "the projection's block states".into(),
                detail: verdict.failures(5),
            });
        }
        Ok(verdict)
    }
}

/// Measures one network: GPU median time, throughput against `copy_gbps`, and optionally
/// the CPU reference's time on the same input. The first run's block states are checked
/// against the reference first ([`Error::Mismatch`] if they differ beyond near-ties).
pub fn projection_case(
    gpu: &Gpu,
    shapes: &NetShapes,
    block: BlockShape,
    ratios: Ratios,
    runs: usize,
    copy_gbps: f64,
    with_cpu: bool,
) -> Result<ProjectionCase> {
    let work = ProjectionWorkload::new(gpu, shapes, block, ratios)?;
    // Checked on the first run: every run updates U, so later runs project other inputs.
    work.net.run(gpu)?;
    let states = work.net.states(gpu)?;
    work.check(&states)?;
    let (gpu_ms, process_cpu_ms) = median_times(1, runs, || work.net.run(gpu))?;
    let bits: u64 = work
        .net
        .layout
        .layers
        .iter()
        .zip(&states)
        .map(|(l, s)| storage_bits(&l.grid(), s))
        .sum();
    let cpu_ms = if with_cpu {
        let v = work.input();
        let refs: Vec<&[f32]> = v.iter().map(Vec::as_slice).collect();
        let start = Instant::now();
        cpu::project(&work.net.layout.layers, &refs, &work.net.mode)?;
        Some(start.elapsed().as_secs_f64() * 1e3)
    } else {
        None
    };
    let gbps = work.net.bytes_moved() as f64 / (gpu_ms * 1e6);
    Ok(ProjectionCase {
        name: shapes.name.to_string(),
        params: shapes.params(),
        layers: shapes.layers.len(),
        gpu_ms,
        gbps,
        ratio_to_copy: gbps / copy_gbps,
        cpu_ms,
        process_cpu_ms,
        chunks: work.net.layout.chunks.len(),
        compression_ratio: 32.0 * work.net.layout.num_weights() as f64 / bits as f64,
    })
}

/// A random `m×k` matrix projected with `(prune, unify)` (CPU reference projection) and
/// put in compressed form: the weights the GEMM benchmarks and tests run on.
pub fn random_compressed(
    seed: u64,
    m: usize,
    k: usize,
    block: BlockShape,
    prune: f64,
    unify: f64,
) -> Result<CompressedMatrix> {
    let spec = LayerSpec::new("gemm", &[m, k], block)?;
    let ratios = Ratios::new(prune, unify, "gemm")?;
    let w = random_weights(seed, m * k);
    let p = cpu::project(
        std::slice::from_ref(&spec),
        &[&w],
        &SelectionMode::PerLayer(vec![ratios]),
    )?
    .swap_remove(0);
    CompressedMatrix::from_dense(spec.view, block, &p.z, &p.states)
}

/// One case of `microunify bench gemm`: the dense and the micro-structured kernel on the
/// same projected weights, same X, same adapter, each through `Path::Auto` (the autotuner's
/// pick, or with `MICROUNIFY_AUTOTUNE=off` the small-batch path on `n ≤ 8`).
#[derive(Clone, Debug, Serialize)]
pub struct GemmCase {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub block: [usize; 2],
    pub prune: f64,
    pub unify: f64,
    /// Median milliseconds per product of the dense kernel.
    pub dense_ms: f64,
    /// Median milliseconds per product of the micro-structured kernel.
    pub micro_ms: f64,
    /// `dense_ms / micro_ms`.
    pub speedup: f64,
    /// Median process CPU milliseconds per product of the dense kernel (see
    /// [`gemm_times`]; `None` where the platform does not say).
    pub dense_cpu_ms: Option<f64>,
    /// The same for the micro-structured kernel.
    pub micro_cpu_ms: Option<f64>,
    /// `dense_cpu_ms / micro_cpu_ms`: on a CPU adapter, the speedup in work done.
    pub cpu_speedup: Option<f64>,
    /// `2·m·k·n / dense_ms`, in GFLOP/s.
    pub gflops_dense: f64,
    /// Bytes the micro kernel must move (compressed weights, X, Y) per second, in GB/s.
    pub gbps_micro: f64,
    /// Storage compression ratio of the weights (docs/METHOD.md §1).
    pub compression_ratio: f64,
    /// Products recorded per submission (time per product = submission time / reps), so
    /// the ~0.1 ms round trip of a submission does not swamp sub-millisecond kernels.
    pub reps: usize,
    /// Largest error of the dense kernel's Y against the CPU reference, relative to each
    /// output's `Σ|w·x|` (checked below `cpu::gemm::GEMM_REL`).
    pub dense_err: f64,
    /// The same for the micro-structured kernel.
    pub micro_err: f64,
    /// The kernel variant that ran each product ([`Path::name`]): the autotuner's winner
    /// for this adapter and shape class, or the static choice with `MICROUNIFY_AUTOTUNE=off`.
    pub dense_kernel: String,
    pub micro_kernel: String,
    /// With `bench gemm --variants`: milliseconds per product of every candidate kernel
    /// (`gemm::candidates`), as the autotuner times them; empty otherwise.
    pub dense_variants: Vec<(String, f64)>,
    pub micro_variants: Vec<(String, f64)>,
}

/// Median ms per product of `g`, `reps` products per submission.
pub fn gemm_ms(gpu: &Gpu, g: &Gemm, runs: usize, reps: usize) -> Result<f64> {
    Ok(gemm_times(gpu, g, runs, reps)?.0)
}

/// Medians per product of `g` (`reps` products per submission): wall-clock ms and process
/// CPU ms ([`process_cpu_ms`]; on a CPU adapter the kernels' own work, which other
/// processes sharing the cores do not inflate).
pub fn gemm_times(gpu: &Gpu, g: &Gemm, runs: usize, reps: usize) -> Result<(f64, Option<f64>)> {
    let (wall, cpu) = median_times(1, runs, || g.run_times(gpu, reps))?;
    Ok((wall / reps as f64, cpu.map(|c| c / reps as f64)))
}

/// Products per submission so that one submission takes about `target_ms`.
pub fn gemm_reps(gpu: &Gpu, g: &Gemm, target_ms: f64) -> Result<usize> {
    let one = median_ms(1, 1, || g.run(gpu))?;
    Ok(((target_ms / one).ceil() as usize).clamp(1, 64))
}

/// The reference product `W·X` and each output's error scale (`cpu::gemm::abs_sums`),
/// split by rows over the CPU's cores (the benchmark's largest products take the single
/// threaded reference seconds each).
pub fn gemm_reference(
    m: usize,
    k: usize,
    n: usize,
    w: &[f32],
    x: &[f32],
) -> Result<(Vec<f32>, Vec<f64>)> {
    let epi = Epilogue::default();
    cpu_gemm::check_shapes(m, k, n, Some(w.len()), Some(x.len()), &epi)?;
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let rows = m.div_ceil(threads).max(1);
    let parts: Vec<Result<(Vec<f32>, Vec<f64>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = w
            .chunks(rows * k)
            .map(|wc| {
                s.spawn(move || {
                    let r = wc.len() / k;
                    Ok((
                        cpu_gemm::gemm(r, k, n, wc, x, &epi)?,
                        cpu_gemm::abs_sums(r, k, n, wc, x, &epi)?,
                    ))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("reference GEMM thread"))
            .collect()
    });
    let (mut y, mut scale) = (Vec::with_capacity(m * n), Vec::with_capacity(m * n));
    for p in parts {
        let (py, ps) = p?;
        y.extend(py);
        scale.extend(ps);
    }
    Ok((y, scale))
}

/// Runs `g` once on the X it holds and compares Y with the reference: the largest error
/// relative to each output's scale, or [`Error::Mismatch`] naming `what` and the output.
pub fn check_gemm(gpu: &Gpu, g: &Gemm, what: &str, y: &[f32], scale: &[f64]) -> Result<f64> {
    g.fill_y(gpu, POISON);
    g.run(gpu)?;
    cpu_gemm::compare(&g.read_y(gpu)?, y, scale, g.n).map_err(|m| Error::Mismatch {
        what: what.to_string(),
        detail: m.to_string(),
    })
}

/// Measures the dense and micro kernels on `cm` (the dense one on `cm.to_dense()`), after
/// checking both once against the CPU reference on the same X.
pub fn gemm_case(
    gpu: &Gpu,
    cm: &CompressedMatrix,
    n: usize,
    ratios: (f64, f64),
    runs: usize,
    variants: bool,
) -> Result<GemmCase> {
    let (m, k) = (cm.view().rows, cm.view().cols);
    let epi = Epilogue::default();
    let w = cm.to_dense();
    let dense = Gemm::dense(gpu, m, k, &w, n, &epi, Path::Auto)?;
    let micro = Gemm::micro(gpu, cm, n, &epi, Path::Auto)?;
    let x = random_weights(99, k * n);
    dense.write_x(gpu, &x)?;
    micro.write_x(gpu, &x)?;
    let (y, scale) = gemm_reference(m, k, n, &w, &x)?;
    let dense_err = check_gemm(gpu, &dense, "dense GEMM", &y, &scale)?;
    let micro_err = check_gemm(gpu, &micro, "micro-structured GEMM", &y, &scale)?;
    let reps = gemm_reps(gpu, &dense, 20.0)?;
    let (dense_ms, dense_cpu_ms) = gemm_times(gpu, &dense, runs, reps)?;
    let (micro_ms, micro_cpu_ms) = gemm_times(gpu, &micro, runs, reps)?;
    let named = |times: Vec<(Path, f64)>| times.into_iter().map(|(p, t)| (p.name(), t)).collect();
    let (dense_variants, micro_variants) = if variants {
        let d = autotune::tune(gpu, &candidates(n, None), |p| {
            Gemm::dense(gpu, m, k, &w, n, &epi, p)
        })?;
        let u = autotune::tune(gpu, &candidates(n, Some(cm.block().cols)), |p| {
            Gemm::micro(gpu, cm, n, &epi, p)
        })?;
        (named(d.1), named(u.1))
    } else {
        (Vec::new(), Vec::new())
    };
    Ok(GemmCase {
        m,
        k,
        n,
        block: [cm.block().rows, cm.block().cols],
        prune: ratios.0,
        unify: ratios.1,
        dense_ms,
        micro_ms,
        speedup: dense_ms / micro_ms,
        dense_cpu_ms,
        micro_cpu_ms,
        cpu_speedup: dense_cpu_ms.zip(micro_cpu_ms).map(|(d, m)| d / m),
        gflops_dense: dense.flops() as f64 / (dense_ms * 1e6),
        gbps_micro: micro.bytes_moved() as f64 / (micro_ms * 1e6),
        compression_ratio: cm.compression_ratio(),
        reps,
        dense_err,
        micro_err,
        dense_kernel: dense.path.name(),
        micro_kernel: micro.path.name(),
        dense_variants,
        micro_variants,
    })
}

/// Most rows of Y that `bench file` compares with the CPU reference per product: a layer's
/// reference costs `2·rows·k·n` f64 operations, so a file of large layers is checked on a
/// sample of each (every row of a small one).
pub const FILE_CHECK_ROWS: usize = 64;

/// `count` row indices of `0..m` spread evenly, the first and the last included (all of
/// them when `m ≤ count`).
pub fn sample_rows(m: usize, count: usize) -> Vec<usize> {
    match count {
        _ if m <= count => (0..m).collect(),
        0 | 1 => (0..count).collect(),
        _ => (0..count).map(|i| i * (m - 1) / (count - 1)).collect(),
    }
}

/// Runs `g` once on `x` (which it holds) and compares rows `rows` of Y with the reference
/// for those rows of `w` (dense `m×k`): the largest error relative to each output's scale,
/// or [`Error::Mismatch`] naming `what` and the output by its row in the whole Y.
pub fn check_gemm_rows(
    gpu: &Gpu,
    g: &Gemm,
    what: &str,
    w: &[f32],
    x: &[f32],
    rows: &[usize],
) -> Result<f64> {
    let (k, n) = (g.k, g.n);
    let w_rows: Vec<f32> = rows
        .iter()
        .flat_map(|&r| w[r * k..(r + 1) * k].iter().copied())
        .collect();
    let (y, scale) = gemm_reference(rows.len(), k, n, &w_rows, x)?;
    g.fill_y(gpu, POISON);
    g.run(gpu)?;
    let all = g.read_y(gpu)?;
    let got: Vec<f32> = rows
        .iter()
        .flat_map(|&r| all[r * n..(r + 1) * n].iter().copied())
        .collect();
    cpu_gemm::compare(&got, &y, &scale, n).map_err(|mut m| {
        m.row = rows[m.row.min(rows.len() - 1)];
        Error::Mismatch {
            what: what.to_string(),
            detail: m.to_string(),
        }
    })
}

/// One layer of a compressed file at one batch size, in `microunify bench file`: its micro
/// GEMM against the dense GEMM of the same weights at its GEMM view `m×k`.
#[derive(Clone, Debug, Serialize)]
pub struct FileCase {
    pub layer: String,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub block: [usize; 2],
    /// Block counts `[dense, unified, pruned]`.
    pub counts: [usize; 3],
    /// Median milliseconds per product of the dense kernel.
    pub dense_ms: f64,
    /// Median milliseconds per product of the micro-structured kernel.
    pub micro_ms: f64,
    /// `dense_ms / micro_ms`.
    pub speedup: f64,
    /// Median process CPU milliseconds per product of each kernel ([`gemm_times`]).
    pub dense_cpu_ms: Option<f64>,
    pub micro_cpu_ms: Option<f64>,
    /// `2·m·k·n / dense_ms`, in GFLOP/s.
    pub gflops_dense: f64,
    /// `2·m·k·n / micro_ms`: the dense product's operations per second of the micro
    /// kernel (the work it skips counts as done), in GFLOP/s.
    pub gflops_micro: f64,
    /// Bytes the dense kernel must move per product (padded W, X, Y).
    pub bytes_dense: u64,
    /// Bytes the micro kernel must move per product (compressed weights, X, Y).
    pub bytes_micro: u64,
    pub gbps_dense: f64,
    pub gbps_micro: f64,
    /// Storage compression ratio of the weights (docs/METHOD.md §1).
    pub compression_ratio: f64,
    /// Products recorded per submission (see [`GemmCase::reps`]).
    pub reps: usize,
    /// Rows of Y compared with the CPU reference ([`FILE_CHECK_ROWS`] at most).
    pub checked_rows: usize,
    /// Largest error of the dense kernel's checked outputs against the CPU reference,
    /// relative to each output's `Σ|w·x|` (checked below `cpu::gemm::GEMM_REL`).
    pub dense_err: f64,
    /// The same for the micro-structured kernel.
    pub micro_err: f64,
}

/// What `bench file` made of one layer at one batch size.
#[derive(Clone, Debug)]
pub enum FileOutcome {
    Measured(Box<FileCase>),
    /// The layer does not fit this adapter's limits (the reason says which).
    TooLarge(String),
}

/// Measures layer `name` (`cm`) at batch size `n`: both kernels are checked once on the
/// same X against the CPU reference on [`FILE_CHECK_ROWS`] rows, then timed. A product
/// past the adapter's limits is [`FileOutcome::TooLarge`]; any other failure an error.
pub fn file_case(
    gpu: &Gpu,
    name: &str,
    cm: &CompressedMatrix,
    n: usize,
    runs: usize,
) -> Result<FileOutcome> {
    let (m, k) = (cm.view().rows, cm.view().cols);
    let epi = Epilogue::default();
    let w = cm.to_dense();
    let built = Gemm::dense(gpu, m, k, &w, n, &epi, Path::Auto)
        .and_then(|d| Ok((d, Gemm::micro(gpu, cm, n, &epi, Path::Auto)?)));
    let (dense, micro) = match built {
        Ok(pair) => pair,
        Err(Error::TooLarge(why)) => return Ok(FileOutcome::TooLarge(why)),
        Err(e) => return Err(e),
    };
    let x = random_weights(99, k * n);
    dense.write_x(gpu, &x)?;
    micro.write_x(gpu, &x)?;
    let rows = sample_rows(m, FILE_CHECK_ROWS);
    let dense_err = check_gemm_rows(gpu, &dense, &format!("{name}: dense GEMM"), &w, &x, &rows)?;
    let micro_err = check_gemm_rows(
        gpu,
        &micro,
        &format!("{name}: micro-structured GEMM"),
        &w,
        &x,
        &rows,
    )?;
    let reps = gemm_reps(gpu, &dense, 20.0)?;
    let (dense_ms, dense_cpu_ms) = gemm_times(gpu, &dense, runs, reps)?;
    let (micro_ms, micro_cpu_ms) = gemm_times(gpu, &micro, runs, reps)?;
    let per_s = |v: u64, ms: f64| v as f64 / (ms * 1e6);
    Ok(FileOutcome::Measured(Box::new(FileCase {
        layer: name.to_string(),
        m,
        k,
        n,
        block: [cm.block().rows, cm.block().cols],
        counts: cm.counts(),
        dense_ms,
        micro_ms,
        speedup: dense_ms / micro_ms,
        dense_cpu_ms,
        micro_cpu_ms,
        gflops_dense: per_s(dense.flops(), dense_ms),
        gflops_micro: per_s(micro.flops(), micro_ms),
        bytes_dense: dense.bytes_moved(),
        bytes_micro: micro.bytes_moved(),
        gbps_dense: per_s(dense.bytes_moved(), dense_ms),
        gbps_micro: per_s(micro.bytes_moved(), micro_ms),
        compression_ratio: cm.compression_ratio(),
        reps,
        checked_rows: rows.len(),
        dense_err,
        micro_err,
    })))
}

#[cfg(test)]
mod tests {
    use super::sample_rows;

    #[test]
    fn sampled_rows_are_distinct_in_range_and_reach_both_ends() {
        assert_eq!(sample_rows(10, 64), (0..10).collect::<Vec<_>>());
        assert_eq!(sample_rows(5, 1), [0]);
        assert!(sample_rows(5, 0).is_empty());
        for (m, count) in [(3072, 64), (65, 64), (1 << 20, 64), (100, 2)] {
            let rows = sample_rows(m, count);
            assert_eq!(rows.len(), count, "m = {m}");
            assert!(rows.windows(2).all(|w| w[0] < w[1]), "m = {m}: {rows:?}");
            assert_eq!((rows[0], rows[count - 1]), (0, m - 1), "m = {m}");
        }
    }
}
