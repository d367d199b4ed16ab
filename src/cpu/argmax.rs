//! The CPU twin of shaders/argmax.wgsl: the first of equal maxima wins.

use super::im2col::transform;
use crate::gpu::kernels::argmax::ArgmaxParams;

/// The class of each of the `p.cols` columns.
pub fn argmax(p: &ArgmaxParams, input: &[f32], scale: &[f32], shift: &[f32]) -> Vec<u32> {
    let (classes, stride) = (p.classes as usize, p.in_stride as usize);
    (0..p.cols as usize)
        .map(|c| {
            let logit =
                |k: usize| transform(input[k * stride + c], scale[k], shift[k], p.relu != 0);
            let mut best = (0, logit(0));
            for k in 1..classes {
                let v = logit(k);
                if v > best.1 {
                    best = (k, v);
                }
            }
            best.0 as u32
        })
        .collect()
}
