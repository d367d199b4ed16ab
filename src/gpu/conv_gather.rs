//! The conv gather's geometry (shaders/gemm_gather.wgsl): a convolution whose GEMM reads X
//! straight from the input activation instead of an im2col pass, optionally with the 2×2
//! pooling after it fused into the GEMM's epilogue. It takes what LeNet-style networks
//! are made of (no padding, stride 1 along x, widths a multiple of 4); the network host
//! keeps im2col for the rest.

use crate::gpu::kernels::gemm_dense::Gather;
use crate::gpu::kernels::gemm_params::GemmParams;

/// What a gathered row past K holds: gemm_gather.wgsl reads it as zeros.
pub const NO_ROW: u32 = u32::MAX;

/// A convolution without padding whose input (channel `ch`, column `b·H·W + y·W + x` at
/// `ch·in_stride + column`) has no transform pending on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGather {
    /// `[C, H, W]` of one input image.
    pub input: [usize; 3],
    /// Values between consecutive channels of the input buffer.
    pub in_stride: usize,
    pub batch: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    /// The convolution's output positions `[OH, OW]`.
    pub out: [usize; 2],
    /// Rows of X as `(ky·kw + kx)·C + ci` (ConvLayout::PositionMajor), else
    /// `(ci·kh + ky)·kw + kx`.
    pub position_major: bool,
    /// Rows of 4 positions along x, or a 2×2 pooling of stride 2 fused.
    pub mode: Gather,
}

impl ConvGather {
    /// Vec4 columns (pairs of them when pooled) per output row, and output (pooled) rows
    /// per image; `None` when the mode cannot tile this output.
    fn grid(&self) -> Option<[usize; 2]> {
        let [oh, ow] = self.out;
        match self.mode {
            Gather::Buffer => None,
            Gather::Row => (ow.is_multiple_of(4) && oh > 0).then_some([ow / 4, oh]),
            Gather::MaxPool | Gather::AvgPool => {
                (oh >= 2 && ow >= 2).then_some([(ow / 2).div_ceil(2), oh / 2])
            }
        }
    }

    /// Whether the GEMM can read this convolution's X: stride 1 along x and an input
    /// width that is a multiple of 4 (every vec4 column then starts at a multiple of 4),
    /// the output tiled by the mode, every index within 32 bits.
    pub fn takes(&self) -> bool {
        let [c, h, w] = self.input;
        let [kh, kw] = self.kernel;
        let indices = self
            .in_stride
            .checked_mul(c + 1)
            .is_some_and(|v| v <= u32::MAX as usize);
        indices
            && c >= 1
            && self.batch >= 1
            && self.batch * h * w <= self.in_stride
            && self.stride[1] == 1
            && w.is_multiple_of(4)
            && (1..=h).contains(&kh)
            && (1..=w).contains(&kw)
            && self.grid().is_some()
    }

    /// Positions of the layer's output per image: the convolution's, or the pooling's.
    pub fn positions(&self) -> [usize; 2] {
        let [oh, ow] = self.out;
        if self.mode.pools() {
            [oh / 2, ow / 2]
        } else {
            self.out
        }
    }

    /// Real vec4 columns of X and Y.
    pub fn cols4(&self) -> usize {
        let pair = if self.mode.pools() { 2 } else { 1 };
        self.grid()
            .map_or(0, |[gw, rows]| pair * self.batch * rows * gw)
    }

    /// Values per row of a pooled Y (whole vec4s).
    pub fn pooled_stride(&self) -> usize {
        let [ph, pw] = self.positions();
        (self.batch * ph * pw).next_multiple_of(4)
    }

    /// Rows of X: `C·kh·kw`.
    pub fn rows(&self) -> usize {
        self.input[0] * self.kernel[0] * self.kernel[1]
    }

    /// Each of the `x_rows` stored rows' offset in the input, [`NO_ROW`] past K.
    pub fn row_offsets(&self, x_rows: usize) -> Vec<u32> {
        let [c, _, w] = self.input;
        let [kh, kw] = self.kernel;
        (0..x_rows)
            .map(|k| {
                if k >= self.rows() {
                    return NO_ROW;
                }
                let (ci, ky, kx) = if self.position_major {
                    (k % c, k / c / kw, k / c % kw)
                } else {
                    (k / (kh * kw), k / kw % kh, k % kw)
                };
                (ci * self.in_stride + ky * w + kx) as u32
            })
            .collect()
    }

    /// The gather's fields of the GEMM's params.
    pub fn params(&self, p: &mut GemmParams) {
        let Some([gw, rows]) = self.grid() else {
            return;
        };
        let [_, h, w] = self.input;
        p.g_w = gw as u32;
        p.g_rows = rows as u32;
        p.in_plane = (h * w) as u32;
        p.step_y = (self.stride[0] * w) as u32;
        p.cols4 = self.cols4() as u32;
        p.out_w = self.positions()[1] as u32;
        p.y_stride = self.pooled_stride() as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(mode: Gather) -> ConvGather {
        ConvGather {
            input: [3, 9, 12],
            in_stride: 240,
            batch: 2,
            kernel: [2, 3],
            stride: [2, 1],
            out: [4, 10],
            position_major: false,
            mode,
        }
    }

    #[test]
    fn row_offsets_follow_the_weight_layout() {
        let c = conv(Gather::MaxPool);
        let k = c.row_offsets(20);
        // (ci, ky, kx) = (0, 1, 2), (1, 0, 0), then rows past K = 18.
        assert_eq!(k[5], 12 + 2);
        assert_eq!(k[6], 240);
        assert_eq!(&k[18..], &[NO_ROW, NO_ROW]);
        let p = ConvGather {
            position_major: true,
            ..c
        }
        .row_offsets(18);
        // Row 7: position 2 = (ky 0, kx 2), channel 1.
        assert_eq!(p[7], 240 + 2);
    }

    #[test]
    fn the_modes_tile_what_they_can() {
        // Pooled: 2×5 pooled positions per image, pairs of vec4s of 4 positions: 2 per row.
        let pooled = conv(Gather::AvgPool);
        assert!(pooled.takes());
        assert_eq!(pooled.positions(), [2, 5]);
        assert_eq!(pooled.cols4(), 2 * 2 * 2 * 3);
        assert_eq!(pooled.pooled_stride(), 20);
        // Plain rows need OW a multiple of 4, inputs too, stride 1 along x.
        assert!(!conv(Gather::Row).takes());
        let row = ConvGather {
            out: [4, 8],
            ..conv(Gather::Row)
        };
        assert!(row.takes());
        assert_eq!(row.cols4(), 2 * 4 * 2);
        assert!(
            !ConvGather {
                input: [3, 9, 10],
                ..row
            }
            .takes()
        );
        assert!(
            !ConvGather {
                stride: [1, 2],
                ..row
            }
            .takes()
        );
        assert!(!conv(Gather::Buffer).takes());
    }
}
