//! CPU references for the GPU kernels: slow, obvious, in f64 where it matters, and the
//! verdict of a GPU projection against them.
//!
//! The projection has a twin per kernel, named after its shader, each computing what that
//! kernel writes from what it reads (kernels-tests/projection_stages.rs compares them
//! stage by stage):
//!
//! | shader                                  | twin                 |
//! |-----------------------------------------|----------------------|
//! | block_stats.wgsl, block_rescale.wgsl    | [`block_stats`]      |
//! | radix_histogram.wgsl                    | [`radix_histogram`]  |
//! | radix_resolve.wgsl                      | [`radix_resolve`]    |
//! | pack_states.wgsl                        | [`pack_states`]      |
//! | apply_projection.wgsl                   | [`apply_projection`] |
//! | scale_dual.wgsl                         | [`scale_dual`]       |
//!
//! [`projection`] is the whole projection in f64 (it uses the block_stats and
//! apply_projection twins), [`agreement`] its verdict on a GPU run, [`gemm`] the GEMM
//! reference.

pub mod agreement;
pub mod apply_projection;
pub mod argmax;
pub mod block_stats;
pub mod forward;
pub mod gemm;
pub mod im2col;
pub mod pack_states;
pub mod pool2d;
pub mod projection;
pub mod radix_histogram;
pub mod radix_resolve;
pub mod scale_dual;
