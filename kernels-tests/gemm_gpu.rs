//! The GEMM kernels (dense and micro-structured, tiled and small-batch) against the CPU
//! reference (src/cpu/gemm.rs) on fresh random inputs: ragged and prime shapes, N = 1,
//! every block shape, all-dense to all-pruned and all-unified, bias and ReLU, poisoned Y.
//! Outputs must lie within `cpu::gemm::GEMM_REL` of each output's Σ|w·x| (the largest K
//! here is 313).

mod common;

use microunify::Error;
use microunify::bench::random_compressed;
use microunify::block::BlockShape;
use microunify::compressed::CompressedMatrix;
use microunify::cpu::gemm::{Epilogue, abs_sums, compare as gemm_compare, gemm, gemm_compressed};
use microunify::gpu::Gpu;
use microunify::gpu::buffers::POISON;
use microunify::gpu::gemm::{Gemm, Path, candidates};
use microunify::gpu::kernels::gemm_dense_tiled::TILES;
use rand::Rng;
use rand::rngs::SmallRng;

const SHAPES: [(usize, usize); 6] = [(1, 8), (2, 8), (4, 4), (8, 8), (16, 16), (32, 32)];

fn random_x(rng: &mut SmallRng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn compare(what: &str, gpu_y: &[f32], cpu_y: &[f32], scale: &[f64], n: usize) {
    if let Err(m) = gemm_compare(gpu_y, cpu_y, scale, n) {
        panic!("{what}: {m}");
    }
}

/// Runs `gemm` twice on fresh X (Y poisoned before each) against the reference on `w`.
fn check_run(gpu: &Gpu, what: &str, g: &Gemm, w: &[f32], epi: &Epilogue, rng: &mut SmallRng) {
    let (m, k, n) = (g.m, g.k, g.n);
    for _ in 0..2 {
        let x = random_x(rng, k * n);
        g.write_x(gpu, &x).unwrap();
        g.fill_y(gpu, POISON);
        g.run(gpu).unwrap();
        let y = g.read_y(gpu).unwrap();
        let want = gemm(m, k, n, w, &x, epi).unwrap();
        let scale = abs_sums(m, k, n, w, &x, epi).unwrap();
        compare(what, &y, &want, &scale, n);
    }
}

fn random_epilogue(rng: &mut SmallRng, m: usize) -> (Option<Vec<f32>>, bool) {
    let bias = rng.random_bool(0.5).then(|| random_x(rng, m));
    (bias, rng.random_bool(0.5))
}

/// Micro GEMM on `cm` through every path that takes it, checked against the dense reference
/// on `to_dense()` (and the compressed reference against it, on the CPU).
fn check_micro(gpu: &Gpu, what: &str, cm: &CompressedMatrix, n: usize, rng: &mut SmallRng) {
    let (m, k) = (cm.view().rows, cm.view().cols);
    let dense = cm.to_dense();
    let (bias, relu) = random_epilogue(rng, m);
    let epi = Epilogue {
        bias: bias.as_deref(),
        relu,
    };
    let x = random_x(rng, k * n);
    let a = gemm(m, k, n, &dense, &x, &epi).unwrap();
    let b = gemm_compressed(cm, &x, n, &epi).unwrap();
    let scale = abs_sums(m, k, n, &dense, &x, &epi).unwrap();
    compare(&format!("{what} cpu compressed"), &b, &a, &scale, n);
    for path in candidates(n, Some(cm.block().cols)) {
        let g = Gemm::micro(gpu, cm, n, &epi, path).unwrap();
        assert_eq!(g.path, path);
        let what = format!("{what} {path:?} bias={} relu={relu}", bias.is_some());
        check_run(gpu, &what, &g, &dense, &epi, rng);
    }
}

#[test]
fn micro_every_block_shape_ragged_shapes() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(31);
    let dims = [1usize, 7, 13, 31, 64, 97, 131];
    let ns = [1usize, 2, 3, 5, 8, 9, 16, 23, 40];
    for (i, &(br, bc)) in SHAPES.iter().enumerate() {
        let block = BlockShape::new(br, bc).unwrap();
        for j in 0..5 {
            let m = dims[rng.random_range(0..dims.len())];
            let k = dims[rng.random_range(0..dims.len())];
            let n = ns[rng.random_range(0..ns.len())];
            let prune = [0.0, 0.3, 0.5, 0.2, 0.6][j];
            let unify = [0.4, 0.3, 0.2, 0.7, 0.1][j];
            let cm = random_compressed(100 + i as u64 * 10 + j as u64, m, k, block, prune, unify)
                .unwrap();
            let what = format!("{br}x{bc} M={m} K={k} N={n} prune={prune} unify={unify}");
            check_micro(&gpu, &what, &cm, n, &mut rng);
        }
    }
}

