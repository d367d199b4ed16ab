//! copy_vec4: `dst = src`, the memory-bandwidth yardstick.

use super::binding::bindings;
use super::reflection::generated;
use super::{COPY_WG, Kernel};
use crate::gpu::grid;

pub const KERNEL: Kernel = Kernel::new(&generated::COPY_VEC4, &[("COPY_WG", COPY_WG as f64)]);

/// WGSL `CopyParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CopyParams {
    /// vec4 elements to copy.
    pub len: u32,
    pub _pad0: u32,
    pub _pad1: u32,
    pub _pad2: u32,
}

bindings! {
    pub struct Bindings for KERNEL {
        0 => src,
        1 => dst,
        2 => params,
    }
}

/// Workgroups copying `vec4s` elements (2-D past the per-dimension limit).
pub fn workgroups(vec4s: u32, max_dim: u32) -> (u32, u32) {
    grid(vec4s.div_ceil(COPY_WG), max_dim)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_twin_matches_its_wgsl_struct() {
        crate::twin_layout!(super::CopyParams, "CopyParams", len, _pad0, _pad1, _pad2);
    }
}
