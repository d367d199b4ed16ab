//! The GPU plan of a checked [`Network`] for batches of `batch` images: per conv or linear
//! layer an im2col into the GEMM's own X and the GEMM (micro-structured, or dense) with
//! its bias and a directly following ReLU fused; pooling; an argmax. Activations stay on
//! the GPU, stored channel-major (channel `ch`, column `b·H·W + y·W + x` at
//! `ch·stride + column`); a whole batch is one submission.
//!
//! A BatchNorm after a dense weight is folded into it (rows scaled, bias shifted). After a
//! compressed weight it cannot be: scaling a unified block's rows by different factors
//! unmakes it. Its per-channel `scale·v + shift` (and a ReLU after it) then stays *pending*
//! on the activation and the next kernel applies it as it reads (im2col, pool2d and argmax
//! all take one), which leaves the GEMM kernels as they are.

use crate::block::ConvLayout;
use crate::cpu::gemm::Epilogue;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::gpu::autotune;
use crate::gpu::buffers::{Staging, read_ranges, storage, storage_init};
use crate::gpu::conv_gather::ConvGather;
use crate::gpu::gemm::{Gemm, Path};
use crate::gpu::kernels::argmax::ArgmaxParams;
use crate::gpu::kernels::gemm_dense::Gather;
use crate::gpu::kernels::im2col::Im2colParams;
use crate::gpu::kernels::pool2d::Pool2dParams;
use crate::infer::network::{Layer, Network, Op, PoolKind, Weight};
use crate::infer::stages::{Dispatch, Io, check_u32};
use std::time::Instant;

/// Which GEMM the conv and linear layers run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightMode {
    /// The micro-structured GEMM for every compressed weight (a weight the file keeps
    /// dense runs the dense one).
    Compressed,
    /// The dense GEMM for every weight (compressed ones reconstructed): the baseline.
    Dense,
}

/// The per-channel transform still to apply to an activation: `relu?(scale·v + shift)`.
#[derive(Clone, Debug)]
struct Pending {
    scale: Vec<f32>,
    shift: Vec<f32>,
    relu: bool,
}

impl Pending {
    fn identity(channels: usize) -> Self {
        Self {
            scale: vec![1.0; channels],
            shift: vec![0.0; channels],
            relu: false,
        }
    }

    fn is_identity(&self) -> bool {
        !self.relu && self.scale.iter().all(|&s| s == 1.0) && self.shift.iter().all(|&t| t == 0.0)
    }

    fn apply(&self, ch: usize, v: f32) -> f32 {
        crate::cpu::im2col::transform(v, self.scale[ch], self.shift[ch], self.relu)
    }
}

/// An activation on the GPU.
struct Act {
    buffer: wgpu::Buffer,
    /// Values between consecutive channels.
    stride: usize,
    /// `[C, H, W]` as stored (a flatten moves nothing).
    phys: [usize; 3],
    pending: Pending,
}

enum Step {
    Gemm { label: String, gemm: Box<Gemm> },
    Kernel(Dispatch),
}

impl Step {
    fn label(&self) -> &str {
        match self {
            Step::Gemm { label, .. } => label,
            Step::Kernel(d) => &d.label,
        }
    }

    fn record(&self, encoder: &mut wgpu::CommandEncoder) {
        match self {
            Step::Gemm { gemm, .. } => gemm.record(encoder),
            Step::Kernel(d) => d.record(encoder),
        }
    }
}

/// A network ready to run on the GPU, batch after batch.
pub struct Plan {
    pub batch: usize,
    pub mode: WeightMode,
    input_shape: [usize; 3],
    input: wgpu::Buffer,
    steps: Vec<Step>,
    logits: Act,
    classes: usize,
    predictions: wgpu::Buffer,
}

fn shape_err(label: &str, why: String) -> Error {
    Error::Shape {
        layer: label.to_string(),
        why,
    }
}

/// The pending transform's buffers.
fn pending_buffers(gpu: &Gpu, label: &str, p: &Pending) -> (wgpu::Buffer, wgpu::Buffer) {
    (
        storage_init(gpu, &format!("{label} scale"), &p.scale),
        storage_init(gpu, &format!("{label} shift"), &p.shift),
    )
}

