//! microunify: micro-structured weight unification and pruning (docs/METHOD.md), with the
//! batched projection and sparse GEMM as WGSL compute kernels run through wgpu.

pub mod bench;
pub mod block;
pub mod cli;
pub mod compressed;
pub mod cpu;
pub mod data;
pub mod error;
pub mod format;
pub mod fsio;
pub mod gpu;
pub mod infer;
pub mod layout;
pub mod nets;
pub mod plots;
#[cfg(feature = "train")]
pub mod train;

pub use block::{
    BlockGrid, BlockShape, BlockState, ConvLayout, GemmView, LayerSpec, Ratios, SelectionMode,
};
pub use error::{Error, Result};

#[cfg(test)]
mod layering;
