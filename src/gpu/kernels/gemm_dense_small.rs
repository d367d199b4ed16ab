//! gemm_dense_small: `Y = W·X + bias` (optional ReLU) with a dense W for N ≤ 8, one row of
//! W per invocation, X transposed.

use super::binding::bindings;
use super::reflection::generated;
use super::{Kernel, SMALL_WG};
use crate::gpu::grid;

pub const KERNEL: Kernel = Kernel::new(
    &generated::GEMM_DENSE_SMALL,
    &[("SMALL_WG", SMALL_WG as f64), ("NB", 1.0)],
);

/// The override constants of a pipeline for `nb` columns of X.
pub fn constants(nb: usize) -> Vec<(&'static str, f64)> {
    vec![("SMALL_WG", SMALL_WG as f64), ("NB", nb as f64)]
}

bindings! {
    pub struct Bindings for KERNEL {
        0 => w,
        1 => xt,
        2 => bias,
        3 => y,
        4 => p,
    }
}

/// Workgroups over `rows` rows of W (2-D past the per-dimension limit), and how many.
pub fn workgroups(rows: usize, max_dim: u32) -> (usize, (u32, u32)) {
    let n = rows.div_ceil(SMALL_WG as usize);
    (n, grid(n as u32, max_dim))
}
