//! block_stats: per-block errors, magnitudes and packed signs of `V = W + U` over one chunk;
//! blocks its plain f32 sums cannot be trusted for are listed for block_rescale.

use super::binding::bindings;
use super::reflection::generated;
use super::{BLOCK_ITEMS, BLOCK_WG, BLOCKS_PER_WORKGROUP, Kernel, RESCALE_WG};
use crate::gpu::grid;

pub const KERNEL: Kernel = Kernel::new(
    &generated::BLOCK_STATS,
    &[
        ("STATS_WG", BLOCK_WG as f64),
        ("STATS_ITEMS", BLOCK_ITEMS as f64),
        ("RESCALE_WG", RESCALE_WG as f64),
    ],
);

/// The start of a chunk's block_rescale list (WGSL `Rescale` before its blocks): no block
/// listed, and indirect dispatch arguments of no workgroups (block_stats raises them).
pub const RESCALE_HEADER: [u32; 4] = [0, 0, 1, 1];
/// Byte offset of block_rescale's indirect dispatch arguments (`groups_x`) in that header.
pub const RESCALE_ARGS_OFFSET: u64 = 4;

bindings! {
    /// `first_bad` (binding 8 of stats_common.wgsl) is not here: block_stats leaves
    /// non-finite values to block_rescale.
    pub struct Bindings for KERNEL {
        0 => chunk,
        1 => layers,
        2 => pieces,
        3 => w,
        4 => u,
        5 => key_prune,
        6 => key_unify,
        7 => mean_abs,
        9 => signs,
        10 => rescale,
    }
}

/// Workgroups over a chunk of `block_slots` block slots (2-D past the per-dimension limit).
pub fn workgroups(block_slots: u32, max_dim: u32) -> (u32, u32) {
    grid(block_slots.div_ceil(BLOCKS_PER_WORKGROUP), max_dim)
}
