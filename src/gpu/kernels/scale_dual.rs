//! scale_dual: `U ← f·U` over one chunk, the rescale of the scaled dual when ρ changes
//! (twin: [`crate::cpu::scale_dual`]).

use super::binding::bindings;
use super::reflection::generated;
use super::{Kernel, SCALE_WG};
use crate::gpu::grid;

pub const KERNEL: Kernel = Kernel::new(&generated::SCALE_DUAL, &[("SCALE_WG", SCALE_WG as f64)]);

/// WGSL `ScaleParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ScaleParams {
    /// f32 elements of the chunk.
    pub len: u32,
    pub factor: f32,
    pub _pad0: u32,
    pub _pad1: u32,
}

bindings! {
    pub struct Bindings for KERNEL {
        0 => u,
        1 => params,
    }
}

/// Weights each invocation scales (`SCALE_ITEMS` in the shader, which writes them out).
pub const ITEMS: u32 = 4;

/// Workgroups scaling `len` elements (2-D past the per-dimension limit).
pub fn workgroups(len: u32, max_dim: u32) -> (u32, u32) {
    grid(len.div_ceil(SCALE_WG * ITEMS), max_dim)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_twin_matches_its_wgsl_struct() {
        crate::twin_layout!(super::ScaleParams, "ScaleParams", len, factor, _pad0, _pad1);
    }
}
