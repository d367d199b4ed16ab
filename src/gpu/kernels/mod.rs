//! The WGSL kernels, one module each: its params twin, its bindings struct (checked
//! against the bindings build.rs reflected from the shader), its override constants and
//! its dispatch shape. Tile and workgroup sizes live here only; the shaders declare them
//! as `override`s.

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
/// Threads per workgroup of the dual rescale (one weight each).
pub const SCALE_WG: u32 = 256;

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
/// Threads per workgroup of im2col (one column of X each).
pub const IM2COL_WG: u32 = 64;
/// Rows of X one im2col invocation writes.
pub const IM2COL_ROWS: u32 = 1024;
/// Threads per workgroup of pool2d (one output value each).
pub const POOL_WG: u32 = 64;
/// Threads per workgroup of argmax (one column each).
pub const ARGMAX_WG: u32 = 64;

pub mod binding;
pub mod reflection;

/// Twins of the structs in the preludes.
pub mod common;
pub mod gemm_params;

pub mod apply_projection;
pub mod argmax;
pub mod block_rescale;
pub mod block_stats;
pub mod copy_vec4;
pub mod gemm_dense;
pub mod gemm_dense_small;
pub mod gemm_dense_tiled;
pub mod gemm_micro;
pub mod gemm_micro_small;
pub mod gemm_micro_tiled;
pub mod gemm_sign_table;
pub mod im2col;
pub mod pack_states;
pub mod pool2d;
pub mod radix_histogram;
pub mod radix_resolve;
pub mod scale_dual;

pub use binding::Bound;
use reflection::{ReflectedBinding, Reflection, WorkgroupDim};

/// One compute kernel: a WGSL file with a `main` entry point, as build.rs reflected it,
/// and the values of its override constants.
#[derive(Clone, Copy)]
pub struct Kernel {
    /// The kernel's name: its file's stem and its module's name.
    pub name: &'static str,
    /// File name under `shaders/`.
    pub file: &'static str,
    /// Values of the shader's `override` constants (the defaults naga validates; the GEMM
    /// kernels are specialised per pipeline through [`crate::gpu::Gpu::pipeline_with`]).
    pub constants: &'static [(&'static str, f64)],
    reflection: &'static Reflection,
}

impl Kernel {
    pub const fn new(
        reflection: &'static Reflection,
        constants: &'static [(&'static str, f64)],
    ) -> Self {
        Self {
            name: reflection.name,
            file: reflection.file,
            constants,
            reflection,
        }
    }

    /// The complete WGSL text handed to the compiler: the preludes, then the kernel.
    pub fn source(&self) -> &'static str {
        self.reflection.source
    }

    /// The prelude files the kernel's `// requires:` line names, in order.
    pub fn preludes(&self) -> &'static [&'static str] {
        self.reflection.preludes
    }

    /// The names of the shader's `override` constants.
    pub fn overrides(&self) -> &'static [&'static str] {
        self.reflection.overrides
    }

    /// The bindings the entry point uses (a pipeline's automatic layout has these only).
    pub fn bindings(&self) -> &'static [ReflectedBinding] {
        self.reflection.bindings
    }

    /// The workgroup size with the override constants `constants`.
    pub fn workgroup_size(&self, constants: &[(&str, f64)]) -> crate::Result<[u32; 3]> {
        let mut out = [0; 3];
        for (o, d) in out.iter_mut().zip(self.reflection.workgroup_size) {
            *o = match d {
                WorkgroupDim::Literal(v) => v,
                WorkgroupDim::Override(name) => constants
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| *v as u32)
                    .ok_or_else(|| crate::Error::Shader {
                        file: self.file.to_string(),
                        message: format!("no value for the workgroup size override {name}"),
                    })?,
            };
        }
        Ok(out)
    }

    /// A label for wgpu objects built from this kernel.
    pub fn label(&self) -> &'static str {
        self.name
    }
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("name", &self.name)
            .field("constants", &self.constants)
            .finish()
    }
}

pub const BLOCK_STATS: Kernel = block_stats::KERNEL;
pub const BLOCK_RESCALE: Kernel = block_rescale::KERNEL;
pub const RADIX_HISTOGRAM: Kernel = radix_histogram::KERNEL;
pub const RADIX_RESOLVE: Kernel = radix_resolve::KERNEL;
pub const PACK_STATES: Kernel = pack_states::KERNEL;
pub const APPLY_PROJECTION: Kernel = apply_projection::KERNEL;
pub const SCALE_DUAL: Kernel = scale_dual::KERNEL;
pub const COPY_VEC4: Kernel = copy_vec4::KERNEL;
pub const GEMM_DENSE: Kernel = gemm_dense::KERNEL;
pub const GEMM_MICRO: Kernel = gemm_micro::KERNEL;
pub const GEMM_DENSE_SMALL: Kernel = gemm_dense_small::KERNEL;
pub const GEMM_MICRO_SMALL: Kernel = gemm_micro_small::KERNEL;
pub const GEMM_SIGN_TABLE: Kernel = gemm_sign_table::KERNEL;
pub const GEMM_DENSE_TILED: Kernel = gemm_dense_tiled::KERNEL;
pub const GEMM_MICRO_TILED: Kernel = gemm_micro_tiled::KERNEL;
pub const IM2COL: Kernel = im2col::KERNEL;
pub const POOL2D: Kernel = pool2d::KERNEL;
pub const ARGMAX: Kernel = argmax::KERNEL;