#[test]
fn micro_ratio_extremes() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(32);
    let ratios = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (0.5, 0.5), (0.9, 0.05)];
    for &(br, bc) in &[(4usize, 4usize), (8, 8), (32, 32)] {
        let block = BlockShape::new(br, bc).unwrap();
        for (r, &(prune, unify)) in ratios.iter().enumerate() {
            let (m, k) = (61, 313);
            let n = [1, 8, 17][r % 3];
            let cm = random_compressed(200 + r as u64, m, k, block, prune, unify).unwrap();
            let what = format!("{br}x{bc} M={m} K={k} N={n} prune={prune} unify={unify}");
            check_micro(&gpu, &what, &cm, n, &mut rng);
        }
    }
}

#[test]
fn one_by_one_and_odd_block_shape() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(33);
    for (br, bc) in [(4, 4), (1, 8), (3, 5)] {
        for unify in [0.0, 1.0] {
            let block = BlockShape::new(br, bc).unwrap();
            let cm = random_compressed(7, 1, 1, block, 0.0, unify).unwrap();
            check_micro(&gpu, &format!("1x1 matrix, {br}x{bc}"), &cm, 1, &mut rng);
            let cm = random_compressed(8, 11, 29, block, 0.2, 0.4).unwrap();
            check_micro(&gpu, &format!("11x29, {br}x{bc}"), &cm, 3, &mut rng);
        }
    }
}

#[test]
fn dense_kernels_match_reference() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(34);
    for &(m, k, n) in &[
        (1, 1, 1),
        (7, 13, 1),
        (64, 64, 8),
        (97, 131, 5),
        (33, 250, 3),
        (131, 97, 29),
        (64, 128, 64),
        (5, 3, 130),
    ] {
        let w = random_x(&mut rng, m * k);
        let (bias, relu) = random_epilogue(&mut rng, m);
        let epi = Epilogue {
            bias: bias.as_deref(),
            relu,
        };
        for path in candidates(n, None) {
            let g = Gemm::dense(&gpu, m, k, &w, n, &epi, path).unwrap();
            assert_eq!(g.small, path == Path::SmallBatch);
            assert_eq!(g.path, path);
            let what = format!("dense {path:?} M={m} K={k} N={n} relu={relu}");
            check_run(&gpu, &what, &g, &w, &epi, &mut rng);
        }
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let Some(gpu) = common::gpu() else { return };
    let epi = Epilogue::default();
    let shape = |r: microunify::Result<Gemm>| match r {
        Err(Error::Shape { .. }) => {}
        Err(e) => panic!("expected a shape error, got {e}"),
        Ok(_) => panic!("expected a shape error, got a GEMM"),
    };
    shape(Gemm::dense(&gpu, 2, 3, &[0.0; 5], 1, &epi, Path::Auto));
    shape(Gemm::dense(&gpu, 2, 3, &[0.0; 6], 0, &epi, Path::Auto));
    shape(Gemm::dense(
        &gpu,
        2,
        3,
        &[0.0; 6],
        9,
        &epi,
        Path::SmallBatch,
    ));
    let bias = [1.0f32; 3];
    let with_bias = Epilogue {
        bias: Some(&bias),
        relu: false,
    };
    shape(Gemm::dense(
        &gpu,
        2,
        3,
        &[0.0; 6],
        4,
        &with_bias,
        Path::Auto,
    ));
    let cm = random_compressed(1, 10, 10, BlockShape::new(3, 5).unwrap(), 0.0, 0.5).unwrap();
    shape(Gemm::micro(&gpu, &cm, 2, &with_bias, Path::Auto));
    shape(Gemm::micro(&gpu, &cm, 2, &epi, Path::SmallBatch));
    // A malformed matrix never reaches a kernel: its one constructor refuses it.
    let parts = |row_ptr: Vec<u32>, entries: Vec<[u32; 2]>| {
        CompressedMatrix::new(
            cm.view(),
            cm.block(),
            cm.states().to_vec(),
            row_ptr,
            entries,
            cm.values().to_vec(),
            cm.magnitudes().to_vec(),
            cm.signs().to_vec(),
        )
    };
    let mut entries = cm.entries().to_vec();
    entries[0][0] = 99;
    assert!(parts(cm.row_ptr().to_vec(), entries).is_err());
    let mut row_ptr = cm.row_ptr().to_vec();
    row_ptr.pop();
    assert!(parts(row_ptr, cm.entries().to_vec()).is_err());
    let g = Gemm::micro(&gpu, &cm, 2, &epi, Path::Auto).unwrap();
    assert!(matches!(
        g.write_x(&gpu, &[0.0; 19]),
        Err(Error::Shape { .. })
    ));
    // X of 4 rows × 40M columns is far past any one storage binding.
    match Gemm::dense(&gpu, 1, 1, &[1.0], 40_000_000, &epi, Path::Auto) {
        Err(Error::TooLarge(msg)) => assert!(msg.contains("max_storage_buffer_binding_size")),
        Err(e) => panic!("expected TooLarge, got {e}"),
        Ok(_) => panic!("expected TooLarge, got a GEMM"),
    }
}

