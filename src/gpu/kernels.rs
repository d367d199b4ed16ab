//! The WGSL kernels: their sources, entry points and the override constants Rust sets.
//! Tile and workgroup sizes live here only; the shaders declare them as `override`s.

/// Digits of one radix-select pass (RADIX in common.wgsl: 8 bits of the key or block number).
pub const RADIX: u32 = 256;
/// Threads per workgroup of the radix-select histogram.
pub const SELECT_WG: u32 = 64;
/// Blocks each histogram thread visits.
pub const SELECT_ITEMS: u32 = 16;
/// Blocks one selection workgroup covers; layers are padded to a multiple of it.
pub const SELECT_BLOCKS_PER_WORKGROUP: u32 = SELECT_WG * SELECT_ITEMS;
/// Threads per workgroup of the state-map packer (16 blocks per thread).
pub const PACK_WG: u32 = 64;
const _: () = assert!(PACK_WG * 16 == SELECT_BLOCKS_PER_WORKGROUP);
/// Threads per workgroup of the per-block statistics and apply kernels.
pub const BLOCK_WG: u32 = 64;
/// Blocks each statistics/apply invocation handles (strided by the workgroup size).
pub const BLOCK_ITEMS: u32 = 8;
/// Blocks one statistics/apply workgroup covers; pieces are rounded up to it.
pub const BLOCKS_PER_WORKGROUP: u32 = BLOCK_WG * BLOCK_ITEMS;

/// Threads per workgroup of block_rescale (one listed block each).
pub const RESCALE_WG: u32 = 64;

/// Threads per workgroup of the resolve step (one thread per group).
pub const RESOLVE_WG: u32 = 64;
/// Threads per workgroup of the vec4 copy.
pub const COPY_WG: u32 = 256;

/// Invocations per workgroup of the tiled GEMMs (each owns 8 columns of Y).
pub const GEMM_WG: u32 = 16;
/// Rows per workgroup of the dense tiled GEMM (the accumulator holds at most 8).
pub const GEMM_TM: u32 = 8;
/// Invocations per workgroup of the dense small-batch GEMM (one row of W each).
pub const SMALL_WG: u32 = 64;
/// Invocations per workgroup of the micro small-batch GEMM (a few rows of one block row each).
pub const MICRO_WG: u32 = 32;
/// Invocations per workgroup of the signed-sum table pass (one group of 4 inputs each).
pub const TABLE_WG: u32 = 64;
/// Largest N the small-batch kernels take.
pub const SMALL_MAX_N: usize = 8;

/// Declarations shared by the projection kernels, prepended to their sources.
pub const COMMON: &str = include_str!("../../shaders/common.wgsl");
/// Bindings 0-2 (chunk, layers, pieces) and the piece lookup of the per-chunk kernels.
pub const CHUNK_PIECES: &str = include_str!("../../shaders/chunk_pieces.wgsl");
/// Bindings 3-10 and the block helpers of the statistics kernels (block_stats, block_rescale).
pub const STATS_COMMON: &str = include_str!("../../shaders/stats_common.wgsl");
/// Bindings 0-1 (pass params, groups) and the group lookup of the selection kernels.
pub const SELECT_GROUPS: &str = include_str!("../../shaders/select_groups.wgsl");

/// The uniform block of the GEMM kernels.
pub const GEMM_PARAMS: &str = include_str!("../../shaders/gemm_params.wgsl");

/// Shared WGSL files that kernels may prepend, by file name (for the validation test).
pub const PRELUDES: &[(&str, &str)] = &[
    ("common.wgsl", COMMON),
    ("gemm_params.wgsl", GEMM_PARAMS),
    ("chunk_pieces.wgsl", CHUNK_PIECES),
    ("stats_common.wgsl", STATS_COMMON),
    ("select_groups.wgsl", SELECT_GROUPS),
];

/// One compute kernel: a WGSL file with a `main` entry point.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// File name under `shaders/`.
    pub file: &'static str,
    source: &'static str,
    /// Shared files prepended, in order (see [`PRELUDES`]).
    pub preludes: &'static [&'static str],
    /// Values of the shader's `override` constants.
    pub constants: &'static [(&'static str, f64)],
}

impl Kernel {
    /// The complete WGSL text handed to the compiler.
    pub fn source(&self) -> String {
        let mut text = self.preludes.join("\n");
        text.push('\n');
        text.push_str(self.source);
        text
    }

    /// A label for wgpu objects built from this kernel.
    pub fn label(&self) -> &'static str {
        self.file
    }
}

macro_rules! kernel {
    ($file:literal, [$($prelude:expr),*], $consts:expr) => {
        Kernel {
            file: $file,
            source: include_str!(concat!("../../shaders/", $file)),
            preludes: &[$($prelude),*],
            constants: $consts,
        }
    };
    // `true`: only common.wgsl; `false`: a self-contained kernel.
    ($file:literal, true, $consts:expr) => {
        kernel!($file, [COMMON], $consts)
    };
    ($file:literal, false, $consts:expr) => {
        kernel!($file, [], $consts)
    };
}

