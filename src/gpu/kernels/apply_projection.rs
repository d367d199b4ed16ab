//! apply_projection: `Z = Π(W + U)` from the block-state map and magnitudes, fused with the
//! ADMM dual update `U ← U + W − Z`, over one chunk.

use super::binding::bindings;
use super::reflection::generated;
use super::{BLOCK_ITEMS, BLOCK_WG, Kernel};

pub const KERNEL: Kernel = Kernel::new(
    &generated::APPLY_PROJECTION,
    &[
        ("APPLY_WG", BLOCK_WG as f64),
        ("APPLY_ITEMS", BLOCK_ITEMS as f64),
    ],
);

bindings! {
    pub struct Bindings for KERNEL {
        0 => chunk,
        1 => layers,
        2 => pieces,
        3 => w,
        4 => u,
        5 => z,
        6 => state_map,
        7 => magnitude,
    }
}

/// Workgroups over a chunk of `block_slots` block slots: the grid of block_stats (both
/// cover [`super::BLOCKS_PER_WORKGROUP`] blocks per workgroup).
pub fn workgroups(block_slots: u32, max_dim: u32) -> (u32, u32) {
    super::block_stats::workgroups(block_slots, max_dim)
}