/// K far past what one invocation may loop over on CPU drivers (lavapipe ends every loop
/// of an invocation after 65,535 iterations in all): the main loop runs in several
/// dispatches, each adding to Y, the bias added once and ReLU applied to the finished sum.
/// Each of these was silently wrong in one dispatch (1e-3 to 5e-3 of Σ|w·x| off).
#[test]
fn long_k_runs_in_slices() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(35);
    // (block shape, or None for a dense W; M, K, N; path)
    type Case = (Option<(usize, usize)>, usize, usize, usize, Path);
    let workgroup = Path::Workgroup(TILES[0]);
    let cases: [Case; 11] = [
        (None, 8, 300_000, 16, workgroup),
        (Some((3, 5)), 9, 50_000, 16, workgroup),
        (Some((8, 8)), 8, 200_000, 16, Path::Workgroup(TILES[3])),
        (Some((32, 32)), 32, 8_000, 2, workgroup),
        (None, 8, 300_000, 16, Path::Tiled),
        (None, 8, 300_000, 1, Path::SmallBatch),
        (Some((3, 3)), 9, 50_000, 16, Path::Tiled),
        (Some((8, 8)), 8, 200_000, 16, Path::Tiled),
        (Some((32, 32)), 32, 4_000, 16, Path::Tiled),
        (Some((32, 32)), 32, 8_000, 2, Path::SmallBatch),
        (Some((1, 1)), 3, 100_000, 9, Path::Tiled),
    ];
    for (block, m, k, n, path) in cases {
        let (bias, _) = random_epilogue(&mut rng, m);
        let epi = Epilogue {
            bias: bias.as_deref(),
            relu: true,
        };
        let (g, w, what) = match block {
            None => {
                let w = random_x(&mut rng, m * k);
                let g = Gemm::dense(&gpu, m, k, &w, n, &epi, path).unwrap();
                (g, w, format!("dense {m}x{k}x{n} {path:?}"))
            }
            Some((br, bc)) => {
                let shape = BlockShape::new(br, bc).unwrap();
                let cm = random_compressed(300 + k as u64, m, k, shape, 0.1, 0.5).unwrap();
                let g = Gemm::micro(&gpu, &cm, n, &epi, path).unwrap();
                (
                    g,
                    cm.to_dense(),
                    format!("micro {br}x{bc} {m}x{k}x{n} {path:?}"),
                )
            }
        };
        assert!(g.slices() > 1, "{what}: {} slice", g.slices());
        eprintln!("{what}: {} slices", g.slices());
        check_run(&gpu, &what, &g, &w, &epi, &mut rng);
    }
}

