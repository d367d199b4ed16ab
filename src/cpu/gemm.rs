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

/// `Y = W·X` with W in compressed form, walking its block rows the way the GPU kernel does:
/// dense tiles multiply-add, unified tiles sum signed inputs per tile row, then multiply once.
pub fn gemm_compressed(
    w: &CompressedMatrix,
    x: &[f32],
    n: usize,
    epi: &Epilogue,
) -> Result<Vec<f32>> {
    let (m, k) = (w.view.rows, w.view.cols);
    check_shapes(m, k, n, None, Some(x.len()), epi)?;
    let grid = w.grid();
    let (br, bc) = (w.block.rows, w.block.cols);
    let wpb = w.words_per_block();
    if w.row_ptr.len() != grid.block_rows() + 1 {
        return Err(shape_error(format!(
            "row_ptr has {} offsets for {} block rows",
            w.row_ptr.len(),
            grid.block_rows()
        )));
    }
    let mut acc = vec![0.0f64; m * n];
    let mut sum = vec![0.0f64; n];
    for brow in 0..grid.block_rows() {
        for e in w.row_ptr[brow] as usize..w.row_ptr[brow + 1] as usize {
            let [col, payload] = w.entries[e];
            let ext = grid.extent(brow * grid.block_cols() + col as usize);
            for r in 0..ext.rows {
                let out = &mut acc[(ext.row0 + r) * n..(ext.row0 + r + 1) * n];
                if payload & UNIFIED_FLAG == 0 {
                    for c in 0..ext.cols {
                        let wv = w.values[payload as usize + r * bc + c] as f64;
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
                        let neg = w.signs[u * wpb + bit / 32] >> (bit % 32) & 1 == 1;
                        let xrow = &x[(ext.col0 + c) * n..(ext.col0 + c + 1) * n];
                        for (s, &xv) in sum.iter_mut().zip(xrow) {
                            *s += if neg { -(xv as f64) } else { xv as f64 };
                        }
                    }
                    let a = w.magnitudes[u] as f64;
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
