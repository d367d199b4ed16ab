//! CPU references for the GPU kernels: slow, obvious, in f64 where it matters, and the
//! verdict of a GPU projection against them.

pub mod agreement;
pub mod argmax;
pub mod forward;
pub mod gemm;
pub mod im2col;
pub mod pool2d;
pub mod projection;
