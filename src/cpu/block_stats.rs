//! Twin of block_stats.wgsl and block_rescale.wgsl (with their helpers in common.wgsl and
//! stats_common.wgsl): what the two kernels leave in the key, magnitude and sign buffers
//! for each block, and which blocks block_stats lists for block_rescale.
//!
//! Discrete outputs are mirrored exactly: the wide-key encoding, the padding keys, the
//! sign words, the largest |v| that block_stats parks in a listed block's unify key, and
//! the choice of the blocks to rescale. Floating-point outputs (the errors and the mean)
//! are computed in f64 with a two-pass variance, with a rounding bound for the GPU's f32
//! sums next to each value.

use crate::block::{BlockGrid, BlockShape};
use crate::cpu::agreement::{NEAR, value_tolerance};

/// WGSL `KEY_EXP_BIAS` (common.wgsl): added to the binary exponent of a key.
pub const KEY_EXP_BIAS: i32 = 321;
/// WGSL `KEY_EXP_MAX`: the largest exponent field (reached only by non-finite input).
pub const KEY_EXP_MAX: i32 = 1022;
/// WGSL `KEY_EXCLUDED`: the key of a padding block, above every real key.
pub const KEY_EXCLUDED: u32 = u32::MAX;
/// WGSL `SAFE_MIN_BITS` and `SAFE_MAX_BITS` (block_stats.wgsl): the largest |v| of a block
/// whose plain f32 sums block_stats keeps lies in [2^-32, 2^32) (as f32 bits).
pub const SAFE_MIN_BITS: u32 = 0x2f80_0000;
pub const SAFE_MAX_BITS: u32 = 0x4f80_0000;
/// Mantissa bits a key keeps of its error (the 23 of an f32 less one).
const KEY_MANTISSA_BITS: u32 = 22;
/// f32's exponent bias: a key's exponent field is the error's binary exponent plus this
/// and [`KEY_EXP_BIAS`].
const F32_EXP_BIAS: i32 = 127;

/// Errors of one block for both states, and its unified magnitude.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockStats {
    /// Pruning error `e_p = Σ v²`.
    pub prune_err: f64,
    /// Unification error `e_u = Σ v² − n·a²` (computed as `Σ (|v| − a)²`).
    pub unify_err: f64,
    /// `a = mean |v|`, the L2-optimal shared magnitude once the signs are fixed.
    pub mean_abs: f64,
    /// Number of weights in the block (smaller at ragged edges).
    pub len: usize,
}

/// Statistics of every block of a layer, in block order (f64, two-pass variance: the
/// yardstick the GPU's f32 sums are measured against, not a mirror of their arithmetic).
pub fn block_stats(grid: &BlockGrid, data: &[f32]) -> Vec<BlockStats> {
    (0..grid.num_blocks())
        .map(|b| {
            let ext = grid.extent(b);
            let n = ext.len();
            let (mut sum_abs, mut sum_sq) = (0.0f64, 0.0f64);
            for i in ext.indices(grid.view.cols) {
                let x = data[i].abs() as f64;
                sum_abs += x;
                sum_sq += x * x;
            }
            let mean_abs = sum_abs / n as f64;
            let unify_err = ext
                .indices(grid.view.cols)
                .map(|i| (data[i].abs() as f64 - mean_abs).powi(2))
                .sum();
            BlockStats {
                prune_err: sum_sq,
                unify_err,
                mean_abs,
                len: n,
            }
        })
        .collect()
}

/// WGSL `normalise`: a non-zero |x| given by its bits as (biased exponent, 23-bit
/// mantissa) of its normal form; subnormals get exponents 0 down to -22.
pub fn normalise(bits: u32) -> (i32, u32) {
    let (e, m) = (bits >> 23, bits & 0x7f_ffff);
    if e != 0 {
        return (e as i32, m);
    }
    let p = 31 - m.leading_zeros(); // firstLeadingBit
    (p as i32 - 22, (m << (23 - p)) & 0x7f_ffff)
}

