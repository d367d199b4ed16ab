//! Twin of pack_states.wgsl: the block-state map (2 bits per block, 16 blocks per word,
//! in the padded network numbering) from the finished selections, and the magnitudes
//! kept for unified blocks only.

use crate::block::{BlockState, StateMap};
use crate::cpu::projection::Group;
use crate::cpu::radix_histogram::{SelState, Selection, state_index};

/// The state of block `b` given the finished prune and unify states of its group.
pub fn state_of(
    b: usize,
    key_prune: u32,
    key_unify: u32,
    prune: &SelState,
    unify: &SelState,
) -> BlockState {
    if prune.is_selected(key_prune, b as u32) {
        BlockState::Pruned
    } else if unify.is_selected(key_unify, b as u32) {
        BlockState::Unified
    } else {
        BlockState::Dense
    }
}

/// The state map and the finished magnitudes (`magnitudes` as block_stats left them).
/// `groups` in the padded numbering, covering it in order.
pub fn pack_states(
    groups: &[Group],
    key_prune: &[u32],
    key_unify: &[u32],
    states: &[SelState],
    magnitudes: &[f32],
) -> (Vec<u32>, Vec<f32>) {
    let total = groups.last().map_or(0, |g| g.end);
    let mut map = vec![BlockState::Dense; total];
    let mut mags = magnitudes.to_vec();
    let n = groups.len();
    for (g, group) in groups.iter().enumerate() {
        let prune = &states[state_index(Selection::Prune, g, n)];
        let unify = &states[state_index(Selection::Unify, g, n)];
        for b in group.begin..group.end {
            let state = state_of(b, key_prune[b], key_unify[b], prune, unify);
            map[b] = state;
            if state != BlockState::Unified {
                mags[b] = 0.0;
            }
        }
    }
    (StateMap::from_states(&map).words(), mags)
}
