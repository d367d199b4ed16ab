//! The network kernels (im2col, pool2d, argmax) against their CPU twins (src/cpu/) on
//! awkward sizes (ragged, 1×1, primes, batch 1, strided and transposed layouts, pending
//! scale/shift/ReLU) with poisoned outputs, and a whole network with compressed and dense,
//! conv and linear layers, both poolings, BatchNorm folded and pending, against the f64
//! reference forward (src/cpu/forward.rs) in both weight modes and at several batches.

mod common;

use microunify::bench::random_compressed;
use microunify::block::{BlockShape, ConvLayout};
use microunify::cpu;
use microunify::format::{CompressedFile, CompressedLayer, RawTensor};
use microunify::gpu::Gpu;
use microunify::gpu::buffers::{POISON, read_ranges, storage_init};
use microunify::gpu::kernels::argmax::ArgmaxParams;
use microunify::gpu::kernels::im2col::Im2colParams;
use microunify::gpu::kernels::pool2d::Pool2dParams;
use microunify::infer::host::{Plan, WeightMode};
use microunify::infer::network::{Network, NetworkDef};
use microunify::infer::stages::{Dispatch, Io};
use rand::Rng;
use rand::rngs::SmallRng;

fn values(rng: &mut SmallRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect()
}

/// A pending transform: identity, or a random scale/shift, with or without ReLU.
fn pending(rng: &mut SmallRng, c: usize, affine: bool) -> (Vec<f32>, Vec<f32>) {
    if affine {
        (values(rng, c), values(rng, c))
    } else {
        (vec![1.0; c], vec![0.0; c])
    }
}

fn poisoned(gpu: &Gpu, len: usize) -> wgpu::Buffer {
    storage_init(gpu, "poisoned output", &vec![POISON; len])
}

fn read_f32(gpu: &Gpu, b: &wgpu::Buffer, len: usize) -> Vec<f32> {
    read_ranges::<f32>(gpu, "output", &[(b, 0, (len * 4) as u64)])
        .unwrap()
        .swap_remove(0)
}

/// Equal to within f32 rounding of an fma (bit-equal NaN poison where the twin has it).
fn same(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() {
            g.to_bits() == w.to_bits()
        } else {
            (g - w).abs() <= 1e-6 * w.abs().max(1.0)
        };
        assert!(
            ok,
            "{what}: value {i}: GPU {g} ({:#x}), CPU twin {w}",
            g.to_bits()
        );
    }
}

/// (channels, height, width, batch, kh, kw, stride, pad)
type Geometry = (u32, u32, u32, u32, u32, u32, [u32; 2], [u32; 2]);

const GEOMETRIES: [Geometry; 8] = [
    (1, 1, 1, 1, 1, 1, [1, 1], [0, 0]),
    (3, 7, 5, 2, 3, 3, [1, 1], [1, 1]),
    (2, 11, 13, 1, 5, 3, [2, 3], [2, 1]),
    (5, 4, 4, 3, 4, 4, [1, 1], [0, 0]),
    (1, 28, 28, 2, 5, 5, [1, 1], [0, 0]),
    (7, 3, 2, 5, 1, 1, [1, 1], [0, 0]),
    (4, 9, 6, 1, 2, 2, [2, 2], [1, 1]),
    // More rows of X (1250) than one im2col invocation writes.
    (50, 6, 5, 1, 5, 5, [1, 1], [1, 1]),
];

fn out_side(len: u32, k: u32, s: u32, p: u32) -> u32 {
    (len + 2 * p - k) / s + 1
}

