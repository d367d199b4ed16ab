//! gemm_dense: `Y = W·X + bias` (optional ReLU) with a dense W, register-blocked, lanes
//! along N (any N).

use super::binding::bindings;
use super::reflection::generated;
use super::{GEMM_TM, GEMM_WG, Kernel};

pub const KERNEL: Kernel = Kernel::new(
    &generated::GEMM_DENSE,
    &[("GEMM_WG", GEMM_WG as f64), ("GEMM_TM", GEMM_TM as f64)],
);

/// The override constants of a pipeline with `tm` rows per workgroup (at most 8).
pub fn constants(tm: usize) -> Vec<(&'static str, f64)> {
    vec![("GEMM_WG", GEMM_WG as f64), ("GEMM_TM", tm as f64)]
}

bindings! {
    pub struct Bindings for KERNEL {
        0 => w,
        1 => x,
        2 => bias,
        3 => y,
        4 => p,
    }
}

/// Workgroups (along N, along M) of a tiled GEMM with `lanes` invocations along N (each
/// owning some vec4 columns of Y) and `row_groups` workgroups of rows; unbounded, the
/// caller checks the per-dimension limit.
pub fn workgroups(lanes: usize, row_groups: usize) -> (usize, usize) {
    (lanes.div_ceil(GEMM_WG as usize), row_groups)
}
