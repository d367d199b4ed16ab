//! pack_states: the 2-bit block-state map (16 blocks per word) from both selections, and
//! the magnitudes of blocks that are not unified set to 0.

use super::binding::bindings;
use super::reflection::generated;
use super::{Kernel, PACK_WG};
use crate::gpu::grid;

pub const KERNEL: Kernel = Kernel::new(&generated::PACK_STATES, &[("PACK_WG", PACK_WG as f64)]);

bindings! {
    pub struct Bindings for KERNEL {
        0 => params,
        1 => groups,
        2 => key_prune,
        3 => key_unify,
        4 => states,
        5 => state_map,
        6 => magnitude,
    }
}

/// Workgroups over the network: one per selection workgroup of blocks
/// ([`super::SELECT_BLOCKS_PER_WORKGROUP`], 16 per thread).
pub fn workgroups(select_workgroups: u32, max_dim: u32) -> (u32, u32) {
    grid(select_workgroups, max_dim)
}