#[test]
fn im2col_matches_its_twin() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(11);
    for (gi, &(c, h, w, batch, kh, kw, stride, pad)) in GEOMETRIES.iter().enumerate() {
        for (transposed, position_major, affine, relu) in [
            (0, 0, false, 0),
            (1, 0, true, 1),
            (0, 1, true, 0),
            (1, 1, false, 1),
        ] {
            let (oh, ow) = (
                out_side(h, kh, stride[0], pad[0]),
                out_side(w, kw, stride[1], pad[1]),
            );
            let (rows, cols) = (c * kh * kw, batch * oh * ow);
            // A strided input (values between channels that are not the activation's) and a
            // padded X, as the GEMM stores them.
            let in_stride = batch * h * w + 3;
            let (rows_pad, cols_pad) = (rows.next_multiple_of(4), cols.next_multiple_of(8));
            let (out_stride, total) = if transposed == 1 {
                (rows_pad, cols * rows_pad)
            } else {
                (cols_pad, rows_pad * cols_pad)
            };
            let p = Im2colParams {
                channels: c,
                height: h,
                width: w,
                batch,
                kh,
                kw,
                stride_y: stride[0],
                stride_x: stride[1],
                pad_y: pad[0],
                pad_x: pad[1],
                out_h: oh,
                out_w: ow,
                in_stride,
                rows,
                cols,
                out_stride,
                total,
                transposed,
                position_major,
                relu,
            };
            let input = values(&mut rng, (c * in_stride) as usize);
            let (scale, shift) = pending(&mut rng, c as usize, affine);
            let want = cpu::im2col::im2col(&p, &input, &scale, &shift);
            let bufs = [&input, &scale, &shift].map(|v| storage_init(&gpu, "in", v));
            let out = poisoned(&gpu, total as usize);
            let io = Io {
                input: &bufs[0],
                scale: &bufs[1],
                shift: &bufs[2],
                output: &out,
            };
            Dispatch::im2col(&gpu, "test", &p, io)
                .unwrap()
                .run(&gpu)
                .unwrap();
            let got = read_f32(&gpu, &out, total as usize);
            same(&format!("im2col geometry {gi} {p:?}"), &got, &want);
        }
    }
}

#[test]
fn pool2d_matches_its_twin() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(12);
    for (gi, &(c, h, w, batch, kh, kw, stride, pad)) in GEOMETRIES.iter().enumerate() {
        if pad[0] > kh / 2 || pad[1] > kw / 2 {
            continue;
        }
        for (average, affine, relu) in [(0, false, 0), (1, true, 1), (0, true, 1), (1, false, 0)] {
            let (oh, ow) = (
                out_side(h, kh, stride[0], pad[0]),
                out_side(w, kw, stride[1], pad[1]),
            );
            let in_stride = batch * h * w + 5;
            // Gaps between the output's channels stay poisoned.
            let out_stride = batch * oh * ow + 2;
            let p = Pool2dParams {
                channels: c,
                height: h,
                width: w,
                batch,
                kh,
                kw,
                stride_y: stride[0],
                stride_x: stride[1],
                pad_y: pad[0],
                pad_x: pad[1],
                out_h: oh,
                out_w: ow,
                in_stride,
                out_stride,
                total: c * batch * oh * ow,
                average,
                relu,
                ..Default::default()
            };
            let input = values(&mut rng, (c * in_stride) as usize);
            let (scale, shift) = pending(&mut rng, c as usize, affine);
            let len = (c * out_stride) as usize;
            let want = cpu::pool2d::pool2d(&p, &input, &scale, &shift, len, f32::from_bits(POISON));
            let bufs = [&input, &scale, &shift].map(|v| storage_init(&gpu, "in", v));
            let out = poisoned(&gpu, len);
            let io = Io {
                input: &bufs[0],
                scale: &bufs[1],
                shift: &bufs[2],
                output: &out,
            };
            Dispatch::pool2d(&gpu, "test", &p, io)
                .unwrap()
                .run(&gpu)
                .unwrap();
            same(
                &format!("pool2d geometry {gi} {p:?}"),
                &read_f32(&gpu, &out, len),
                &want,
            );
        }
    }
}

#[test]
fn argmax_matches_its_twin() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(13);
    for (classes, cols) in [(1, 1), (2, 1), (10, 3), (7, 64), (13, 67), (1000, 5)] {
        for (affine, relu) in [(false, 0), (true, 1), (true, 0)] {
            let in_stride = cols + 3;
            // Coarse values: ties occur, and the first of them must win.
            let input: Vec<f32> = (0..classes * in_stride)
                .map(|_| rng.random_range(-4i32..4) as f32 * 0.5)
                .collect();
            let (scale, shift) = pending(&mut rng, classes as usize, affine);
            let p = ArgmaxParams {
                classes,
                cols,
                in_stride,
                relu,
            };
            let want = cpu::argmax::argmax(&p, &input, &scale, &shift);
            let bufs = [&input, &scale, &shift].map(|v| storage_init(&gpu, "in", v));
            let out = poisoned(&gpu, cols as usize + 1);
            let io = Io {
                input: &bufs[0],
                scale: &bufs[1],
                shift: &bufs[2],
                output: &out,
            };
            Dispatch::argmax(&gpu, "test", &p, io)
                .unwrap()
                .run(&gpu)
                .unwrap();
            let got = read_ranges::<u32>(&gpu, "classes", &[(&out, 0, (cols as u64 + 1) * 4)])
                .unwrap()
                .swap_remove(0);
            assert_eq!(&got[..cols as usize], &want[..], "argmax {p:?}");
            assert_eq!(got[cols as usize], POISON, "argmax wrote past its columns");
        }
    }
}