pub const BLOCK_STATS: Kernel = kernel!(
    "block_stats.wgsl",
    [COMMON, CHUNK_PIECES, STATS_COMMON],
    &[
        ("STATS_WG", BLOCK_WG as f64),
        ("STATS_ITEMS", BLOCK_ITEMS as f64),
        ("RESCALE_WG", RESCALE_WG as f64)
    ]
);
pub const BLOCK_RESCALE: Kernel = kernel!(
    "block_rescale.wgsl",
    [COMMON, CHUNK_PIECES, STATS_COMMON],
    &[("RESCALE_WG", RESCALE_WG as f64)]
);
pub const RADIX_HISTOGRAM: Kernel = kernel!(
    "radix_histogram.wgsl",
    [COMMON, SELECT_GROUPS],
    &[
        ("SELECT_WG", SELECT_WG as f64),
        ("SELECT_ITEMS", SELECT_ITEMS as f64)
    ]
);
pub const RADIX_RESOLVE: Kernel = kernel!(
    "radix_resolve.wgsl",
    true,
    &[("RESOLVE_WG", RESOLVE_WG as f64)]
);
pub const PACK_STATES: Kernel = kernel!(
    "pack_states.wgsl",
    [COMMON, SELECT_GROUPS],
    &[("PACK_WG", PACK_WG as f64)]
);
pub const APPLY_PROJECTION: Kernel = kernel!(
    "apply_projection.wgsl",
    [COMMON, CHUNK_PIECES],
    &[
        ("APPLY_WG", BLOCK_WG as f64),
        ("APPLY_ITEMS", BLOCK_ITEMS as f64)
    ]
);
pub const COPY_VEC4: Kernel = kernel!("copy_vec4.wgsl", false, &[("COPY_WG", COPY_WG as f64)]);

/// The GEMM kernels. The block shape and the row tiling are set per pipeline through
/// [`crate::gpu::Gpu::pipeline_with`]; the constants here are the defaults naga validates.
pub const GEMM_DENSE: Kernel = kernel!(
    "gemm_dense.wgsl",
    [GEMM_PARAMS],
    &[("GEMM_WG", GEMM_WG as f64), ("GEMM_TM", GEMM_TM as f64)]
);
pub const GEMM_MICRO: Kernel = kernel!(
    "gemm_micro.wgsl",
    [GEMM_PARAMS],
    &[
        ("GEMM_WG", GEMM_WG as f64),
        ("GEMM_TM", 4.0),
        ("NV", 4.0),
        ("BR", 4.0),
        ("BC", 4.0),
        ("WPB", 1.0)
    ]
);
pub const GEMM_DENSE_SMALL: Kernel = kernel!(
    "gemm_dense_small.wgsl",
    [GEMM_PARAMS],
    &[("SMALL_WG", SMALL_WG as f64), ("NB", 1.0)]
);
pub const GEMM_MICRO_SMALL: Kernel = kernel!(
    "gemm_micro_small.wgsl",
    [GEMM_PARAMS],
    &[
        ("MICRO_WG", MICRO_WG as f64),
        ("RL", 4.0),
        ("BR", 4.0),
        ("BC", 4.0),
        ("WPB", 1.0),
        ("NB", 1.0)
    ]
);
pub const GEMM_SIGN_TABLE: Kernel = kernel!(
    "gemm_sign_table.wgsl",
    [GEMM_PARAMS],
    &[("TABLE_WG", TABLE_WG as f64)]
);

/// Every kernel the library dispatches.
pub const ALL: &[Kernel] = &[
    BLOCK_STATS,
    BLOCK_RESCALE,
    RADIX_HISTOGRAM,
    RADIX_RESOLVE,
    PACK_STATES,
    APPLY_PROJECTION,
    COPY_VEC4,
    GEMM_DENSE,
    GEMM_MICRO,
    GEMM_DENSE_SMALL,
    GEMM_MICRO_SMALL,
    GEMM_SIGN_TABLE,
];

/// Parses and validates a kernel with naga (no device needed), then resolves its override
/// constants; errors carry the file name and naga's rendered diagnostic with spans.
pub fn validate(kernel: &Kernel) -> crate::Result<()> {
    let src = kernel.source();
    let err = |message: String| crate::Error::Shader {
        file: kernel.file.to_string(),
        message,
    };
    let module = naga::front::wgsl::parse_str(&src).map_err(|e| err(e.emit_to_string(&src)))?;
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::default(),
    )
    .validate(&module)
    .map_err(|e| err(e.emit_to_string(&src)))?;
    let constants: naga::back::PipelineConstants = kernel
        .constants
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    naga::back::pipeline_constants::process_overrides(&module, &info, None, &constants)
        .map_err(|e| err(format!("override constants: {e}")))?;
    Ok(())
}
