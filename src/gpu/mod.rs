//! Everything that touches wgpu: the context, the kernels and their hosts.

pub mod autotune;
pub mod buffers;
pub mod compress;
pub mod context;
pub mod conv_gather;
pub mod copy;
pub mod gemm;
pub mod kernels;
pub mod loops;
pub mod packing;
pub mod projection;

pub use context::{BackendChoice, Gpu, GpuOptions};
pub use projection::{NetworkProjection, ProjectedLayer};

/// Splits `n` workgroups into a 2-D grid that respects the per-dimension limit; kernels
/// recover the linear id as `wid.y * num_workgroups.x + wid.x` and skip ids past `n`.
pub fn grid(n: u32, max_per_dim: u32) -> (u32, u32) {
    if n <= max_per_dim {
        (n.max(1), 1)
    } else {
        (max_per_dim, n.div_ceil(max_per_dim))
    }
}
