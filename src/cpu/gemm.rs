//! The reference GEMM `Y = W·X (+ bias) (ReLU)`, accumulated in f64: from a dense W and
//! from a [`CompressedMatrix`] (which must give the same result as its `to_dense()`).

use crate::compressed::{CompressedMatrix, UNIFIED_FLAG};
use crate::error::{Error, Result};

/// What is applied to `W·X`: a per-row bias and an optional ReLU.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// One value per row of W (per output feature).
    pub bias: Option<&'a [f32]>,
    pub relu: bool,
}

fn shape_error(why: String) -> Error {
    Error::Shape {
        layer: "<gemm>".into(),
        why,
    }
}

/// Checks that W (`m×k`), X (`k×n`) and the bias (`m`) fit together; zero sizes are errors.
pub fn check_shapes(
    m: usize,
    k: usize,
    n: usize,
    w_len: Option<usize>,
    x_len: Option<usize>,
    epi: &Epilogue,
) -> Result<()> {
    if m == 0 || k == 0 || n == 0 {
        return Err(shape_error(format!("empty GEMM {m}x{k} times {k}x{n}")));
    }
    if let Some(len) = w_len
        && len != m * k
    {
        return Err(shape_error(format!(
            "W has {len} values, expected {m}x{k} = {}",
            m * k
        )));
    }
    if let Some(len) = x_len
        && len != k * n
    {
        return Err(shape_error(format!(
            "X has {len} values, expected {k}x{n} = {}",
            k * n
        )));
    }
    if let Some(b) = epi.bias
        && b.len() != m
    {
        return Err(shape_error(format!(
            "bias has {} values, W has {m} rows",
            b.len()
        )));
    }
    Ok(())
}

fn finish(acc: Vec<f64>, m: usize, n: usize, epi: &Epilogue) -> Vec<f32> {
    (0..m * n)
        .map(|i| {
            let v = acc[i] + epi.bias.map_or(0.0, |b| b[i / n] as f64);
            (if epi.relu { v.max(0.0) } else { v }) as f32
        })
        .collect()
}

/// `Y = W·X`: W `m×k` and X `k×n` row-major, Y `m×n` row-major.
pub fn gemm(
    m: usize,
    k: usize,
    n: usize,
    w: &[f32],
    x: &[f32],
    epi: &Epilogue,
) -> Result<Vec<f32>> {
    check_shapes(m, k, n, Some(w.len()), Some(x.len()), epi)?;
    let mut acc = vec![0.0f64; m * n];
    for r in 0..m {
        for kk in 0..k {
            let wv = w[r * k + kk] as f64;
            if wv == 0.0 {
                continue;
            }
            let xrow = &x[kk * n..(kk + 1) * n];
            for (a, &xv) in acc[r * n..(r + 1) * n].iter_mut().zip(xrow) {
                *a += wv * xv as f64;
            }
        }
    }
    Ok(finish(acc, m, n, epi))
}

/// `Σ_k |W[r,k]·X[k,c]| + |bias[r]|` per output: the scale of each output's rounding error,
/// which tests use to bound the GPU's f32 error.
pub fn abs_sums(
    m: usize,
    k: usize,
    n: usize,
    w: &[f32],
    x: &[f32],
    epi: &Epilogue,
) -> Result<Vec<f64>> {
    let abs_w: Vec<f32> = w.iter().map(|v| v.abs()).collect();
    let abs_x: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    let abs_b: Option<Vec<f32>> = epi.bias.map(|b| b.iter().map(|v| v.abs()).collect());
    let e = Epilogue {
        bias: abs_b.as_deref(),
        relu: false,
    };
    Ok(gemm(m, k, n, &abs_w, &abs_x, &e)?
        .into_iter()
        .map(f64::from)
        .collect())
}