/// Every kernel the library dispatches.
pub const ALL: &[Kernel] = &[
    BLOCK_STATS,
    BLOCK_RESCALE,
    RADIX_HISTOGRAM,
    RADIX_RESOLVE,
    PACK_STATES,
    APPLY_PROJECTION,
    SCALE_DUAL,
    COPY_VEC4,
    GEMM_DENSE,
    GEMM_MICRO,
    GEMM_DENSE_SMALL,
    GEMM_MICRO_SMALL,
    GEMM_SIGN_TABLE,
    GEMM_DENSE_TILED,
    GEMM_MICRO_TILED,
    IM2COL,
    POOL2D,
    ARGMAX,
];

/// Every prelude: a file kernels name on their `// requires:` line.
pub const PRELUDES: &[&str] = reflection::generated::PRELUDES;
/// Every `.wgsl` file under `shaders/` when the crate was built.
pub const WGSL_FILES: &[&str] = reflection::generated::WGSL_FILES;

/// Parses and validates a kernel with naga (no device needed), then resolves its override
/// constants; errors carry the file name and naga's rendered diagnostic with spans. (The
/// build validated the source already; this checks the override values too.)
pub fn validate(kernel: &Kernel) -> crate::Result<()> {
    let src = kernel.source();
    let err = |message: String| crate::Error::Shader {
        file: kernel.file.to_string(),
        message,
    };
    let module = naga::front::wgsl::parse_str(src).map_err(|e| err(e.emit_to_string(src)))?;
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::default(),
    )
    .validate(&module)
    .map_err(|e| err(e.emit_to_string(src)))?;
    if let Some((name, _)) = kernel
        .constants
        .iter()
        .find(|(n, _)| !kernel.overrides().contains(n))
    {
        return Err(err(format!("{name} is not an override of the shader")));
    }
    let constants: naga::back::PipelineConstants = kernel
        .constants
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    naga::back::pipeline_constants::process_overrides(&module, &info, None, &constants)
        .map_err(|e| err(format!("override constants: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reflected_kernel_is_dispatched_under_its_own_name() {
        let generated: Vec<&str> = reflection::generated::KERNELS
            .iter()
            .map(|r| r.name)
            .collect();
        let mut listed: Vec<&str> = ALL.iter().map(|k| k.name).collect();
        listed.sort_unstable();
        assert_eq!(listed, generated);
        for k in ALL {
            assert_eq!(k.file, format!("{}.wgsl", k.name));
        }
    }

    #[test]
    fn every_bindings_struct_matches_its_kernel() {
        let structs: [(&Kernel, &[(u32, &str)]); 18] = [
            (&BLOCK_STATS, block_stats::Bindings::FIELDS),
            (&BLOCK_RESCALE, block_rescale::Bindings::FIELDS),
            (&RADIX_HISTOGRAM, radix_histogram::Bindings::FIELDS),
            (&RADIX_RESOLVE, radix_resolve::Bindings::FIELDS),
            (&PACK_STATES, pack_states::Bindings::FIELDS),
            (&APPLY_PROJECTION, apply_projection::Bindings::FIELDS),
            (&SCALE_DUAL, scale_dual::Bindings::FIELDS),
            (&COPY_VEC4, copy_vec4::Bindings::FIELDS),
            (&GEMM_DENSE, gemm_dense::Bindings::FIELDS),
            (&GEMM_MICRO, gemm_micro::Bindings::FIELDS),
            (&GEMM_DENSE_SMALL, gemm_dense_small::Bindings::FIELDS),
            (&GEMM_MICRO_SMALL, gemm_micro_small::Bindings::FIELDS),
            (&GEMM_SIGN_TABLE, gemm_sign_table::Bindings::FIELDS),
            (&GEMM_DENSE_TILED, gemm_dense_tiled::Bindings::FIELDS),
            (&GEMM_MICRO_TILED, gemm_micro_tiled::Bindings::FIELDS),
            (&IM2COL, im2col::Bindings::FIELDS),
            (&POOL2D, pool2d::Bindings::FIELDS),
            (&ARGMAX, argmax::Bindings::FIELDS),
        ];
        assert_eq!(structs.len(), ALL.len());
        for (k, fields) in structs {
            if let Err(e) = binding::check(k, &binding::fields_of(k, fields)) {
                panic!("{e}");
            }
        }
    }

    #[test]
    fn every_workgroup_size_resolves_with_the_kernels_constants() {
        for k in ALL {
            let size = k.workgroup_size(k.constants).unwrap();
            assert!(size.iter().all(|d| *d > 0), "{}: {size:?}", k.name);
        }
        assert_eq!(
            COPY_VEC4.workgroup_size(COPY_VEC4.constants).unwrap(),
            [COPY_WG, 1, 1]
        );
        assert!(COPY_VEC4.workgroup_size(&[]).is_err());
    }
}
