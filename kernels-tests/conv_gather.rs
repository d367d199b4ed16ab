//! gemm_dense and gemm_micro reading a convolution's X in place (shaders/gemm_gather.wgsl),
//! with and without the fused 2×2 pooling, against the CPU twins in sequence: im2col, the
//! f64 GEMM, pool2d. Awkward geometries (1×1 kernels, prime channel counts, odd pooled
//! widths, rows of X past K inside a block, strided rows, batch 1), both row layouts,
//! several block shapes, Y poisoned, and the gaps between the input's channels NaN so that
//! a read outside the convolution's window shows.

mod common;

use microunify::bench::random_compressed;
use microunify::block::BlockShape;
use microunify::cpu;
use microunify::cpu::gemm::{Epilogue, abs_sums};
use microunify::gpu::buffers::{POISON, storage_init};
use microunify::gpu::conv_gather::ConvGather;
use microunify::gpu::gemm::Gemm;
use microunify::gpu::kernels::gemm_dense::Gather;
use microunify::gpu::kernels::im2col::Im2colParams;
use microunify::gpu::kernels::pool2d::Pool2dParams;
use rand::Rng;

/// (channels, height, width, batch, kh, kw, stride_y, mode)
type Case = (usize, usize, usize, usize, usize, usize, usize, Gather);

const CASES: [Case; 9] = [
    (1, 28, 28, 2, 5, 5, 1, Gather::MaxPool),
    (3, 12, 12, 1, 5, 5, 1, Gather::AvgPool),
    // Odd pooled width (the last pair's second window does not exist), stride 2 in y.
    (2, 9, 8, 3, 2, 3, 2, Gather::MaxPool),
    (5, 5, 4, 1, 1, 1, 1, Gather::Row),
    (7, 7, 12, 2, 3, 5, 2, Gather::Row),
    // K = 21: rows of X past K inside the last block column.
    (7, 6, 8, 2, 3, 1, 1, Gather::AvgPool),
    (20, 12, 12, 1, 5, 5, 1, Gather::MaxPool),
    (13, 3, 4, 5, 2, 1, 1, Gather::Row),
    (2, 3, 4, 1, 2, 3, 1, Gather::MaxPool),
];

const BLOCKS: [(usize, usize); 5] = [(4, 4), (2, 4), (3, 3), (1, 1), (5, 2)];

#[test]
fn a_gathered_conv_matches_im2col_gemm_and_pool() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(41);
    for (i, &(c, h, w, batch, kh, kw, sy, mode)) in CASES.iter().enumerate() {
        let (oh, ow) = ((h - kh) / sy + 1, w - kw + 1);
        let cols = batch * h * w;
        // Channels 4 values apart, the gap NaN.
        let in_stride = cols + 4;
        let mut input = vec![f32::NAN; c * in_stride];
        for ch in 0..c {
            for v in &mut input[ch * in_stride..ch * in_stride + cols] {
                *v = rng.random_range(-2.0f32..2.0);
            }
        }
        let buffer = storage_init(&gpu, "conv input", &input);
        let k = c * kh * kw;
        let m = rng.random_range(1..=9);
        let bias: Vec<f32> = (0..m).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        for (micro, position_major, relu) in [
            (false, false, false),
            (true, false, true),
            (true, true, false),
            (false, true, true),
        ] {
            let (br, bc) = BLOCKS[(i + usize::from(position_major)) % BLOCKS.len()];
            let block = BlockShape::new(br, bc).unwrap();
            let cm = random_compressed(i as u64, m, k, block, 0.3, 0.3).unwrap();
            let wv = if micro {
                cm.to_dense()
            } else {
                common::weights(&mut rng, m * k)
            };
            let epi = Epilogue {
                bias: Some(&bias),
                relu,
            };
            let conv = ConvGather {
                input: [c, h, w],
                in_stride,
                batch,
                kernel: [kh, kw],
                stride: [sy, 1],
                out: [oh, ow],
                position_major,
                mode,
            };
            let what = format!(
                "case {i} {conv:?}, {m} rows, {}, relu {relu}",
                if micro {
                    format!("micro {br}x{bc}")
                } else {
                    "dense".into()
                }
            );
            let gemm = if micro {
                Gemm::conv_micro(&gpu, &cm, &conv, &buffer, &epi)
            } else {
                Gemm::conv_dense(&gpu, m, &wv, &conv, &buffer, &epi)
            }
            .unwrap()
            .unwrap_or_else(|| panic!("{what}: the gather declined"));
            gemm.fill_y(&gpu, POISON);
            gemm.run(&gpu).unwrap();
            let got = gemm.read_y(&gpu).unwrap();

            assert_close(&what, &got, reference(&conv, &input, m, &wv, &epi));
        }
    }
}

