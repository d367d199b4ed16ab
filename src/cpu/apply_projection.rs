//! Twin of apply_projection.wgsl: `Z = Π(W + U)` block by block from the block states and
//! magnitudes, and the dual update `U ← U + W − Z`. All of it is f32 arithmetic that
//! IEEE rounds one way, so the GPU's values are the twin's bit for bit (up to a subnormal
//! flushed by an adapter that flushes them, as WGSL allows).

use crate::block::{BlockGrid, BlockState};
use crate::cpu::block_stats::v_of;

/// Writes block `b`'s projection of `v` in `state` into `z` (`a` the unified magnitude).
pub fn apply_block(
    grid: &BlockGrid,
    v: &[f32],
    b: usize,
    state: BlockState,
    a: f32,
    z: &mut [f32],
) {
    let ext = grid.extent(b);
    let indices = ext.indices(grid.view.cols);
    match state {
        BlockState::Dense => indices.for_each(|i| z[i] = v[i]),
        BlockState::Pruned => indices.for_each(|i| z[i] = 0.0),
        // Sign of 0 is +1 (docs/METHOD.md §2, our choice).
        BlockState::Unified => indices.for_each(|i| z[i] = if v[i] < 0.0 { -a } else { a }),
    }
}

/// `Z` and the updated `U` of one layer, from its `W`, `U`, block states and magnitudes.
pub fn apply_projection(
    grid: &BlockGrid,
    w: &[f32],
    u: &[f32],
    states: &[BlockState],
    magnitudes: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let v = v_of(w, u);
    let mut z = vec![0.0f32; v.len()];
    for (b, (&state, &a)) in states.iter().zip(magnitudes).enumerate() {
        apply_block(grid, &v, b, state, a, &mut z);
    }
    let u_new = v.iter().zip(&z).map(|(v, z)| v - z).collect();
    (z, u_new)
}