/// The GPU-style kernels at their tile edges: M, K and N one short of, at and one past
/// the output and K tiles, primes, 1×1, N = 1; every tile configuration.
#[test]
fn workgroup_dense_tile_edges() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(36);
    let cases = [
        (1, 1, 1),
        (63, 15, 65),
        (64, 16, 64),
        (65, 17, 63),
        (127, 33, 1),
        (129, 47, 129),
        (131, 97, 127),
        (2, 131, 7),
    ];
    for t in TILES {
        for &(m, k, n) in &cases {
            let w = random_x(&mut rng, m * k);
            let (bias, relu) = random_epilogue(&mut rng, m);
            let epi = Epilogue {
                bias: bias.as_deref(),
                relu,
            };
            let path = Path::Workgroup(t);
            let g = Gemm::dense(&gpu, m, k, &w, n, &epi, path).unwrap();
            let what = format!("dense {} M={m} K={k} N={n} relu={relu}", path.name());
            check_run(&gpu, &what, &g, &w, &epi, &mut rng);
        }
    }
}

/// gemm_micro_tiled for every block side 1..=32 (as rows and as columns, paired with a
/// spread of the other side), ragged edges, N on both sides of the column tiles, all-dense
/// and all-unified blocks.
#[test]
fn workgroup_micro_every_block_side() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(37);
    let side = microunify::block::MAX_BLOCK_SIDE;
    // br ↦ 7·br mod 32 + 1 is a permutation: every side once as rows, once as columns.
    let shapes: Vec<(usize, usize)> = (1..=side).map(|br| (br, (br * 7) % side + 1)).collect();
    let ns = [1usize, 5, 17, 64, 65];
    for (i, &(br, bc)) in shapes.iter().enumerate() {
        let block = BlockShape::new(br, bc).unwrap();
        let m = 2 * br + 1 + i % 3;
        let k = 3 * bc - 1 + i % 5;
        let n = ns[i % ns.len()];
        let (prune, unify) = [(0.2, 0.4), (0.0, 0.0), (0.0, 1.0), (0.5, 0.3)][i % 4];
        let cm = random_compressed(400 + i as u64, m, k, block, prune, unify).unwrap();
        let dense = cm.to_dense();
        let (bias, relu) = random_epilogue(&mut rng, m);
        let epi = Epilogue {
            bias: bias.as_deref(),
            relu,
        };
        let tiled: Vec<Path> = candidates(n, Some(bc))
            .into_iter()
            .filter(|p| matches!(p, Path::Workgroup(_)))
            .collect();
        // Every register tile on every fourth shape, one in turn on the others.
        let picked = if i % 4 == 0 {
            tiled
        } else {
            vec![tiled[i % tiled.len()]]
        };
        for path in picked {
            let g = Gemm::micro(&gpu, &cm, n, &epi, path).unwrap();
            let what = format!(
                "{br}x{bc} {} M={m} K={k} N={n} prune={prune} unify={unify}",
                path.name()
            );
            check_run(&gpu, &what, &g, &dense, &epi, &mut rng);
        }
    }
}