/// Every block side the host samples gathered variants at (1, 2, 3, 4, 5, 8, 16, 32, each
/// as rows and as columns) on one max-pooled convolution of K = 6·3·3 = 54 rows, and the other two modes at
/// 3×5 (plain rows with a 3×5 kernel, so that the output is 4 wide).
#[test]
fn every_gathered_micro_variant_matches_the_reference() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(42);
    let (c, h, w, batch, m) = (6, 10, 8, 2, 37);
    let in_stride = batch * h * w;
    let input: Vec<f32> = (0..c * in_stride)
        .map(|_| rng.random_range(-2.0f32..2.0))
        .collect();
    let buffer = storage_init(&gpu, "conv input", &input);
    // Each side of the sample once as rows and once as columns, and the extremes (a
    // pipeline each: lavapipe compiles about one a second).
    let shapes = [
        (1, 32),
        (2, 16),
        (3, 5),
        (4, 4),
        (5, 3),
        (8, 8),
        (16, 2),
        (32, 1),
        (1, 1),
        (32, 32),
        (4, 8),
        (8, 4),
    ];
    let mut cases: Vec<(usize, usize, Gather)> = shapes
        .iter()
        .map(|&(br, bc)| (br, bc, Gather::MaxPool))
        .collect();
    cases.extend([(3, 5, Gather::Row), (3, 5, Gather::AvgPool)]);
    for (s, (br, bc, mode)) in cases.into_iter().enumerate() {
        let kw = if mode == Gather::Row { 5 } else { 3 };
        let conv = ConvGather {
            input: [c, h, w],
            in_stride,
            batch,
            kernel: [3, kw],
            stride: [1, 1],
            out: [h - 2, w - kw + 1],
            position_major: s % 3 == 0,
            mode,
        };
        let block = BlockShape::new(br, bc).unwrap();
        let cm = random_compressed(500 + s as u64, m, conv.rows(), block, 0.3, 0.4).unwrap();
        let bias: Vec<f32> = (0..m).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let epi = Epilogue {
            bias: Some(&bias),
            relu: s % 2 == 0,
        };
        let what = format!("{br}x{bc} {conv:?}");
        let g = Gemm::conv_micro(&gpu, &cm, &conv, &buffer, &epi)
            .unwrap()
            .unwrap_or_else(|| panic!("{what}: declined"));
        g.fill_y(&gpu, POISON);
        g.run(&gpu).unwrap();
        let got = g.read_y(&gpu).unwrap();
        assert_close(
            &what,
            &got,
            reference(&conv, &input, m, &cm.to_dense(), &epi),
        );
    }
}

#[test]
fn the_gather_declines_what_it_cannot_read_in_place() {
    let Some(gpu) = common::gpu() else { return };
    let buffer = storage_init(&gpu, "conv input", &[0.0f32; 4 * 64]);
    let base = ConvGather {
        input: [1, 8, 8],
        in_stride: 64,
        batch: 1,
        kernel: [3, 3],
        stride: [1, 1],
        out: [6, 6],
        position_major: false,
        mode: Gather::Row,
    };
    let w = vec![0.5f32; 9];
    let epi = Epilogue {
        bias: None,
        relu: false,
    };
    // Six positions per row are not whole vec4s; stride 2 along x; a width of 6.
    for conv in [
        base,
        ConvGather {
            stride: [1, 2],
            out: [6, 3],
            mode: Gather::MaxPool,
            ..base
        },
        ConvGather {
            input: [1, 8, 6],
            out: [6, 4],
            ..base
        },
    ] {
        let g = Gemm::conv_dense(&gpu, 1, &w, &conv, &buffer, &epi).unwrap();
        assert!(g.is_none(), "{conv:?}");
    }
    // An input buffer smaller than the activation it is said to hold is an error.
    let taken = ConvGather {
        out: [6, 4],
        kernel: [3, 5],
        ..base
    };
    assert!(taken.takes());
    let small = storage_init(&gpu, "conv input", &[0.0f32; 60]);
    match Gemm::conv_dense(&gpu, 1, &[0.5f32; 15], &taken, &small, &epi) {
        Err(e) => assert!(
            e.to_string()
                .contains("needs 64 values, its buffer holds 60"),
            "{e}"
        ),
        Ok(_) => panic!("a 60-value buffer taken for a 64-value input"),
    }
}

