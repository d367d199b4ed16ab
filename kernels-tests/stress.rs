//! Stress: random projection and GEMM cases against the CPU reference, for a while.
//!
//! Run by `scripts/stress [MINUTES]`; ignored by the ordinary test run. Environment:
//! `MICROUNIFY_STRESS_MINUTES` (default 5), `MICROUNIFY_STRESS_SEED` (default: from the
//! clock; always printed), `MICROUNIFY_STRESS_CASE` (run only that case number of that seed:
//! the replay line printed with every mismatch). Prints `cases: N, mismatches: M` per kind
//! and fails if any case mismatched.

mod common;

use microunify::bench::random_compressed;
use microunify::block::{BlockShape, LayerSpec, MAX_BLOCK_SIDE, SelectionMode};
use microunify::cpu::agreement;
use microunify::cpu::gemm::{Epilogue, abs_sums, compare, gemm};
use microunify::gpu::buffers::POISON;
use microunify::gpu::gemm::{Gemm, Path, small_batch_takes};
use microunify::gpu::packing::BLOCK_PAD;
use microunify::gpu::projection::{NetworkProjection, Tensor};
use microunify::gpu::{Gpu, ProjectedLayer};
use microunify::layout::{NetworkLayout, PackLimits};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number"))
    })
}

/// The generator of case `case` of run `seed`: cases replay one by one.
fn case_rng(seed: u64, case: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed ^ case.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// Awkward sizes: 1, primes, powers of two and their neighbours, or anything up to `max`.
fn dim(rng: &mut SmallRng, max: usize) -> usize {
    const PICKS: [usize; 18] = [
        1, 2, 3, 5, 7, 11, 13, 17, 31, 32, 33, 61, 64, 97, 127, 128, 131, 257,
    ];
    let d = if rng.random_bool(0.6) {
        PICKS[rng.random_range(0..PICKS.len())]
    } else {
        rng.random_range(1..=max)
    };
    d.min(max)
}

fn block_shape(rng: &mut SmallRng) -> BlockShape {
    let side = |rng: &mut SmallRng| {
        if rng.random_bool(0.3) {
            [1, 4, 8, 16, MAX_BLOCK_SIDE][rng.random_range(0..5)]
        } else {
            rng.random_range(1..=MAX_BLOCK_SIDE)
        }
    };
    BlockShape::new(side(rng), side(rng)).unwrap()
}

/// Values of one layer: ordinary weights mostly; else one magnitude regime, or one per block
/// row (huge, tiny and subnormal blocks side by side).
fn layer_values(rng: &mut SmallRng, spec: &LayerSpec) -> Vec<f32> {
    let n = spec.view.len();
    match rng.random_range(0..5) {
        0 => {
            let r = common::REGIMES[rng.random_range(0..common::REGIMES.len())];
            (0..n).map(|_| common::regime_value(rng, r)).collect()
        }
        1 => {
            let rows = spec.view.rows.div_ceil(spec.block.rows);
            let regimes: Vec<_> = (0..rows)
                .map(|_| common::REGIMES[rng.random_range(0..common::REGIMES.len())])
                .collect();
            let per_row = spec.block.rows * spec.view.cols;
            (0..n)
                .map(|i| common::regime_value(rng, regimes[i / per_row]))
                .collect()
        }
        _ => common::weights(rng, n),
    }
}

struct ProjectionCase {
    layers: Vec<LayerSpec>,
    mode: SelectionMode,
    w: Vec<Vec<f32>>,
    u: Vec<Vec<f32>>,
    limits: Option<PackLimits>,
}

fn projection_case(rng: &mut SmallRng) -> ProjectionCase {
    let n = if rng.random_bool(0.1) {
        rng.random_range(1..=30)
    } else {
        rng.random_range(1..=6)
    };
    let layers: Vec<LayerSpec> = (0..n)
        .map(|i| {
            let shape = if rng.random_bool(0.3) {
                let k = [1, 3, 5][rng.random_range(0..3)];
                vec![dim(rng, 300), dim(rng, 64), k, k]
            } else {
                vec![dim(rng, 400), dim(rng, 400)]
            };
            LayerSpec::new(format!("layer{i}"), &shape, block_shape(rng)).unwrap()
        })
        .collect();
    let mode = common::selection_mode(rng, &layers, 0.25);
    let w = layers.iter().map(|l| layer_values(rng, l)).collect();
    let u = layers
        .iter()
        .map(|l| {
            if rng.random_bool(0.5) {
                vec![0.0; l.view.len()]
            } else {
                layer_values(rng, l)
            }
        })
        .collect();
    // Sometimes small bindings, so the network spans several chunks; doubled until the
    // layout takes them (it refuses a block row, or the keys, larger than one binding).
    let limits = rng.random_bool(0.15).then(|| {
        let mut l = PackLimits {
            max_binding_bytes: rng.random_range(16u64..256) << 10,
            offset_alignment: [32, 64, 256][rng.random_range(0..3)],
        };
        while NetworkLayout::new(layers.clone(), l, BLOCK_PAD).is_err() {
            l.max_binding_bytes *= 2;
        }
        l
    });
    ProjectionCase {
        layers,
        mode,
        w,
        u,
        limits,
    }
}

/// Runs a projection case; `Err` describes the mismatch.
fn run_projection(gpu: &Gpu, c: &ProjectionCase) -> Result<(), String> {
    let net = match c.limits {
        Some(l) => NetworkProjection::with_limits(gpu, c.layers.clone(), c.mode.clone(), l),
        None => NetworkProjection::new(gpu, c.layers.clone(), c.mode.clone()),
    }
    .map_err(|e| format!("allocating: {e}"))?;
    net.poison(gpu, POISON);
    for l in 0..c.layers.len() {
        net.write(gpu, Tensor::W, l, &c.w[l]).unwrap();
        net.write(gpu, Tensor::U, l, &c.u[l]).unwrap();
    }
    net.run(gpu).map_err(|e| format!("running: {e}"))?;
    let out: Vec<ProjectedLayer> = (0..c.layers.len())
        .map(|l| net.read_layer(gpu, l).unwrap())
        .collect();
    let v: Vec<Vec<f32>> =
        c.w.iter()
            .zip(&c.u)
            .map(|(w, u)| w.iter().zip(u).map(|(a, b)| a + b).collect())
            .collect();
    let refs: Vec<&[f32]> = v.iter().map(Vec::as_slice).collect();
    let verdict = agreement::projection(&c.layers, &c.mode, &refs, &out).unwrap();
    if verdict.agrees() {
        Ok(())
    } else {
        Err(verdict.failures(5))
    }
}

fn describe_projection(c: &ProjectionCase) -> String {
    let layers: Vec<String> = c
        .layers
        .iter()
        .map(|l| format!("{}x{}/{}", l.view.rows, l.view.cols, l.block))
        .collect();
    format!(
        "{} layers [{}], {}, binding limit {}",
        c.layers.len(),
        layers.join(" "),
        match &c.mode {
            SelectionMode::Global(r) => format!("global {}/{}", r.prune, r.unify),
            SelectionMode::PerLayer(_) => "per layer".into(),
        },
        c.limits
            .map_or("device".into(), |l| format!("{} B", l.max_binding_bytes))
    )
}

/// Runs one random GEMM case (dense or micro, any path that takes it); `Err` describes a
/// mismatch.
fn run_gemm(gpu: &Gpu, rng: &mut SmallRng) -> Result<(), String> {
    // Sometimes a long K, past one invocation's loop budget on CPU drivers (several
    // slices of the main loop), with few rows and columns to keep the reference quick.
    let long = rng.random_bool(0.05);
    let (m, k) = if long {
        (dim(rng, 40), rng.random_range(10_000..=120_000))
    } else {
        (dim(rng, 600), dim(rng, 600))
    };
    let n = if rng.random_bool(0.5) {
        rng.random_range(1..=8)
    } else if long {
        rng.random_range(9..=40)
    } else {
        rng.random_range(9..=300)
    };
    let micro = rng.random_bool(0.7);
    let block = block_shape(rng);
    let r = common::ratios(rng, "gemm");
    let cm = random_compressed(rng.random(), m, k, block, r.prune, r.unify).unwrap();
    let w = cm.to_dense();
    let bias: Option<Vec<f32>> = rng
        .random_bool(0.5)
        .then(|| (0..m).map(|_| rng.random_range(-1.0f32..1.0)).collect());
    let epi = Epilogue {
        bias: bias.as_deref(),
        relu: rng.random_bool(0.5),
    };
    let small_ok = small_batch_takes(n, micro.then_some(block.cols));
    let path = match rng.random_range(0..3) {
        0 => Path::Auto,
        1 if small_ok => Path::SmallBatch,
        _ => Path::Tiled,
    };
    let what = format!(
        "{} GEMM {m}x{k}x{n}, {path:?}, block {block}, prune {:.2}, unify {:.2}, bias {}, relu {}",
        if micro { "micro" } else { "dense" },
        r.prune,
        r.unify,
        epi.bias.is_some(),
        epi.relu
    );
    let g = if micro {
        Gemm::micro(gpu, &cm, n, &epi, path)
    } else {
        Gemm::dense(gpu, m, k, &w, n, &epi, path)
    }
    .map_err(|e| format!("{what}: {e}"))?;
    let what = format!("{what}, {} slices", g.slices());
    let x: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    g.write_x(gpu, &x).unwrap();
    g.fill_y(gpu, POISON);
    g.run(gpu).map_err(|e| format!("{what}: {e}"))?;
    let y = g.read_y(gpu).unwrap();
    let want = gemm(m, k, n, &w, &x, &epi).unwrap();
    let scale = abs_sums(m, k, n, &w, &x, &epi).unwrap();
    compare(&y, &want, &scale, n)
        .map(|_| ())
        .map_err(|e| format!("{what}: {e}"))
}

#[derive(Default)]
struct Tally {
    cases: u64,
    mismatches: u64,
}

#[test]
#[ignore = "minutes long: run by scripts/stress"]
fn stress() {
    let minutes = env_u64("MICROUNIFY_STRESS_MINUTES").unwrap_or(5);
    let seed = env_u64("MICROUNIFY_STRESS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let only = env_u64("MICROUNIFY_STRESS_CASE");
    eprintln!("stress: seed {seed}, {minutes} minutes");
    let deadline = Instant::now() + Duration::from_secs(60 * minutes);
    let (mut proj, mut gemm) = (Tally::default(), Tally::default());
    let mut case = only.unwrap_or(0);
    loop {
        if only.is_none() && Instant::now() >= deadline {
            break;
        }
        // Each case takes the device on its own, so the per-test watchdog bounds a case.
        let gpu = common::gpu().expect("the stress run needs an adapter");
        let mut rng = case_rng(seed, case);
        let replay = format!(
            "replay: MICROUNIFY_STRESS_SEED={seed} MICROUNIFY_STRESS_CASE={case} scripts/stress"
        );
        // Two projection cases to one GEMM case: a projection checks more per second.
        if case % 3 != 2 {
            let c = projection_case(&mut rng);
            proj.cases += 1;
            if let Err(e) = run_projection(&gpu, &c) {
                proj.mismatches += 1;
                eprintln!(
                    "MISMATCH projection case {case}: {}\n{e}\n{replay}",
                    describe_projection(&c)
                );
            }
        } else {
            gemm.cases += 1;
            if let Err(e) = run_gemm(&gpu, &mut rng) {
                gemm.mismatches += 1;
                eprintln!("MISMATCH GEMM case {case}: {e}\n{replay}");
            }
        }
        if only.is_some() {
            break;
        }
        case += 1;
    }
    println!(
        "projection cases: {}, mismatches: {}",
        proj.cases, proj.mismatches
    );
    println!(
        "GEMM cases: {}, mismatches: {}",
        gemm.cases, gemm.mismatches
    );
    println!("seed {seed}");
    assert_eq!(
        proj.mismatches + gemm.mismatches,
        0,
        "stress: mismatches (seed {seed})"
    );
}
