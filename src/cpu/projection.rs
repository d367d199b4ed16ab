//! The reference projection of docs/METHOD.md §2: block statistics, selection, apply.
//!
//! Statistics are accumulated in f64 with a two-pass variance, so this is the yardstick
//! the GPU's f32 kernels are measured against, not a mirror of their arithmetic.

use crate::block::{BlockGrid, BlockState, LayerSpec, Ratios, SelectionMode};
use crate::error::{Error, Result};

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

/// Statistics of every block of a layer, in block order.
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

/// Fails on the first NaN or infinity, naming the layer, flat index, row and column.
pub fn check_finite(layer: &LayerSpec, data: &[f32]) -> Result<()> {
    if data.len() != layer.view.len() {
        return Err(Error::Shape {
            layer: layer.name.clone(),
            why: format!(
                "{} values given for a {}x{} matrix",
                data.len(),
                layer.view.rows,
                layer.view.cols
            ),
        });
    }
    match data.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(Error::NonFinite {
            layer: layer.name.clone(),
            index,
            row: index / layer.view.cols,
            col: index % layer.view.cols,
            value: data[index],
        }),
    }
}

/// Marks the `k` smallest keys among the non-excluded ones; ties go to the lower index.
pub fn select_smallest(keys: &[f64], excluded: &[bool], k: usize) -> Vec<bool> {
    let mut order: Vec<usize> = (0..keys.len()).filter(|&i| !excluded[i]).collect();
    assert!(
        k <= order.len(),
        "selecting {k} of {} eligible blocks",
        order.len()
    );
    order.sort_by(|&a, &b| keys[a].total_cmp(&keys[b]).then(a.cmp(&b)));
    let mut chosen = vec![false; keys.len()];
    for &i in &order[..k] {
        chosen[i] = true;
    }
    chosen
}

/// One selection group: a contiguous run of blocks (in network order) ranked together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group {
    pub begin: usize,
    pub end: usize,
    pub prune: usize,
    pub unify: usize,
}

/// The selection groups of a mode: one per layer, or one for the whole network.
pub fn groups(layers: &[LayerSpec], mode: &SelectionMode) -> Vec<Group> {
    let sizes: Vec<usize> = layers.iter().map(|l| l.grid().num_blocks()).collect();
    match mode {
        SelectionMode::PerLayer(ratios) => {
            let mut begin = 0;
            sizes
                .iter()
                .zip(ratios)
                .map(|(&n, r)| {
                    let (prune, unify) = r.counts(n);
                    let g = Group {
                        begin,
                        end: begin + n,
                        prune,
                        unify,
                    };
                    begin += n;
                    g
                })
                .collect()
        }
        SelectionMode::Global(r) => {
            let n: usize = sizes.iter().sum();
            let (prune, unify) = r.counts(n);
            vec![Group {
                begin: 0,
                end: n,
                prune,
                unify,
            }]
        }
    }
}

/// Selection keys `(e_p, e_u)` of every block in network order; the global mode ranks
/// errors normalised by block size so that ragged edge blocks compete fairly.
pub fn selection_keys(stats: &[Vec<BlockStats>], normalise: bool) -> (Vec<f64>, Vec<f64>) {
    // Divide rather than multiply by 1/n: division is correctly rounded, so equal errors
    // per weight stay exactly tied (49 · (1/49) is not 1 in floating point).
    let norm = |e: f64, s: &BlockStats| if normalise { e / s.len as f64 } else { e };
    let all = stats.iter().flatten();
    (
        all.clone().map(|s| norm(s.prune_err, s)).collect(),
        all.map(|s| norm(s.unify_err, s)).collect(),
    )
}

/// Pruned blocks of every group (the first step of the selection).
pub fn select_pruned(prune_keys: &[f64], groups: &[Group]) -> Vec<bool> {
    let mut out = Vec::with_capacity(prune_keys.len());
    for g in groups {
        let keys = &prune_keys[g.begin..g.end];
        out.extend(select_smallest(keys, &vec![false; keys.len()], g.prune));
    }
    out
}

/// Unified blocks of every group, chosen among the blocks not in `pruned`.
pub fn select_unified(unify_keys: &[f64], pruned: &[bool], groups: &[Group]) -> Vec<bool> {
    let mut out = Vec::with_capacity(unify_keys.len());
    for g in groups {
        let r = g.begin..g.end;
        out.extend(select_smallest(&unify_keys[r.clone()], &pruned[r], g.unify));
    }
    out
}