/// What a GEMM layer needs of its layer list: geometry of its window.
struct Window {
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    out: [usize; 2],
}

impl Plan {
    pub fn new(gpu: &Gpu, net: &Network, batch: usize, mode: WeightMode) -> Result<Self> {
        if batch == 0 {
            return Err(shape_err(
                "<network>",
                "the batch must hold at least one image".into(),
            ));
        }
        let [c, h, w] = net.input;
        let cols = batch * h * w;
        check_u32("the input", "a batch", c * cols)?;
        let input = gpu.scoped("allocating the network input", || {
            storage(gpu, "network input", (c * cols * 4) as u64)
        })?;
        let mut act = Act {
            buffer: input.clone(),
            stride: cols,
            phys: net.input,
            pending: Pending::identity(c),
        };
        let mut steps = Vec::new();
        let layers = &net.layers;
        let mut i = 0;
        while i < layers.len() {
            let layer = &layers[i];
            i += 1;
            match &layer.op {
                Op::Conv {
                    weight,
                    bias,
                    stride,
                    padding,
                } => {
                    let s = weight.shape();
                    let g = Window {
                        kernel: [s[2], s[3]],
                        stride: *stride,
                        padding: *padding,
                        out: [layer.output[1], layer.output[2]],
                    };
                    let fused = gemm_layer(
                        gpu,
                        layer,
                        weight,
                        bias.as_deref(),
                        &layers[i..],
                        g,
                        act,
                        batch,
                        mode,
                        &mut steps,
                    )?;
                    act = fused.0;
                    i += fused.1;
                }
                Op::Linear { weight, bias } => {
                    let [_, ph, pw] = act.phys;
                    let g = Window {
                        kernel: [ph, pw],
                        stride: [1, 1],
                        padding: [0, 0],
                        out: [1, 1],
                    };
                    let fused = gemm_layer(
                        gpu,
                        layer,
                        weight,
                        bias.as_deref(),
                        &layers[i..],
                        g,
                        act,
                        batch,
                        mode,
                        &mut steps,
                    )?;
                    act = fused.0;
                    i += fused.1;
                }
                Op::Relu => act.pending.relu = true,
                Op::Flatten => {}
                Op::BatchNorm(bn) => {
                    if act.pending.relu {
                        return Err(shape_err(
                            &layer.label,
                            "a batchnorm after a relu that no conv, linear or pooling layer \
                             took in between is not supported"
                                .into(),
                        ));
                    }
                    let (s, t) = bn.affine();
                    let p = &mut act.pending;
                    for ch in 0..s.len() {
                        p.scale[ch] *= s[ch];
                        p.shift[ch] = p.shift[ch].mul_add(s[ch], t[ch]);
                    }
                }
                Op::Pool {
                    kind,
                    kernel,
                    stride,
                    padding,
                } => {
                    let [c, h, w] = act.phys;
                    let [_, oh, ow] = layer.output;
                    let out_cols = batch * oh * ow;
                    let total = check_u32(&layer.label, "the output", c * out_cols)?;
                    let p = Pool2dParams {
                        channels: c as u32,
                        height: h as u32,
                        width: w as u32,
                        batch: batch as u32,
                        kh: kernel[0] as u32,
                        kw: kernel[1] as u32,
                        stride_y: stride[0] as u32,
                        stride_x: stride[1] as u32,
                        pad_y: padding[0] as u32,
                        pad_x: padding[1] as u32,
                        out_h: oh as u32,
                        out_w: ow as u32,
                        in_stride: check_u32(&layer.label, "the input", act.stride)?,
                        out_stride: out_cols as u32,
                        total,
                        average: u32::from(*kind == PoolKind::Average),
                        relu: u32::from(act.pending.relu),
                        ..Default::default()
                    };
                    let (scale, shift) = pending_buffers(gpu, &layer.label, &act.pending);
                    let output = gpu.scoped(&format!("allocating {}", layer.label), || {
                        storage(gpu, &layer.label, u64::from(total) * 4)
                    })?;
                    let io = Io {
                        input: &act.buffer,
                        scale: &scale,
                        shift: &shift,
                        output: &output,
                    };
                    steps.push(Step::Kernel(Dispatch::pool2d(gpu, &layer.label, &p, io)?));
                    act = Act {
                        buffer: output,
                        stride: out_cols,
                        phys: [c, oh, ow],
                        pending: Pending::identity(c),
                    };
                }
            }
        }
        let last = &layers.last().expect("a checked network has layers").label;
        if act.phys[1] * act.phys[2] != 1 {
            return Err(shape_err(
                last,
                format!(
                    "the logits are a flattened {}×{}×{} activation; end with a linear layer",
                    act.phys[0], act.phys[1], act.phys[2]
                ),
            ));
        }
        let predictions = storage(gpu, "predicted classes", (batch * 4) as u64);
        let p = ArgmaxParams {
            classes: net.classes as u32,
            cols: batch as u32,
            in_stride: check_u32(last, "the logits", act.stride)?,
            relu: u32::from(act.pending.relu),
        };
        let (scale, shift) = pending_buffers(gpu, "argmax", &act.pending);
        let io = Io {
            input: &act.buffer,
            scale: &scale,
            shift: &shift,
            output: &predictions,
        };
        steps.push(Step::Kernel(Dispatch::argmax(gpu, "argmax", &p, io)?));
        Ok(Self {
            batch,
            mode,
            input_shape: net.input,
            input,
            steps,
            logits: act,
            classes: net.classes,
            predictions,
        })
    }

