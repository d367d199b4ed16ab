//! gemm_dense: `Y = W·X + bias` (optional ReLU) with a dense W, register-blocked, lanes
//! along N (any N).

use super::binding::bindings;
use super::reflection::generated;
use super::{GEMM_TM, GEMM_WG, Kernel};

pub const KERNEL: Kernel = Kernel::new(
    &generated::GEMM_DENSE,
    &[
        ("GEMM_WG", GEMM_WG as f64),
        ("GEMM_TM", GEMM_TM as f64),
        ("GATHER", 0.0),
    ],
);

/// The override constants of a pipeline with `tm` rows per workgroup (at most 8) and X
/// read as `gather` says.
pub fn constants(tm: usize, gather: Gather) -> Vec<(&'static str, f64)> {
    vec![
        ("GEMM_WG", GEMM_WG as f64),
        ("GEMM_TM", tm as f64),
        gather.constant(),
    ]
}

/// How gemm_dense and gemm_micro read X (shaders/gemm_gather.wgsl): their own buffer, or a
/// convolution's input activation, each vec4 column 4 output positions along x or one
/// 2×2 window of a max or average pooling fused into the epilogue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Gather {
    #[default]
    Buffer,
    Row,
    MaxPool,
    AvgPool,
}

impl Gather {
    pub const ALL: [Gather; 4] = [
        Gather::Buffer,
        Gather::Row,
        Gather::MaxPool,
        Gather::AvgPool,
    ];

    /// The `GATHER` override constant.
    pub fn constant(self) -> (&'static str, f64) {
        let g = match self {
            Gather::Buffer => 0,
            Gather::Row => 1,
            Gather::MaxPool => 2,
            Gather::AvgPool => 3,
        };
        ("GATHER", f64::from(g))
    }

    /// Whether Y holds one pooled value per vec4 column.
    pub fn pools(self) -> bool {
        matches!(self, Gather::MaxPool | Gather::AvgPool)
    }
}

bindings! {
    pub struct Bindings for KERNEL {
        0 => w,
        1 => x,
        2 => bias,
        3 => y,
        4 => p,
        5 => koff,
    }
}

/// Workgroups (along N, along M) of a tiled GEMM with `lanes` invocations along N (each
/// owning some vec4 columns of Y) and `row_groups` workgroups of rows; unbounded, the
/// caller checks the per-dimension limit.
pub fn workgroups(lanes: usize, row_groups: usize) -> (usize, usize) {
    (lanes.div_ceil(GEMM_WG as usize), row_groups)
}