fn f32_tensor(shape: &[usize], v: &[f32]) -> RawTensor {
    RawTensor {
        dtype: safetensors::Dtype::F32,
        shape: shape.to_vec(),
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

const NETWORK: &str = r#"
[[layer]]
type = "conv"
weight = "conv1.weight"
bias = "conv1.bias"
padding = 1
[[layer]]
type = "batchnorm"
weight = "bn1.weight"
bias = "bn1.bias"
running_mean = "bn1.running_mean"
running_var = "bn1.running_var"
[[layer]]
type = "relu"
[[layer]]
type = "maxpool"
kernel = 2
[[layer]]
type = "conv"
weight = "conv2.weight"
stride = [2, 1]
[[layer]]
type = "batchnorm"
weight = "bn2.weight"
bias = "bn2.bias"
running_mean = "bn2.running_mean"
running_var = "bn2.running_var"
eps = 0.001
[[layer]]
type = "avgpool"
kernel = 3
stride = 1
padding = 1
[[layer]]
type = "flatten"
[[layer]]
type = "linear"
weight = "fc1.weight"
bias = "fc1.bias"
[[layer]]
type = "relu"
[[layer]]
type = "linear"
weight = "fc2.weight"
bias = "fc2.bias"
"#;

/// Images 3×8×8 → conv1 (compressed, position-major, 6×3×3×3, padding 1) → BN (pending)
/// → ReLU → maxpool 2 → conv2 (dense, 5×6×2×3, stride [2, 1]) → BN (folded) → avgpool
/// 3/1/1 → flatten → fc1 (compressed 7×20) → ReLU → fc2 (compressed 4×7); every value
/// of every activation reaches the logits.
fn test_file(rng: &mut SmallRng) -> CompressedFile {
    let mut f = CompressedFile::default();
    let block = BlockShape::new(2, 4).unwrap();
    let c1 = random_compressed(1, 6, 27, block, 0.3, 0.3).unwrap();
    f.layers.push(
        CompressedLayer::new("conv1.weight", &[6, 3, 3, 3], ConvLayout::PositionMajor, c1).unwrap(),
    );
    for (name, m, k, b) in [
        ("fc1.weight", 7, 20, BlockShape::new(3, 3).unwrap()),
        ("fc2.weight", 4, 7, BlockShape::new(4, 4).unwrap()),
    ] {
        let cm = random_compressed(m as u64, m, k, b, 0.2, 0.4).unwrap();
        f.layers
            .push(CompressedLayer::new(name, &[m, k], ConvLayout::ChannelMajor, cm).unwrap());
    }
    let mut put = |name: &str, shape: &[usize], v: Vec<f32>| {
        f.passthrough
            .insert(name.to_string(), f32_tensor(shape, &v));
    };
    put("conv1.bias", &[6], values(rng, 6));
    put("conv2.weight", &[5, 6, 2, 3], values(rng, 180));
    put("fc1.bias", &[7], values(rng, 7));
    put("fc2.bias", &[4], values(rng, 4));
    for (bn, c) in [("bn1", 6), ("bn2", 5)] {
        put(&format!("{bn}.weight"), &[c], values(rng, c));
        put(&format!("{bn}.bias"), &[c], values(rng, c));
        put(&format!("{bn}.running_mean"), &[c], values(rng, c));
        let var: Vec<f32> = (0..c).map(|_| rng.random_range(0.1f32..3.0)).collect();
        put(&format!("{bn}.running_var"), &[c], var);
    }
    f
}

#[test]
fn a_network_matches_the_reference_forward() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(14);
    let file = test_file(&mut rng);
    let def = NetworkDef::parse(NETWORK, "test network").unwrap();
    let net = Network::resolve(&def, &file, [3, 8, 8]).unwrap();
    assert_eq!(net.classes, 4);
    for (batch, n) in [(1, 1), (4, 3), (9, 9)] {
        let images = values(&mut rng, n * 3 * 8 * 8);
        let want = cpu::forward::forward(&net, &images, n);
        let top = want.iter().fold(1.0f64, |a, v| a.max(v.abs()));
        for mode in [WeightMode::Compressed, WeightMode::Dense] {
            let plan = Plan::new(&gpu, &net, batch, mode).unwrap();
            let got = plan.logits(&gpu, &images).unwrap();
            assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (f64::from(*g) - w).abs() <= 1e-4 * top,
                    "batch {batch} ({n} images), {mode:?}: logit {i}: GPU {g}, reference {w}"
                );
            }
            let classes = plan.classify(&gpu, &images).unwrap();
            for (b, c) in classes.iter().enumerate() {
                let row = &got[b * 4..(b + 1) * 4];
                let best = (0..4).fold(0, |a, k| if row[k] > row[a] { k } else { a });
                assert_eq!(*c as usize, best, "batch {batch}, {mode:?}: image {b}");
            }
        }
    }
}