    /// Values per image.
    fn image_len(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// Uploads `n ≤ batch` normalised images `[n, C, H, W]` (the rest of the batch zero).
    pub fn write_input(&self, gpu: &Gpu, images: &[f32]) -> Result<usize> {
        let len = self.image_len();
        let n = images.len() / len;
        if images.len() != n * len || n == 0 || n > self.batch {
            return Err(shape_err(
                "<network input>",
                format!(
                    "{} values are not 1 to {} images of {len}",
                    images.len(),
                    self.batch
                ),
            ));
        }
        let [c, h, w] = self.input_shape;
        let plane = h * w;
        let cols = self.batch * plane;
        let mut data = vec![0.0f32; c * cols];
        for b in 0..n {
            for ch in 0..c {
                let from = &images[(b * c + ch) * plane..(b * c + ch + 1) * plane];
                data[ch * cols + b * plane..ch * cols + (b + 1) * plane].copy_from_slice(from);
            }
        }
        gpu.queue
            .write_buffer(&self.input, 0, bytemuck::cast_slice(&data));
        Ok(n)
    }

    /// Runs the network on the uploaded batch: one submission, waited for.
    pub fn run(&self, gpu: &Gpu) -> Result<()> {
        gpu.submit_and_wait("the network batch", self.record(gpu).finish())
    }

    /// An encoder with every step of the network recorded, not yet submitted.
    fn record(&self, gpu: &Gpu) -> wgpu::CommandEncoder {
        let mut encoder = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("network batch"),
            });
        for s in &self.steps {
            s.record(&mut encoder);
        }
        encoder
    }

    /// The predicted class of each of `n` images `[n, C, H, W]`: the network and the copy
    /// of the classes in one submission, one wait.
    pub fn classify(&self, gpu: &Gpu, images: &[f32]) -> Result<Vec<u32>> {
        let n = self.write_input(gpu, images)?;
        let mut encoder = self.record(gpu);
        let staging = Staging::record(gpu, &mut encoder, &[(&self.predictions, 0, (n * 4) as u64)]);
        let step = "the network batch and its classes";
        let index = gpu.submit(step, encoder.finish())?;
        Ok(staging.finish::<u32>(gpu, step, index)?.swap_remove(0))
    }

    /// The logits `[n, classes]` of `n` images (the pending transform applied).
    pub fn logits(&self, gpu: &Gpu, images: &[f32]) -> Result<Vec<f32>> {
        let n = self.write_input(gpu, images)?;
        self.run(gpu)?;
        let a = &self.logits;
        let bytes = (((self.classes - 1) * a.stride + self.batch) * 4) as u64;
        let v = read_ranges::<f32>(gpu, "the logits", &[(&a.buffer, 0, bytes)])?.swap_remove(0);
        Ok((0..n)
            .flat_map(|b| (0..self.classes).map(move |k| (b, k)))
            .map(|(b, k)| a.pending.apply(k, v[k * a.stride + b]))
            .collect())
    }

    /// Seconds per run of each step alone (the current input, `reps` runs after one),
    /// labelled: where a batch's time goes.
    pub fn profile(&self, gpu: &Gpu, reps: usize) -> Result<Vec<(String, f64)>> {
        self.steps
            .iter()
            .map(|s| {
                let run = |times: usize| -> Result<()> {
                    let mut encoder =
                        gpu.device
                            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                                label: Some(s.label()),
                            });
                    for _ in 0..times {
                        s.record(&mut encoder);
                    }
                    gpu.submit_and_wait(s.label(), encoder.finish())
                };
                run(1)?;
                let t = Instant::now();
                run(reps.max(1))?;
                Ok((
                    s.label().to_string(),
                    t.elapsed().as_secs_f64() / reps.max(1) as f64,
                ))
            })
            .collect()
    }

    /// What each step runs, in order (the kernels `--profile` times).
    pub fn step_labels(&self) -> Vec<String> {
        self.steps.iter().map(|s| s.label().to_string()).collect()
    }

    /// Whether any BatchNorm stays pending on the logits (the test's logits then go
    /// through the host's transform too).
    pub fn logits_pending(&self) -> bool {
        !self.logits.pending.is_identity()
    }
}

