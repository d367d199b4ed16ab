//! CPU references for the GPU kernels: slow, obvious, in f64 where it matters.

pub mod gemm;
pub mod projection;
