//! The CPU twin of shaders/pool2d.wgsl (the average accumulated in f64).

use super::im2col::{inside, transform};
use crate::gpu::kernels::pool2d::Pool2dParams;

/// The output as the kernel stores it: `out_len` values, those the kernel does not write
/// (between channels' strided rows) left at `fill`.
pub fn pool2d(
    p: &Pool2dParams,
    input: &[f32],
    scale: &[f32],
    shift: &[f32],
    out_len: usize,
    fill: f32,
) -> Vec<f32> {
    let u = |v: u32| v as usize;
    let plane = u(p.out_h * p.out_w);
    let cols = u(p.batch) * plane;
    let mut out = vec![fill; out_len];
    for i in 0..u(p.total) {
        let (ch, c) = (i / cols, i % cols);
        let (b, oy, ox) = (c / plane, (c % plane) / u(p.out_w), c % u(p.out_w));
        let base = ch * u(p.in_stride) + b * u(p.height * p.width);
        let mut best = f32::MIN;
        let mut sum = 0.0f64;
        for ky in 0..u(p.kh) {
            for kx in 0..u(p.kw) {
                let y = inside(oy * u(p.stride_y) + ky, u(p.pad_y), u(p.height));
                let x = inside(ox * u(p.stride_x) + kx, u(p.pad_x), u(p.width));
                if let (Some(y), Some(x)) = (y, x) {
                    let v = transform(
                        input[base + y * u(p.width) + x],
                        scale[ch],
                        shift[ch],
                        p.relu != 0,
                    );
                    best = best.max(v);
                    sum += f64::from(v);
                }
            }
        }
        out[ch * u(p.out_stride) + c] = if p.average != 0 {
            (sum / f64::from(p.kh * p.kw)) as f32
        } else {
            best
        };
    }
    out
}
