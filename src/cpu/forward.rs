//! The reference forward pass of a checked [`Network`] in f64: direct convolution and
//! pooling over `[N, C, H, W]` (no im2col, no fusion), from the weights in PyTorch order
//! (a compressed layer's reconstruction), the layers in their written order.

use crate::infer::network::{Network, Op, PoolKind};

/// An activation `[N, C, H, W]`.
struct Act {
    shape: [usize; 3],
    v: Vec<f64>,
}

fn conv(
    a: &Act,
    n: usize,
    w: &[f32],
    wshape: &[usize],
    bias: Option<&[f32]>,
    [stride, pad]: [[usize; 2]; 2],
    out: [usize; 3],
) -> Vec<f64> {
    let [cin, h, wd] = a.shape;
    let (kh, kw) = (wshape[2], wshape[3]);
    let [cout, oh, ow] = out;
    let mut y = vec![0.0; n * cout * oh * ow];
    for b in 0..n {
        for o in 0..cout {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = bias.map_or(0.0, |bv| f64::from(bv[o]));
                    for ci in 0..cin {
                        for ky in 0..kh {
                            let Some(iy) = (oy * stride[0] + ky).checked_sub(pad[0]) else {
                                continue;
                            };
                            if iy >= h {
                                continue;
                            }
                            for kx in 0..kw {
                                let Some(ix) = (ox * stride[1] + kx).checked_sub(pad[1]) else {
                                    continue;
                                };
                                if ix >= wd {
                                    continue;
                                }
                                let wv = f64::from(w[((o * cin + ci) * kh + ky) * kw + kx]);
                                s += wv * a.v[((b * cin + ci) * h + iy) * wd + ix];
                            }
                        }
                    }
                    y[((b * cout + o) * oh + oy) * ow + ox] = s;
                }
            }
        }
    }
    y
}

fn pool(
    a: &Act,
    n: usize,
    kind: PoolKind,
    k: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 2],
    out: [usize; 3],
) -> Vec<f64> {
    let [c, h, w] = a.shape;
    let [_, oh, ow] = out;
    let mut y = vec![0.0; n * c * oh * ow];
    for b in 0..n {
        for ch in 0..c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let (mut best, mut sum) = (f64::NEG_INFINITY, 0.0);
                    for ky in 0..k[0] {
                        for kx in 0..k[1] {
                            let iy = (oy * stride[0] + ky).checked_sub(pad[0]).filter(|&v| v < h);
                            let ix = (ox * stride[1] + kx).checked_sub(pad[1]).filter(|&v| v < w);
                            if let (Some(iy), Some(ix)) = (iy, ix) {
                                let v = a.v[((b * c + ch) * h + iy) * w + ix];
                                best = best.max(v);
                                sum += v;
                            }
                        }
                    }
                    y[((b * c + ch) * oh + oy) * ow + ox] = match kind {
                        PoolKind::Max => best,
                        PoolKind::Average => sum / (k[0] * k[1]) as f64,
                    };
                }
            }
        }
    }
    y
}

/// Logits `[n, classes]` of `n` images `[n, C, H, W]` (already normalised).
pub fn forward(net: &Network, images: &[f32], n: usize) -> Vec<f64> {
    let mut a = Act {
        shape: net.input,
        v: images.iter().map(|&v| f64::from(v)).collect(),
    };
    for layer in &net.layers {
        let out = layer.output;
        a.v = match &layer.op {
            Op::Conv {
                weight,
                bias,
                stride,
                padding,
            } => conv(
                &a,
                n,
                &weight.dense(),
                weight.shape(),
                bias.as_deref(),
                [*stride, *padding],
                out,
            ),
            Op::Linear { weight, bias } => {
                let (m, k) = (out[0], weight.shape()[1]);
                let w = weight.dense();
                let mut y = vec![0.0; n * m];
                for b in 0..n {
                    for o in 0..m {
                        let x = &a.v[b * k..(b + 1) * k];
                        let s: f64 = w[o * k..(o + 1) * k]
                            .iter()
                            .zip(x)
                            .map(|(&wv, &xv)| f64::from(wv) * xv)
                            .sum();
                        y[b * m + o] = s + bias.as_ref().map_or(0.0, |bv| f64::from(bv[o]));
                    }
                }
                y
            }
            Op::Relu => a.v.iter().map(|v| v.max(0.0)).collect(),
            Op::Flatten => std::mem::take(&mut a.v),
            Op::Pool {
                kind,
                kernel,
                stride,
                padding,
            } => pool(&a, n, *kind, *kernel, *stride, *padding, out),
            Op::BatchNorm(bn) => {
                let [c, h, w] = a.shape;
                a.v.iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let ch = (i / (h * w)) % c;
                        (v - f64::from(bn.mean[ch])) / (f64::from(bn.var[ch]) + bn.eps).sqrt()
                            * f64::from(bn.gamma[ch])
                            + f64::from(bn.beta[ch])
                    })
                    .collect()
            }
        };
        a.shape = out;
    }
    a.v
}
