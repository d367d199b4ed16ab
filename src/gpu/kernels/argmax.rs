//! argmax: the class of each column of a logits activation, with a pending per-class
//! affine + ReLU applied on read.

use super::binding::bindings;
use super::reflection::generated;
use super::{ARGMAX_WG, Kernel};
use crate::gpu::grid;

pub const KERNEL: Kernel = Kernel::new(&generated::ARGMAX, &[("ARGMAX_WG", ARGMAX_WG as f64)]);

/// WGSL `ArgmaxParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ArgmaxParams {
    pub classes: u32,
    pub cols: u32,
    /// Values between consecutive classes of the input.
    pub in_stride: u32,
    pub relu: u32,
}

bindings! {
    pub struct Bindings for KERNEL {
        0 => input,
        1 => scale,
        2 => shift,
        3 => classes,
        4 => p,
    }
}

/// Workgroups for `cols` columns (2-D past the per-dimension limit).
pub fn workgroups(cols: u32, max_dim: u32) -> (u32, u32) {
    grid(cols.div_ceil(ARGMAX_WG), max_dim)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_twin_matches_its_wgsl_struct() {
        crate::twin_layout!(
            super::ArgmaxParams,
            "ArgmaxParams",
            classes,
            cols,
            in_stride,
            relu
        );
    }
}
