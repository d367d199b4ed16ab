//! gemm_micro: `Y = W·X + bias` (optional ReLU) with a micro-structured W, register-blocked,
//! lanes along N (any N).

use super::binding::bindings;
use super::gemm_dense::Gather;
use super::reflection::generated;
use super::{GEMM_WG, Kernel};

pub const KERNEL: Kernel = Kernel::new(
    &generated::GEMM_MICRO,
    &[
        ("GEMM_WG", GEMM_WG as f64),
        ("GEMM_TM", 4.0),
        ("NV", 4.0),
        ("BR", 4.0),
        ("BC", 4.0),
        ("WPB", 1.0),
        ("GATHER", 0.0),
    ],
);

/// The specialisation of one pipeline.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Rows per workgroup (divides `br`, at most 8).
    pub tm: usize,
    /// vec4 columns of Y per invocation.
    pub nv: usize,
    /// The block shape and its sign words per block.
    pub br: usize,
    pub bc: usize,
    pub wpb: usize,
    /// How X is read.
    pub gather: Gather,
}

/// The override constants of a pipeline of `shape`.
pub fn constants(s: Shape) -> Vec<(&'static str, f64)> {
    vec![
        ("GEMM_WG", GEMM_WG as f64),
        ("GEMM_TM", s.tm as f64),
        ("NV", s.nv as f64),
        ("BR", s.br as f64),
        ("BC", s.bc as f64),
        ("WPB", s.wpb as f64),
        s.gather.constant(),
    ]
}

bindings! {
    pub struct Bindings for KERNEL {
        0 => rows,
        1 => entries,
        2 => values,
        3 => unified,
        4 => x,
        5 => bias,
        6 => y,
        7 => p,
        8 => koff,
    }
}

/// Workgroups: the tiling of gemm_dense ([`super::gemm_dense::workgroups`]).
pub fn workgroups(lanes: usize, row_groups: usize) -> (usize, usize) {
    super::gemm_dense::workgroups(lanes, row_groups)
}
