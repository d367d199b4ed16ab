//! Moving weights between tch tensors and host vectors (flat PyTorch order, which is the
//! channel-major GEMM view of docs/METHOD.md §1).

use anyhow::{Context, Result};
use tch::{Device, Tensor};

/// A tensor's values in flat order.
pub fn host(t: &Tensor) -> Result<Vec<f32>> {
    Vec::<f32>::try_from(&t.detach().to_device(Device::Cpu).flatten(0, -1))
        .context("reading a tensor")
}

/// Overwrites a tensor in place (flat order).
pub fn set_values(t: &Tensor, v: &[f32]) -> Result<()> {
    let src = Tensor::from_slice(v).view(t.size().as_slice());
    tch::no_grad(|| t.shallow_clone().f_copy_(&src.to_device(t.device())))
        .context("writing a tensor")
}
