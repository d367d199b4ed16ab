//! gemm_sign_table: the 16 signed sums of every group of 4 inputs per column of X, read by
//! gemm_micro_small for unified blocks.

use super::binding::bindings;
use super::reflection::generated;
use super::{Kernel, TABLE_WG};
use crate::gpu::grid;

pub const KERNEL: Kernel = Kernel::new(
    &generated::GEMM_SIGN_TABLE,
    &[("TABLE_WG", TABLE_WG as f64)],
);

/// Signed sums per group of 4 inputs.
pub const SUMS_PER_GROUP: usize = 16;

bindings! {
    pub struct Bindings for KERNEL {
        0 => xt,
        1 => table,
        2 => p,
    }
}

/// Bytes of the table for `n` columns of X with `x_rows` rows each.
pub fn table_bytes(n: usize, x_rows: usize) -> u64 {
    (n * x_rows / 4 * SUMS_PER_GROUP * 4) as u64
}

/// Workgroups: one invocation per group of 4 inputs of each column.
pub fn workgroups(n: usize, x_rows: usize, max_dim: u32) -> (u32, u32) {
    grid((n * x_rows / 4).div_ceil(TABLE_WG as usize) as u32, max_dim)
}
