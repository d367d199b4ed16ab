//! block_rescale: the statistics of the blocks block_stats listed, recomputed in a scaled
//! domain; dispatched indirectly with the arguments block_stats wrote into the list.

use super::binding::bindings;
use super::reflection::generated;
use super::{Kernel, RESCALE_WG};

pub const KERNEL: Kernel = Kernel::new(
    &generated::BLOCK_RESCALE,
    &[("RESCALE_WG", RESCALE_WG as f64)],
);

/// Where its indirect dispatch arguments are in the chunk's list buffer (`rescale`).
pub const ARGS_OFFSET: u64 = super::block_stats::RESCALE_ARGS_OFFSET;

bindings! {
    pub struct Bindings for KERNEL {
        0 => chunk,
        1 => layers,
        2 => pieces,
        3 => w,
        4 => u,
        5 => key_prune,
        6 => key_unify,
        7 => mean_abs,
        8 => first_bad,
        9 => signs,
        10 => rescale,
    }
}
