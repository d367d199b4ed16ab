//! Measurements shared by `microunify bench` and the criterion benches: medians of
//! wall-clock runs that wait for the GPU, and throughput against a copy on the same adapter.

use crate::block::{BlockShape, LayerSpec, Ratios, SelectionMode, storage_bits};
use crate::compressed::CompressedMatrix;
use crate::cpu::gemm::Epilogue;
use crate::cpu::projection as cpu;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::gpu::copy::VecCopy;
use crate::gpu::gemm::{Gemm, Path};
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
}

/// Measures one network: GPU median time, throughput against `copy_gbps`, and optionally
/// the CPU reference's time on the same input.
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
    let gpu_ms = median_ms(2, runs, || work.net.run(gpu))?;
    let states = work.net.states(gpu)?;
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
/// same projected weights, same X, same adapter. On `n ≤ 8` both use their small-batch path.
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
    /// `2·m·k·n / dense_ms`, in GFLOP/s.
    pub gflops_dense: f64,
    /// Bytes the micro kernel must move (compressed weights, X, Y) per second, in GB/s.
    pub gbps_micro: f64,
    /// Storage compression ratio of the weights (METHOD.md §1).
    pub compression_ratio: f64,
    /// Products recorded per submission (time per product = submission time / reps), so
    /// the ~0.1 ms round trip of a submission does not swamp sub-millisecond kernels.
    pub reps: usize,
}

/// Median ms per product of `g`, `reps` products per submission.
pub fn gemm_ms(gpu: &Gpu, g: &Gemm, runs: usize, reps: usize) -> Result<f64> {
    Ok(median_ms(1, runs, || g.run_times(gpu, reps))? / reps as f64)
}

/// Products per submission so that one submission takes about `target_ms`.
pub fn gemm_reps(gpu: &Gpu, g: &Gemm, target_ms: f64) -> Result<usize> {
    let one = median_ms(1, 1, || g.run(gpu))?;
    Ok(((target_ms / one).ceil() as usize).clamp(1, 64))
}

/// Measures the dense and micro kernels on `cm` (the dense one on `cm.to_dense()`).
pub fn gemm_case(
    gpu: &Gpu,
    cm: &CompressedMatrix,
    n: usize,
    ratios: (f64, f64),
    runs: usize,
) -> Result<GemmCase> {
    let (m, k) = (cm.view.rows, cm.view.cols);
    let epi = Epilogue::default();
    let dense = Gemm::dense(gpu, m, k, &cm.to_dense(), n, &epi, Path::Auto)?;
    let micro = Gemm::micro(gpu, cm, n, &epi, Path::Auto)?;
    let x = random_weights(99, k * n);
    dense.write_x(gpu, &x)?;
    micro.write_x(gpu, &x)?;
    let reps = gemm_reps(gpu, &dense, 20.0)?;
    let dense_ms = gemm_ms(gpu, &dense, runs, reps)?;
    let micro_ms = gemm_ms(gpu, &micro, runs, reps)?;
    Ok(GemmCase {
        m,
        k,
        n,
        block: [cm.block.rows, cm.block.cols],
        prune: ratios.0,
        unify: ratios.1,
        dense_ms,
        micro_ms,
        speedup: dense_ms / micro_ms,
        gflops_dense: dense.flops() as f64 / (dense_ms * 1e6),
        gbps_micro: micro.bytes_moved() as f64 / (micro_ms * 1e6),
        compression_ratio: cm.compression_ratio(),
        reps,
    })
}
