//! The CPU twin of shaders/im2col.wgsl: every value of the stored X, from the same params.

use crate::gpu::kernels::im2col::Im2colParams;

/// The pending per-channel transform of an activation value.
pub(crate) fn transform(v: f32, scale: f32, shift: f32, relu: bool) -> f32 {
    let v = v.mul_add(scale, shift);
    if relu { v.max(0.0) } else { v }
}

/// Whether padded coordinate `q` (of a side of `len` with `pad` before it) is inside.
pub(crate) fn inside(q: usize, pad: usize, len: usize) -> Option<usize> {
    (q >= pad && q - pad < len).then(|| q - pad)
}

/// X as the kernel stores it (`p.total` values, padding zero).
pub fn im2col(p: &Im2colParams, input: &[f32], scale: &[f32], shift: &[f32]) -> Vec<f32> {
    let u = |v: u32| v as usize;
    let (khw, plane) = (u(p.kh * p.kw), u(p.out_h * p.out_w));
    (0..u(p.total))
        .map(|i| {
            let (k, c) = if p.transposed != 0 {
                (i % u(p.out_stride), i / u(p.out_stride))
            } else {
                (i / u(p.out_stride), i % u(p.out_stride))
            };
            if k >= u(p.rows) || c >= u(p.cols) {
                return 0.0;
            }
            let (ci, pos) = if p.position_major != 0 {
                (k % u(p.channels), k / u(p.channels))
            } else {
                (k / khw, k % khw)
            };
            let (ky, kx) = (pos / u(p.kw), pos % u(p.kw));
            let (b, oy, ox) = (c / plane, (c % plane) / u(p.out_w), c % u(p.out_w));
            let y = inside(oy * u(p.stride_y) + ky, u(p.pad_y), u(p.height));
            let x = inside(ox * u(p.stride_x) + kx, u(p.pad_x), u(p.width));
            match (y, x) {
                (Some(y), Some(x)) => {
                    let at = ci * u(p.in_stride) + (b * u(p.height) + y) * u(p.width) + x;
                    transform(input[at], scale[ci], shift[ci], p.relu != 0)
                }
                _ => 0.0,
            }
        })
        .collect()
}
