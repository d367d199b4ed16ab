//! im2col: a convolution's (or a linear layer's) GEMM operand X gathered from a
//! channel-major activation, with a pending per-channel affine + ReLU applied on read.

use super::binding::bindings;
use super::reflection::generated;
use super::{IM2COL_ROWS, IM2COL_WG, Kernel};
use crate::error::{Error, Result};

pub const KERNEL: Kernel = Kernel::new(
    &generated::IM2COL,
    &[
        ("IM2COL_WG", IM2COL_WG as f64),
        ("IM2COL_ROWS", IM2COL_ROWS as f64),
    ],
);

/// WGSL `Im2colParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Im2colParams {
    pub channels: u32,
    pub height: u32,
    pub width: u32,
    pub batch: u32,
    pub kh: u32,
    pub kw: u32,
    pub stride_y: u32,
    pub stride_x: u32,
    pub pad_y: u32,
    pub pad_x: u32,
    pub out_h: u32,
    pub out_w: u32,
    /// Values between consecutive channels of the input.
    pub in_stride: u32,
    /// Real rows of X: `channels · kh · kw`.
    pub rows: u32,
    /// Real columns of X: `batch · out_h · out_w`.
    pub cols: u32,
    /// Values per stored row of X (of X^T when `transposed`).
    pub out_stride: u32,
    /// Values of X as stored, padding included.
    pub total: u32,
    /// 1: X^T, value (k, c) at `c · out_stride + k`.
    pub transposed: u32,
    /// 1: row k = `(y·kw + x)·channels + ci` (ConvLayout::PositionMajor).
    pub position_major: u32,
    pub relu: u32,
}

bindings! {
    pub struct Bindings for KERNEL {
        0 => input,
        1 => scale,
        2 => shift,
        3 => x,
        4 => p,
    }
}

/// Workgroups writing all of X: stored columns along x, groups of `IM2COL_ROWS` stored
/// rows along y; more than the adapter's `max_dim` on either is an error.
pub fn workgroups(p: &Im2colParams, max_dim: u32) -> Result<(u32, u32)> {
    let (rows, cols) = if p.transposed != 0 {
        (p.out_stride, p.total / p.out_stride.max(1))
    } else {
        (p.total / p.out_stride.max(1), p.out_stride)
    };
    let groups = (cols.div_ceil(IM2COL_WG), rows.div_ceil(IM2COL_ROWS));
    if groups.0 > max_dim || groups.1 > max_dim {
        return Err(Error::TooLarge(format!(
            "im2col of {rows} rows x {cols} columns needs {}x{} workgroups; \
             max_compute_workgroups_per_dimension is {max_dim} (use a smaller --batch)",
            groups.0, groups.1
        )));
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_twin_matches_its_wgsl_struct() {
        crate::twin_layout!(
            super::Im2colParams,
            "Im2colParams",
            channels,
            height,
            width,
            batch,
            kh,
            kw,
            stride_y,
            stride_x,
            pad_y,
            pad_x,
            out_h,
            out_w,
            in_stride,
            rows,
            cols,
            out_stride,
            total,
            transposed,
            position_major,
            relu
        );
    }
}