/// A conv or linear layer: im2col of `act` into the GEMM's X, and the GEMM, with a
/// BatchNorm right after folded (dense weights) and a ReLU right after fused. Returns the
/// output activation and how many of the `next` layers it took.
#[allow(clippy::too_many_arguments)]
fn gemm_layer(
    gpu: &Gpu,
    layer: &Layer,
    weight: &Weight,
    bias: Option<&[f32]>,
    next: &[Layer],
    g: Window,
    act: Act,
    batch: usize,
    mode: WeightMode,
    steps: &mut Vec<Step>,
) -> Result<(Act, usize)> {
    let label = &layer.label;
    let [c, h, w] = act.phys;
    let rows = weight.shape()[0];
    let k = c * g.kernel[0] * g.kernel[1];
    let n = batch * g.out[0] * g.out[1];
    let mut bias: Vec<f32> = bias.map_or_else(|| vec![0.0; rows], <[f32]>::to_vec);
    let mut took = 0;
    let compressed = match weight {
        Weight::Compressed(l) if mode == WeightMode::Compressed => Some(l),
        _ => None,
    };
    // A BatchNorm right after a dense weight folds into it; then a ReLU fuses.
    let mut wv = Vec::new();
    if compressed.is_none() {
        wv = weight.dense();
        if let Some(Op::BatchNorm(bn)) = next.first().map(|l| &l.op) {
            let (s, t) = bn.affine();
            for r in 0..rows {
                wv[r * k..(r + 1) * k].iter_mut().for_each(|v| *v *= s[r]);
                bias[r] = bias[r].mul_add(s[r], t[r]);
            }
            took = 1;
        }
    }
    let relu = act_relu_next(&next[took..], &mut took);
    let epi = Epilogue {
        bias: Some(&bias),
        relu,
    };
    let position_major = compressed.is_some_and(|l| l.layout == ConvLayout::PositionMajor);
    let kind = if compressed.is_some() {
        "micro GEMM"
    } else {
        "dense GEMM"
    };
    let err = |e: Error| shape_err(label, format!("its GEMM: {e}"));
    // The gather reads X in place where it can (no padding, nothing pending), with a 2×2
    // pooling right after fused when there is one.
    if g.padding == [0, 0] && act.pending.is_identity() {
        let pool = match next.get(took).map(|l| &l.op) {
            Some(Op::Pool {
                kind,
                kernel: [2, 2],
                stride: [2, 2],
                padding: [0, 0],
            }) => Some(match kind {
                PoolKind::Max => Gather::MaxPool,
                PoolKind::Average => Gather::AvgPool,
            }),
            _ => None,
        };
        for mode in pool.into_iter().chain([Gather::Row]) {
            let conv = ConvGather {
                input: act.phys,
                in_stride: act.stride,
                batch,
                kernel: g.kernel,
                stride: g.stride,
                out: g.out,
                position_major,
                mode,
            };
            let gemm = match compressed {
                Some(l) => Gemm::conv_micro(gpu, &l.matrix, &conv, &act.buffer, &epi),
                None => Gemm::conv_dense(gpu, rows, &wv, &conv, &act.buffer, &epi),
            }
            .map_err(err)?;
            let mut kind = kind.to_string();
            // A weight that is mostly dense blocks can run faster through the dense kernel
            // on its reconstruction (the same values): with the autotuner on, both are
            // timed once and the faster one runs.
            let gemm = match (gemm, compressed) {
                (Some(micro), Some(l)) if autotune::Mode::from_env()? != autotune::Mode::Off => {
                    let wr = l.matrix.to_dense();
                    let dense =
                        Gemm::conv_dense(gpu, rows, &wr, &conv, &act.buffer, &epi).map_err(err)?;
                    match dense {
                        Some(dense)
                            if autotune::time_product(gpu, &dense)?
                                < autotune::time_product(gpu, &micro)? =>
                        {
                            kind = "dense GEMM of the reconstruction (timed faster)".into();
                            Some(dense)
                        }
                        _ => Some(micro),
                    }
                }
                (g, _) => g,
            };
            if let Some(gemm) = gemm {
                let [oh, ow] = conv.positions();
                let out = Act {
                    buffer: gemm.y_buffer().clone(),
                    stride: gemm.y_stride(),
                    phys: [rows, oh, ow],
                    pending: Pending::identity(rows),
                };
                check_u32(label, "the output", rows * out.stride)?;
                steps.push(Step::Gemm {
                    label: format!(
                        "{label} {kind} (gathered{})",
                        if mode.pools() { ", pooled" } else { "" }
                    ),
                    gemm: Box::new(gemm),
                });
                return Ok((out, took + usize::from(mode.pools())));
            }
        }
    }
    let gemm = match compressed {
        Some(l) => Gemm::micro(gpu, &l.matrix, n, &epi, Path::Auto),
        None => Gemm::dense(gpu, rows, k, &wv, n, &epi, Path::Auto),
    }
    .map_err(err)?;
    let p = Im2colParams {
        channels: c as u32,
        height: h as u32,
        width: w as u32,
        batch: batch as u32,
        kh: g.kernel[0] as u32,
        kw: g.kernel[1] as u32,
        stride_y: g.stride[0] as u32,
        stride_x: g.stride[1] as u32,
        pad_y: g.padding[0] as u32,
        pad_x: g.padding[1] as u32,
        out_h: g.out[0] as u32,
        out_w: g.out[1] as u32,
        in_stride: check_u32(label, "the input", act.stride)?,
        rows: k as u32,
        cols: check_u32(label, "X", n)?,
        out_stride: gemm.x_stride() as u32,
        total: check_u32(label, "X", gemm.x_values())?,
        transposed: u32::from(gemm.x_transposed()),
        position_major: u32::from(position_major),
        relu: u32::from(act.pending.relu),
    };
    let (scale, shift) = pending_buffers(gpu, label, &act.pending);
    let io = Io {
        input: &act.buffer,
        scale: &scale,
        shift: &shift,
        output: gemm.x_buffer(),
    };
    steps.push(Step::Kernel(Dispatch::im2col(gpu, label, &p, io)?));
    let out = Act {
        buffer: gemm.y_buffer().clone(),
        stride: gemm.y_stride(),
        phys: [rows, g.out[0], g.out[1]],
        pending: Pending::identity(rows),
    };
    check_u32(label, "the output", rows * out.stride)?;
    steps.push(Step::Gemm {
        label: format!("{label} {kind}"),
        gemm: Box::new(gemm),
    });
    Ok((out, took))
}

/// Whether the next layer is a ReLU (then counted as taken).
fn act_relu_next(next: &[Layer], took: &mut usize) -> bool {
    let relu = matches!(next.first().map(|l| &l.op), Some(Op::Relu));
    *took += usize::from(relu);
    relu
}
