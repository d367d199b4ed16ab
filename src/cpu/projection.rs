//! The reference projection of docs/METHOD.md §2: block statistics, selection, apply.
//!
//! Statistics are accumulated in f64 with a two-pass variance (the block_stats twin,
//! [`crate::cpu::block_stats`]), so this is the yardstick the GPU's f32 kernels are
//! measured against, not a mirror of their arithmetic. The selection here sorts f64
//! keys; the GPU's radix select has its own per-pass twins.

use crate::block::{BlockGrid, BlockState, LayerSpec, Ratios, SelectionMode};
use crate::cpu::apply_projection::apply_block;
use crate::error::{Error, Result};

pub use crate::cpu::block_stats::{BlockStats, block_stats, sign_words};

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
        let a = stats[b].mean_abs as f32;
        if state == BlockState::Unified {
            magnitudes[b] = a;
        }
        apply_block(grid, data, b, state, a, &mut z);
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

/// Convenience: per-layer ratios for a network, validated and named.
pub fn per_layer(layers: &[LayerSpec], prune: f64, unify: f64) -> Result<SelectionMode> {
    layers
        .iter()
        .map(|l| Ratios::new(prune, unify, &l.name))
        .collect::<Result<Vec<_>>>()
        .map(SelectionMode::PerLayer)
}