/// Error bound of a GPU product relative to `Σ_k |W[r,k]·X[k,c]| + |bias[r]|` of each output
/// (see [`abs_sums`]). f32 sums of K terms in any order are typically off by √K·ε₃₂ of that
/// scale (under 4e-5 up to K = 10⁵); a real bug (a block skipped, counted twice, a wrong
/// sign, a wrong column of X) moves an output by at least one tile's worth of terms, on
/// average `bc·Σ|w·x| / K` (≥ 1e-3 at K = 4096, bc = 4): 10 times above the bound.
pub const GEMM_REL: f64 = 1e-4;

/// An output of a GPU product farther from the reference than [`GEMM_REL`] allows.
#[derive(Clone, Debug, PartialEq)]
pub struct Mismatch {
    pub row: usize,
    pub col: usize,
    pub gpu: f32,
    pub cpu: f32,
    /// `GEMM_REL · scale` of that output.
    pub bound: f64,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Y[{}, {}] = {:e} on the GPU, {:e} on the CPU (|error| {:.3e} > {:.3e})",
            self.row,
            self.col,
            self.gpu,
            self.cpu,
            (self.gpu as f64 - self.cpu as f64).abs(),
            self.bound
        )
    }
}

/// Compares a GPU product (`m×n`, row-major) with the reference: the largest error in
/// units of each output's `scale`, or the first output past [`GEMM_REL`] (a NaN, such as
/// an output the kernel never wrote over a NaN poison, is always past it).
pub fn compare(gpu_y: &[f32], cpu_y: &[f32], scale: &[f64], n: usize) -> Result<f64, Mismatch> {
    let mut worst = 0.0f64;
    for (i, ((&g, &c), &s)) in gpu_y.iter().zip(cpu_y).zip(scale).enumerate() {
        let err = (g as f64 - c as f64).abs();
        let bound = GEMM_REL * s;
        // A NaN output (an unwritten, poisoned one) fails too.
        if err.is_nan() || err > bound {
            return Err(Mismatch {
                row: i / n,
                col: i % n,
                gpu: g,
                cpu: c,
                bound,
            });
        }
        if s > 0.0 {
            worst = worst.max(err / s);
        }
    }
    if gpu_y.len() != cpu_y.len() {
        let i = gpu_y.len().min(cpu_y.len());
        return Err(Mismatch {
            row: i / n,
            col: i % n,
            gpu: gpu_y.get(i).copied().unwrap_or(f32::NAN),
            cpu: cpu_y.get(i).copied().unwrap_or(f32::NAN),
            bound: 0.0,
        });
    }
    Ok(worst)
}

