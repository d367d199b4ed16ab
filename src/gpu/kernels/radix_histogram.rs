//! radix_histogram: one digit's histogram per group over the blocks still in the running;
//! dispatched indirectly (the preceding radix_resolve arms the next pass).

use super::binding::bindings;
use super::reflection::generated;
use super::{Kernel, SELECT_ITEMS, SELECT_WG};

pub const KERNEL: Kernel = Kernel::new(
    &generated::RADIX_HISTOGRAM,
    &[
        ("SELECT_WG", SELECT_WG as f64),
        ("SELECT_ITEMS", SELECT_ITEMS as f64),
    ],
);

/// u32 words of one pass's indirect dispatch arguments (x, y, z).
pub const ARGS_WORDS: u32 = 3;

/// Byte offset of pass `pass`'s indirect dispatch arguments.
pub fn args_offset(pass: usize) -> u64 {
    pass as u64 * ARGS_WORDS as u64 * 4
}

bindings! {
    pub struct Bindings for KERNEL {
        0 => params,
        1 => groups,
        2 => key_prune,
        3 => key_unify,
        4 => states,
        5 => hist,
    }
}