/// A micro-structured W with every block dense runs the dense kernels on its tiles where
/// block columns are a multiple of 4 (else the micro kernels), on both paths: against the
/// reference at ragged shapes, thin and odd block shapes, N = 1..9 and 17, and with K in
/// slices; one pruned or unified block sends it back to the micro kernels.
#[test]
fn all_dense_micro_runs_the_dense_kernels_on_its_tiles() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(36);
    let shapes = [
        (1, 8),
        (2, 8),
        (4, 4),
        (8, 8),
        (3, 4),
        (4, 12),
        (5, 8),
        (32, 32),
        (4, 5),
        (1, 1),
    ];
    let ns = [1usize, 2, 3, 4, 5, 6, 7, 8, 9, 17];
    for (s, &(br, bc)) in shapes.iter().enumerate() {
        let block = BlockShape::new(br, bc).unwrap();
        for (d, &(m, k)) in [(37, 45), (64, 64), (1, 13), (13, 1)].iter().enumerate() {
            let n = ns[(s * 4 + d) % ns.len()];
            let cm =
                random_compressed(400 + s as u64 * 10 + d as u64, m, k, block, 0.0, 0.0).unwrap();
            let (bias, relu) = random_epilogue(&mut rng, m);
            let epi = Epilogue {
                bias: bias.as_deref(),
                relu,
            };
            let mut paths = vec![Path::Tiled, Path::Auto];
            if n <= 8 {
                paths.push(Path::SmallBatch);
            }
            for path in paths {
                let what = format!("all dense {br}x{bc} M={m} K={k} N={n} {path:?}");
                let g = Gemm::micro(&gpu, &cm, n, &epi, path).unwrap();
                assert!(g.as_dense, "{what}");
                check_run(&gpu, &what, &g, &cm.to_dense(), &epi, &mut rng);
            }
        }
    }
    let block = BlockShape::new(4, 4).unwrap();
    for (prune, unify) in [(0.02, 0.0), (0.0, 0.02)] {
        let cm = random_compressed(450, 64, 64, block, prune, unify).unwrap();
        for n in [1, 16] {
            let g = Gemm::micro(&gpu, &cm, n, &Epilogue::default(), Path::Auto).unwrap();
            assert!(!g.as_dense, "prune {prune} unify {unify} N={n}");
        }
    }
    for ((br, bc), n, path) in [((2, 8), 16, Path::Tiled), ((4, 4), 3, Path::SmallBatch)] {
        let (m, k) = (8, 120_000);
        let cm = random_compressed(460, m, k, BlockShape::new(br, bc).unwrap(), 0.0, 0.0).unwrap();
        let (bias, _) = random_epilogue(&mut rng, m);
        let epi = Epilogue {
            bias: bias.as_deref(),
            relu: true,
        };
        let g = Gemm::micro(&gpu, &cm, n, &epi, path).unwrap();
        let what = format!("all dense {br}x{bc} {m}x{k}x{n} {path:?}");
        assert!(
            g.as_dense && g.slices() > 1,
            "{what}: {} slices",
            g.slices()
        );
        check_run(&gpu, &what, &g, &cm.to_dense(), &epi, &mut rng);
    }
}

/// The small-batch micro kernel's written-out path for 4 rows per lane at N = 1 (block
/// rows of 4, 8, 12, 16 or 32 rows): every tile row of a lane's 4 against the reference,
/// with one sign word per tile (4×4, 4×8) or rows in several (8×8 up), ragged edges, all
/// dense or all unified entries, and K in slices.
#[test]
fn four_rows_per_lane_at_n_one() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(37);
    let shapes = [(4, 4), (4, 8), (8, 8), (12, 4), (16, 16), (32, 32)];
    let ratios = [(0.5, 0.4), (0.0, 1.0), (0.3, 0.0), (0.1, 0.2)];
    for (s, &(br, bc)) in shapes.iter().enumerate() {
        let block = BlockShape::new(br, bc).unwrap();
        for (r, &(prune, unify)) in ratios.iter().enumerate() {
            let (m, k) = [(37, 45), (64, 97), (13, 131), (4, 4)][r];
            let cm = random_compressed(500 + s as u64 * 10 + r as u64, m, k, block, prune, unify)
                .unwrap();
            let what = format!("{br}x{bc} M={m} K={k} N=1 prune={prune} unify={unify}");
            check_micro(&gpu, &what, &cm, 1, &mut rng);
        }
    }
    let cm = random_compressed(550, 8, 60_000, BlockShape::new(4, 4).unwrap(), 0.1, 0.5).unwrap();
    let epi = Epilogue {
        bias: Some(&random_x(&mut rng, 8)),
        relu: true,
    };
    let g = Gemm::micro(&gpu, &cm, 1, &epi, Path::SmallBatch).unwrap();
    assert!(g.slices() > 1, "4x4 8x60000x1: {} slice", g.slices());
    check_run(
        &gpu,
        "4x4 8x60000x1 in slices",
        &g,
        &cm.to_dense(),
        &epi,
        &mut rng,
    );
}