/// The projection of one layer: block states, the projected matrix and unified magnitudes.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerProjection {
    pub states: Vec<BlockState>,
    /// `Π(v)` in the layer's GEMM view (row-major).
    pub z: Vec<f32>,
    /// `a` for unified blocks, 0 for the others.
    pub magnitudes: Vec<f32>,
}

/// Writes each block's L2-closest point in its state.
pub fn apply(
    grid: &BlockGrid,
    data: &[f32],
    stats: &[BlockStats],
    states: &[BlockState],
) -> LayerProjection {
    let mut z = vec![0.0f32; data.len()];
    let mut magnitudes = vec![0.0f32; states.len()];
    for (b, &state) in states.iter().enumerate() {
        let ext = grid.extent(b);
        match state {
            BlockState::Dense => ext.indices(grid.view.cols).for_each(|i| z[i] = data[i]),
            BlockState::Pruned => {}
            BlockState::Unified => {
                let a = stats[b].mean_abs as f32;
                magnitudes[b] = a;
                // Sign of 0 is +1 (docs/METHOD.md §2, our choice).
                ext.indices(grid.view.cols)
                    .for_each(|i| z[i] = if data[i] < 0.0 { -a } else { a });
            }
        }
    }
    LayerProjection {
        states: states.to_vec(),
        z,
        magnitudes,
    }
}

/// Projects every layer of a network (`data[l]` is layer `l` in its GEMM view).
pub fn project(
    layers: &[LayerSpec],
    data: &[&[f32]],
    mode: &SelectionMode,
) -> Result<Vec<LayerProjection>> {
    mode.check(layers)?;
    if data.len() != layers.len() {
        return Err(Error::Shape {
            layer: "<network>".into(),
            why: format!("{} tensors given for {} layers", data.len(), layers.len()),
        });
    }
    for (layer, d) in layers.iter().zip(data) {
        check_finite(layer, d)?;
    }
    let stats: Vec<Vec<BlockStats>> = layers
        .iter()
        .zip(data)
        .map(|(l, d)| block_stats(&l.grid(), d))
        .collect();
    let (kp, ku) = selection_keys(&stats, matches!(mode, SelectionMode::Global(_)));
    let groups = groups(layers, mode);
    let pruned = select_pruned(&kp, &groups);
    let unified = select_unified(&ku, &pruned, &groups);
    let mut offset = 0;
    Ok(layers
        .iter()
        .zip(data)
        .zip(&stats)
        .map(|((l, d), s)| {
            let states: Vec<BlockState> = (offset..offset + s.len())
                .map(|i| match (pruned[i], unified[i]) {
                    (true, _) => BlockState::Pruned,
                    (_, true) => BlockState::Unified,
                    _ => BlockState::Dense,
                })
                .collect();
            offset += s.len();
            apply(&l.grid(), d, s, &states)
        })
        .collect())
}

/// Sign bits of every block, `ceil(br·bc / 32)` words per block: bit `r·bc + c` (the
/// full-tile numbering of [`crate::compressed::CompressedMatrix`], also at ragged edges,
/// where the bits outside the block stay clear) is set when the block's weight `(r, c)`
/// is negative. Unified blocks are the ones that need them; computing them for all keeps
/// them a by-product of one pass.
pub fn sign_words(grid: &BlockGrid, data: &[f32]) -> Vec<u32> {
    let wpb = grid.block.len().div_ceil(32);
    let bc = grid.block.cols;
    let mut words = vec![0u32; grid.num_blocks() * wpb];
    for b in 0..grid.num_blocks() {
        let ext = grid.extent(b);
        for r in 0..ext.rows {
            for c in 0..ext.cols {
                let bit = r * bc + c;
                if data[(ext.row0 + r) * grid.view.cols + ext.col0 + c] < 0.0 {
                    words[b * wpb + bit / 32] |= 1 << (bit % 32);
                }
            }
        }
    }
    words
}

/// Convenience: per-layer ratios for a network, validated and named.
pub fn per_layer(layers: &[LayerSpec], prune: f64, unify: f64) -> Result<SelectionMode> {
    layers
        .iter()
        .map(|l| Ratios::new(prune, unify, &l.name))
        .collect::<Result<Vec<_>>>()
        .map(SelectionMode::PerLayer)
}
