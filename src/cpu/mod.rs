//! CPU references for the GPU kernels: slow, obvious, in f64 where it matters, and the
//! verdict of a GPU projection against them.

pub mod agreement;
pub mod gemm;
pub mod projection;
