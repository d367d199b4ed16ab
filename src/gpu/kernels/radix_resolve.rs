//! radix_resolve: one thread per group picks the digit its k-th smallest block has, and
//! arms the next histogram pass while work remains.

use super::binding::bindings;
use super::reflection::generated;
use super::{Kernel, RESOLVE_WG};

pub const KERNEL: Kernel = Kernel::new(
    &generated::RADIX_RESOLVE,
    &[("RESOLVE_WG", RESOLVE_WG as f64)],
);

bindings! {
    pub struct Bindings for KERNEL {
        0 => params,
        1 => states,
        2 => hist,
        3 => args,
    }
}

/// Workgroups for `num_groups` selection groups.
pub fn workgroups(num_groups: u32) -> u32 {
    num_groups.div_ceil(RESOLVE_WG)
}
