//! gemm_micro_small: `Y = W·X + bias` (optional ReLU) with a micro-structured W for N ≤ 8,
//! a few rows of one block row per invocation; unified blocks read the signed-sum table
//! gemm_sign_table built (but at 4 rows and N = 1, [`reads_table`]).

use super::binding::bindings;
use super::reflection::generated;
use super::{Kernel, MICRO_WG};
use crate::gpu::grid;

pub const KERNEL: Kernel = Kernel::new(
    &generated::GEMM_MICRO_SMALL,
    &[
        ("MICRO_WG", MICRO_WG as f64),
        ("RL", 4.0),
        ("BR", 4.0),
        ("BC", 4.0),
        ("WPB", 1.0),
        ("NB", 1.0),
    ],
);

/// The specialisation of one pipeline.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Rows per invocation (divides `br`, `rl · nb ≤ 8`).
    pub rl: usize,
    /// The block shape and its sign words per block.
    pub br: usize,
    pub bc: usize,
    pub wpb: usize,
    /// Columns of X.
    pub nb: usize,
}

/// Whether a pipeline of `rl` rows per invocation and `nb` columns reads the signed-sum
/// table: all but the 4-row, one-column one (`ROWS4` in the shader), which flips the signs
/// of its one vec4 of X per tile row itself (no table pass: 0.34 -> 0.24 ms on lavapipe at
/// 1024×1024, N = 1, 4×4, 50% pruned + 40% unified).
pub fn reads_table(rl: usize, nb: usize) -> bool {
    !(rl == 4 && nb == 1)
}

/// The override constants of a pipeline of `shape`.
pub fn constants(s: Shape) -> Vec<(&'static str, f64)> {
    vec![
        ("MICRO_WG", MICRO_WG as f64),
        ("RL", s.rl as f64),
        ("BR", s.br as f64),
        ("BC", s.bc as f64),
        ("WPB", s.wpb as f64),
        ("NB", s.nb as f64),
    ]
}

bindings! {
    pub struct Bindings for KERNEL {
        0 => rows,
        1 => entries,
        2 => values,
        3 => unified,
        4 => xt,
        5 => table,
        6 => bias,
        7 => y,
        8 => p,
    }
}

/// Workgroups over `row_groups` groups of `rl` rows (2-D past the per-dimension limit),
/// and how many.
pub fn workgroups(row_groups: usize, max_dim: u32) -> (usize, (u32, u32)) {
    let n = row_groups.div_ceil(MICRO_WG as usize);
    (n, grid(n as u32, max_dim))
}