/// The GPU's outputs against the reference's `(values, scales)`: each within 1e-5 of its
/// output's Σ|w·x| (a NaN, an unwritten poisoned output, fails).
fn assert_close(what: &str, got: &[f32], (want, scale): (Vec<f32>, Vec<f64>)) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (j, ((g, w), s)) in got.iter().zip(&want).zip(&scale).enumerate() {
        let err = (f64::from(*g) - f64::from(*w)).abs();
        assert!(
            err <= 1e-5 * s.max(1e-30),
            "{what}: output {j}: GPU {g} ({:#x}), CPU {w}, scale {s}",
            g.to_bits()
        );
    }
}

/// The CPU twins in sequence: im2col, the f64 GEMM (and each output's Σ|w·x|, the scale of
/// its rounding), pool2d when the gather pools; Y as the gathered GEMM's `read_y` gives it.
fn reference(
    conv: &ConvGather,
    input: &[f32],
    m: usize,
    wv: &[f32],
    epi: &Epilogue,
) -> (Vec<f32>, Vec<f64>) {
    let [c, h, w] = conv.input;
    let [kh, kw] = conv.kernel;
    let [oh, ow] = conv.out;
    let (batch, k, mode) = (conv.batch, conv.rows(), conv.mode);
    let n = batch * oh * ow;
    let p = Im2colParams {
        channels: c as u32,
        height: h as u32,
        width: w as u32,
        batch: batch as u32,
        kh: kh as u32,
        kw: kw as u32,
        stride_y: conv.stride[0] as u32,
        stride_x: 1,
        out_h: oh as u32,
        out_w: ow as u32,
        in_stride: conv.in_stride as u32,
        rows: k as u32,
        cols: n as u32,
        out_stride: n as u32,
        total: (k * n) as u32,
        position_major: u32::from(conv.position_major),
        ..Default::default()
    };
    let ones = vec![1.0f32; c.max(m)];
    let zeros = vec![0.0f32; c.max(m)];
    let x = cpu::im2col::im2col(&p, input, &ones, &zeros);
    let y = cpu::gemm::gemm(m, k, n, wv, &x, epi).unwrap();
    let scale = abs_sums(m, k, n, wv, &x, epi).unwrap();
    if !mode.pools() {
        return (y, scale);
    }
    let (ph, pw) = (oh / 2, ow / 2);
    let pooled = batch * ph * pw;
    let pp = Pool2dParams {
        channels: m as u32,
        height: oh as u32,
        width: ow as u32,
        batch: batch as u32,
        kh: 2,
        kw: 2,
        stride_y: 2,
        stride_x: 2,
        out_h: ph as u32,
        out_w: pw as u32,
        in_stride: n as u32,
        out_stride: pooled as u32,
        total: (m * pooled) as u32,
        average: u32::from(mode == Gather::AvgPool),
        ..Default::default()
    };
    let s32: Vec<f32> = scale.iter().map(|&v| v as f32).collect();
    let pool = |v: &[f32], average: u32| {
        let q = Pool2dParams { average, ..pp };
        cpu::pool2d::pool2d(&q, v, &ones, &zeros, m * pooled, 0.0)
    };
    let ps = pool(&s32, 0).iter().map(|&v| f64::from(v)).collect();
    (pool(&y, pp.average), ps)
}