/// WGSL `wide_key`: the order-preserving key of the error `|f|·2^extra`.
pub fn wide_key(f: f32, extra: i32) -> u32 {
    let bits = f.to_bits() & 0x7fff_ffff;
    if bits == 0 {
        return 0;
    }
    let (e, m) = normalise(bits);
    let e = (e + extra + KEY_EXP_BIAS).clamp(1, KEY_EXP_MAX);
    ((e as u32) << KEY_MANTISSA_BITS) | (m >> 1)
}

/// The key of an error given in f64, encoded as `wide_key` encodes an f32 one (the
/// mantissa truncated to the key's bits).
pub fn wide_key_of(e: f64) -> u32 {
    if e == 0.0 {
        return 0;
    }
    let bits = e.abs().to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32 - 1023;
    let m = ((bits >> (52 - KEY_MANTISSA_BITS)) & ((1 << KEY_MANTISSA_BITS) - 1)) as u32;
    let field = (exp + F32_EXP_BIAS + KEY_EXP_BIAS).clamp(1, KEY_EXP_MAX);
    ((field as u32) << KEY_MANTISSA_BITS) | m
}

/// The error a key stands for (the low end of the keys' 2^-22 resolution).
pub fn key_value(key: u32) -> f64 {
    if key == 0 {
        return 0.0;
    }
    let field = (key >> KEY_MANTISSA_BITS) as i32;
    let m = (key & ((1 << KEY_MANTISSA_BITS) - 1)) as f64;
    (1.0 + m / (1u32 << KEY_MANTISSA_BITS) as f64) * 2f64.powi(field - F32_EXP_BIAS - KEY_EXP_BIAS)
}

/// Whether block_stats lists a block with largest |v| `top` (bits) for block_rescale.
pub fn needs_rescale(top: u32) -> bool {
    !(SAFE_MIN_BITS..SAFE_MAX_BITS).contains(&top)
}

/// The exponent `K` block_rescale scales a listed block by (`scaled_block`): the largest
/// |v| lands in [1/4, 2), or every value below 2 when `top` is 0.
pub fn rescale_exponent(top: u32) -> i32 {
    if top == 0 {
        126
    } else {
        126 - normalise(top).0
    }
}

/// The sign bit of the weight at row `r`, column `c` of a block: numbered row-major over
/// the full tile, also at ragged edges (where the bits outside the block stay clear), as
/// block_stats.wgsl writes it and the file and the GEMM read it.
pub fn sign_bit(r: usize, c: usize, tile: &BlockShape) -> usize {
    r * tile.cols + c
}

/// Sign bits of every block, `ceil(br·bc / 32)` words per block, bit [`sign_bit`] set when
/// that weight is negative (`-0.0` is not); words past the block's bits are 0. Unified
/// blocks are the ones that need them; computing them for all keeps them a by-product of
/// one pass.
pub fn sign_words(grid: &BlockGrid, data: &[f32]) -> Vec<u32> {
    let wpb = grid.block.len().div_ceil(32);
    let mut words = vec![0u32; grid.num_blocks() * wpb];
    for b in 0..grid.num_blocks() {
        let ext = grid.extent(b);
        for r in 0..ext.rows {
            for c in 0..ext.cols {
                if data[(ext.row0 + r) * grid.view.cols + ext.col0 + c] < 0.0 {
                    let bit = sign_bit(r, c, &grid.block);
                    words[b * wpb + bit / 32] |= 1 << (bit % 32);
                }
            }
        }
    }
    words
}

