//! pool2d: max or average pooling of a channel-major activation, with a pending
//! per-channel affine + ReLU applied on read.

use super::binding::bindings;
use super::reflection::generated;
use super::{Kernel, POOL_WG};
use crate::gpu::grid;

pub const KERNEL: Kernel = Kernel::new(&generated::POOL2D, &[("POOL_WG", POOL_WG as f64)]);

/// WGSL `Pool2dParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Pool2dParams {
    pub channels: u32,
    pub height: u32,
    pub width: u32,
    pub batch: u32,
    pub kh: u32,
    pub kw: u32,
    pub stride_y: u32,
    pub stride_x: u32,
    pub pad_y: u32,
    pub pad_x: u32,
    pub out_h: u32,
    pub out_w: u32,
    /// Values between consecutive channels of the input.
    pub in_stride: u32,
    /// Values between consecutive channels of the output.
    pub out_stride: u32,
    /// `channels · batch · out_h · out_w`.
    pub total: u32,
    /// 1: average, else max.
    pub average: u32,
    pub relu: u32,
    pub _pad0: u32,
    pub _pad1: u32,
    pub _pad2: u32,
}

bindings! {
    pub struct Bindings for KERNEL {
        0 => input,
        1 => scale,
        2 => shift,
        3 => output,
        4 => p,
    }
}

/// Workgroups writing `total` values (2-D past the per-dimension limit).
pub fn workgroups(total: u32, max_dim: u32) -> (u32, u32) {
    grid(total.div_ceil(POOL_WG), max_dim)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_twin_matches_its_wgsl_struct() {
        crate::twin_layout!(
            super::Pool2dParams,
            "Pool2dParams",
            channels,
            height,
            width,
            batch,
            kh,
            kw,
            stride_y,
            stride_x,
            pad_y,
            pad_x,
            out_h,
            out_w,
            in_stride,
            out_stride,
            total,
            average,
            relu,
            _pad0,
            _pad1,
            _pad2
        );
    }
}