/// `Y = W·X` with W in compressed form, walking its block rows the way the GPU kernel does:
/// dense tiles multiply-add, unified tiles sum signed inputs per tile row, then multiply once.
pub fn gemm_compressed(
    w: &CompressedMatrix,
    x: &[f32],
    n: usize,
    epi: &Epilogue,
) -> Result<Vec<f32>> {
    let (m, k) = (w.view().rows, w.view().cols);
    check_shapes(m, k, n, None, Some(x.len()), epi)?;
    let grid = w.grid();
    let (br, bc) = (w.block().rows, w.block().cols);
    let wpb = w.words_per_block();
    let (row_ptr, entries) = (w.row_ptr(), w.entries());
    let mut acc = vec![0.0f64; m * n];
    let mut sum = vec![0.0f64; n];
    for brow in 0..grid.block_rows() {
        for &[col, payload] in &entries[row_ptr[brow] as usize..row_ptr[brow + 1] as usize] {
            let ext = grid.extent(brow * grid.block_cols() + col as usize);
            for r in 0..ext.rows {
                let out = &mut acc[(ext.row0 + r) * n..(ext.row0 + r + 1) * n];
                if payload & UNIFIED_FLAG == 0 {
                    for c in 0..ext.cols {
                        let wv = w.values()[payload as usize + r * bc + c] as f64;
                        let xrow = &x[(ext.col0 + c) * n..(ext.col0 + c + 1) * n];
                        for (a, &xv) in out.iter_mut().zip(xrow) {
                            *a += wv * xv as f64;
                        }
                    }
                } else {
                    let u = (payload & !UNIFIED_FLAG) as usize;
                    sum.iter_mut().for_each(|s| *s = 0.0);
                    for c in 0..ext.cols {
                        let bit = r * bc + c;
                        let neg = w.signs()[u * wpb + bit / 32] >> (bit % 32) & 1 == 1;
                        let xrow = &x[(ext.col0 + c) * n..(ext.col0 + c + 1) * n];
                        for (s, &xv) in sum.iter_mut().zip(xrow) {
                            *s += if neg { -(xv as f64) } else { xv as f64 };
                        }
                    }
                    let a = w.magnitudes()[u] as f64;
                    for (o, s) in out.iter_mut().zip(&sum) {
                        *o += a * s;
                    }
                }
            }
            debug_assert!(ext.rows <= br);
        }
    }
    Ok(finish(acc, m, n, epi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_product_by_hand() {
        // [1 2; 3 4] · [5; 6] + [1; -100], ReLU → [18, 0].
        let e = Epilogue {
            bias: Some(&[1.0, -100.0]),
            relu: true,
        };
        let y = gemm(2, 2, 1, &[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0], &e).unwrap();
        assert_eq!(y, vec![18.0, 0.0]);
    }

    #[test]
    fn compressed_equals_dense() {
        let (m, d) = crate::compressed::ragged_example();
        let x: Vec<f32> = (0..18).map(|i| (i as f32 * 0.37).sin()).collect();
        let e = Epilogue::default();
        let a = gemm(5, 6, 3, &d, &x, &e).unwrap();
        let b = gemm_compressed(&m, &x, 3, &e).unwrap();
        for (i, (p, q)) in a.iter().zip(&b).enumerate() {
            assert!((p - q).abs() <= 1e-6 * p.abs().max(1.0), "{i}: {p} vs {q}");
        }
    }

    #[test]
    fn compare_catches_what_a_kernel_bug_leaves() {
        // W 2x8, X 8x1: a correct product passes; one skipped term, a flipped sign or an
        // unwritten (NaN-poisoned) output is caught.
        let (m, k, n) = (2, 8, 1);
        let w: Vec<f32> = (0..16).map(|i| ((i * 7) % 5) as f32 * 0.3 - 0.5).collect();
        let x: Vec<f32> = (0..8).map(|i| (i as f32 * 0.9).cos()).collect();
        let e = Epilogue::default();
        let y = gemm(m, k, n, &w, &x, &e).unwrap();
        let scale = abs_sums(m, k, n, &w, &x, &e).unwrap();
        let nudged: Vec<f32> = y.iter().map(|v| v * (1.0 + 1e-6)).collect();
        assert!(compare(&nudged, &y, &scale, n).unwrap() < GEMM_REL);
        let mut skipped = w.clone();
        skipped[9] = 0.0;
        let bad = gemm(m, k, n, &skipped, &x, &e).unwrap();
        let mis = compare(&bad, &y, &scale, n).unwrap_err();
        assert_eq!((mis.row, mis.col), (1, 0));
        assert!(mis.to_string().starts_with("Y[1, 0] = "), "{mis}");
        let flipped: Vec<f32> = y.iter().map(|v| -v).collect();
        assert!(compare(&flipped, &y, &scale, n).is_err());
        let poisoned = vec![f32::NAN; 2];
        assert!(compare(&poisoned, &y, &scale, n).is_err());
        assert!(compare(&y[..1], &y, &scale, n).is_err());
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let e = Epilogue::default();
        assert!(gemm(2, 2, 1, &[1.0; 3], &[1.0; 2], &e).is_err());
        assert!(gemm(2, 2, 1, &[1.0; 4], &[1.0; 3], &e).is_err());
        let b = Epilogue {
            bias: Some(&[0.0]),
            relu: false,
        };
        assert!(gemm(2, 2, 1, &[1.0; 4], &[1.0; 2], &b).is_err());
        assert!(gemm(0, 2, 1, &[], &[1.0; 2], &e).is_err());
    }
}