/// What block_stats (and block_rescale, for a listed block) leave for one block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StatsTwin {
    /// `e_p` and `e_u` (divided by the block's size in global mode), in f64.
    pub prune_err: f64,
    pub unify_err: f64,
    /// How far the GPU's f32 `e_p` and `e_u` may lie from them (see [`stats_twins`]).
    pub prune_tol: f64,
    pub unify_tol: f64,
    /// `a = mean |v|` in f64 and the bound on the GPU's f32 value.
    pub mean_abs: f64,
    pub mean_tol: f64,
    /// Bits of the largest |v|: what block_stats leaves in a listed block's unify key.
    pub top: u32,
    /// Whether block_stats lists the block for block_rescale.
    pub rescaled: bool,
}

impl StatsTwin {
    /// The keys in their wide-key encoding (the GPU's lie within the tolerances).
    pub fn keys(&self) -> (u32, u32) {
        (wide_key_of(self.prune_err), wide_key_of(self.unify_err))
    }
}

/// `v = W + U` as the kernels add them (IEEE f32, as `exact_sum` reproduces it).
pub fn v_of(w: &[f32], u: &[f32]) -> Vec<f32> {
    w.iter().zip(u).map(|(a, b)| a + b).collect()
}

/// The twin of every block of a layer: `v` its `W + U` ([`v_of`]), `normalise` as in
/// global mode.
///
/// Bounds: both errors are f32 sums of `n` terms (per-row, per-lane partials, then rows),
/// in the scaled domain for a listed block, where every value is exact. Each is within
/// a few `n·ε₃₂` of its scale: `Σv²` for `e_p`, and for `e_u = Σd² − (Σd)²/n` with the
/// shifted `d = |v| − |v₀|` the smaller of `Σv²` and `Σd²` (both terms are at most `Σd²`,
/// and each is rounded relative to itself). [`NEAR`] is the margin on that (see there).
/// Below that a floor of `n` smallest normals (in the block's scaled domain): squares
/// under f32's normal range may be flushed to 0 by the adapter, as WGSL allows. A wrong
/// term, a skipped row or a wrong count moves the errors by 1e-3 of the scale or more,
/// three orders above the bound for 32×32 blocks. The mean has the bound of Z's values
/// ([`value_tolerance`]).
pub fn stats_twins(grid: &BlockGrid, v: &[f32], normalise: bool) -> Vec<StatsTwin> {
    block_stats(grid, v)
        .iter()
        .enumerate()
        .map(|(b, s)| {
            let ext = grid.extent(b);
            let cols = grid.view.cols;
            let top = ext
                .indices(cols)
                .map(|i| v[i].abs().to_bits())
                .max()
                .unwrap_or(0);
            let rescaled = needs_rescale(top);
            let k = v[ext.row0 * cols + ext.col0].abs() as f64;
            let shifted: f64 = ext
                .indices(cols)
                .map(|i| (v[i].abs() as f64 - k).powi(2))
                .sum();
            let n = s.len as f64;
            let norm = if normalise { n } else { 1.0 };
            let scale = if rescaled { rescale_exponent(top) } else { 0 };
            let floor = n * f32::MIN_POSITIVE as f64 * 2f64.powi(-2 * scale);
            let tol = |x: f64| (NEAR * n * f32::EPSILON as f64 * x + floor) / norm;
            StatsTwin {
                prune_err: s.prune_err / norm,
                unify_err: s.unify_err / norm,
                prune_tol: tol(s.prune_err),
                unify_tol: tol(s.prune_err.min(shifted)),
                mean_abs: s.mean_abs,
                mean_tol: value_tolerance(s.mean_abs),
                top,
                rescaled,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::kernels;

    /// The value of `const NAME ... = VALUE;` in a WGSL source.
    fn wgsl_const(src: &str, name: &str) -> String {
        let at = src
            .find(&format!("const {name}:"))
            .unwrap_or_else(|| panic!("{name} not in the WGSL"));
        let rest = &src[at..];
        let eq = rest.find('=').unwrap();
        let end = rest.find(';').unwrap();
        rest[eq + 1..end].trim().to_string()
    }

    fn wgsl_u32(text: &str) -> u32 {
        let t = text.trim_end_matches('u');
        match t.strip_prefix("0x") {
            Some(h) => u32::from_str_radix(h, 16).unwrap(),
            None => t.parse().unwrap(),
        }
    }

    #[test]
    fn constants_are_the_shaders() {
        // The composed source: common.wgsl, the other preludes, then block_stats itself.
        let stats = kernels::BLOCK_STATS.source();
        let common = stats;
        assert_eq!(wgsl_const(common, "KEY_EXP_BIAS"), KEY_EXP_BIAS.to_string());
        assert_eq!(wgsl_const(common, "KEY_EXP_MAX"), KEY_EXP_MAX.to_string());
        assert_eq!(wgsl_u32(&wgsl_const(common, "KEY_EXCLUDED")), KEY_EXCLUDED);
        assert_eq!(wgsl_u32(&wgsl_const(stats, "SAFE_MIN_BITS")), SAFE_MIN_BITS);
        assert_eq!(wgsl_u32(&wgsl_const(stats, "SAFE_MAX_BITS")), SAFE_MAX_BITS);
        assert_eq!(f32::from_bits(SAFE_MIN_BITS), 2f32.powi(-32));
        assert_eq!(f32::from_bits(SAFE_MAX_BITS), 2f32.powi(32));
    }

    #[test]
    fn wide_keys_of_f32_and_f64_agree_and_decode() {
        let values = [
            1.0f32,
            0.75,
            3.5e-3,
            1e-40,
            f32::from_bits(1),
            f32::MAX,
            123456.78,
        ];
        for &f in &values {
            for extra in [-290, -64, 0, 64, 200] {
                let key = wide_key(f, extra);
                let e = f as f64 * 2f64.powi(extra);
                assert_eq!(key, wide_key_of(e), "{f} * 2^{extra}");
                let back = key_value(key);
                assert!(
                    back <= e && e - back <= e * 2f64.powi(-22),
                    "{f}: {back} vs {e}"
                );
            }
        }
        assert_eq!(wide_key(0.0, 5), 0);
        assert_eq!(wide_key_of(0.0), 0);
        // Order is kept across the subnormal boundary and the scaled exponents.
        let mut keys: Vec<u32> = [1e-45f32, 1e-40, 1e-38, 1.0, 2.0]
            .iter()
            .map(|&f| wide_key(f, 0))
            .collect();
        keys.push(wide_key(1.0, 300));
        assert!(keys.windows(2).all(|p| p[0] < p[1]), "{keys:x?}");
    }

    #[test]
    fn blocks_outside_the_safe_range_are_rescaled() {
        assert!(!needs_rescale(1.0f32.to_bits()));
        assert!(!needs_rescale(SAFE_MIN_BITS));
        assert!(needs_rescale(SAFE_MAX_BITS));
        assert!(needs_rescale(0));
        assert!(needs_rescale(1e-40f32.to_bits()));
        // The largest |v| lands in [1/4, 2) after scaling.
        for x in [1e-40f32, 1e-12, 3e20, f32::MAX] {
            let s = x as f64 * 2f64.powi(rescale_exponent(x.to_bits()));
            assert!((0.25..2.0).contains(&s), "{x}: {s}");
        }
    }

    #[test]
    fn sign_words_number_bits_over_the_full_tile() {
        use crate::block::GemmView;
        // 3x3 matrix, 2x2 blocks: block 1 is the 2x1 right edge, its bits 0 and 2.
        let grid = BlockGrid::new(
            GemmView { rows: 3, cols: 3 },
            BlockShape::new(2, 2).unwrap(),
        );
        let v = [1.0, -1.0, -2.0, -0.0, 1.0, -3.0, 1.0, 1.0, -1.0];
        assert_eq!(sign_words(&grid, &v), vec![0b0010, 0b101, 0b00, 0b1]);
    }
}