/// A LeNet-style network whose convolutions the GEMMs gather in place (no padding, widths
/// a multiple of 4), with the 2×2 poolings after them fused: conv1 (compressed 4×4,
/// 6×2×5×5) → ReLU → maxpool 2 → conv2 (dense 5×6×3×3) → avgpool 2 → flatten → fc
/// (compressed 3×30). Input 2×16×20.
const GATHERED: &str = r#"
[[layer]]
type = "conv"
weight = "conv1.weight"
bias = "conv1.bias"
[[layer]]
type = "relu"
[[layer]]
type = "maxpool"
kernel = 2
[[layer]]
type = "conv"
weight = "conv2.weight"
bias = "conv2.bias"
[[layer]]
type = "avgpool"
kernel = 2
[[layer]]
type = "flatten"
[[layer]]
type = "linear"
weight = "fc.weight"
bias = "fc.bias"
"#;

#[test]
fn a_gathered_network_matches_the_reference_forward() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(15);
    // conv1: 16×20 → 12×16 (rows of 4 whole vec4s), pooled 6×8; conv2 3×3: 6×8 → 4×6,
    // avg-pooled 2×3 (an odd pooled width); fc over 5·2·3 = 30 features. Then the same
    // with conv2 padded: im2col reads conv1's pooled activation, conv2 6×8 → 3×4 pooled
    // by pool2d, fc over 60 features.
    for padded in [false, true] {
        let features = if padded { 60 } else { 30 };
        let mut f = CompressedFile::default();
        let c1 = random_compressed(3, 6, 50, BlockShape::new(4, 4).unwrap(), 0.3, 0.4).unwrap();
        f.layers.push(
            CompressedLayer::new("conv1.weight", &[6, 2, 5, 5], ConvLayout::ChannelMajor, c1)
                .unwrap(),
        );
        let fc =
            random_compressed(4, 3, features, BlockShape::new(2, 3).unwrap(), 0.2, 0.3).unwrap();
        f.layers.push(
            CompressedLayer::new("fc.weight", &[3, features], ConvLayout::ChannelMajor, fc)
                .unwrap(),
        );
        let mut put = |name: &str, shape: &[usize], v: Vec<f32>| {
            f.passthrough
                .insert(name.to_string(), f32_tensor(shape, &v));
        };
        put("conv1.bias", &[6], values(&mut rng, 6));
        put("conv2.weight", &[5, 6, 3, 3], values(&mut rng, 270));
        put("conv2.bias", &[5], values(&mut rng, 5));
        put("fc.bias", &[3], values(&mut rng, 3));
        let text = if padded {
            GATHERED.replace(
                "weight = \"conv2.weight\"\n",
                "weight = \"conv2.weight\"\npadding = 1\n",
            )
        } else {
            GATHERED.to_string()
        };
        let def = NetworkDef::parse(&text, "gathered network").unwrap();
        let net = Network::resolve(&def, &f, [2, 16, 20]).unwrap();
        for (batch, n) in [(1, 1), (3, 2), (5, 5)] {
            let images = values(&mut rng, n * 2 * 16 * 20);
            let want = cpu::forward::forward(&net, &images, n);
            let top = want.iter().fold(1.0f64, |a, v| a.max(v.abs()));
            for mode in [WeightMode::Compressed, WeightMode::Dense] {
                let plan = Plan::new(&gpu, &net, batch, mode).unwrap();
                let steps = plan.step_labels();
                let fused = steps
                    .iter()
                    .filter(|s| s.contains("(gathered, pooled)"))
                    .count();
                assert_eq!(
                    fused,
                    if padded { 1 } else { 2 },
                    "padded conv2 {padded}: {steps:?}"
                );
                let got = plan.logits(&gpu, &images).unwrap();
                assert_eq!(got.len(), want.len());
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (f64::from(*g) - w).abs() <= 1e-4 * top,
                        "padded {padded}, batch {batch} ({n} images), {mode:?}: logit {i}: \
                         GPU {g}, reference {w}"
                    );
                }
            }
        }
    }
}
