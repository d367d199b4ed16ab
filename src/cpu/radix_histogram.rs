//! Twin of radix_histogram.wgsl: one pass of the per-group radix select over composite
//! (key, block number) keys, counting per group the digit of every candidate whose decided
//! bits match the group's prefix. The selection state it reads ([`SelState`]) is the twin
//! of WGSL `SelState` (common.wgsl).

use crate::cpu::projection::Group;
use crate::gpu::kernels::RADIX;

/// Which of the two selections a pass belongs to (WGSL `PassParams.which`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    Prune,
    Unify,
}

/// What one radix pass splits (WGSL `PassParams`, less its dispatch bookkeeping).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RadixPass {
    pub selection: Selection,
    /// The digit is one of the block number (else one of the key).
    pub on_index: bool,
    /// Bit position of the digit.
    pub shift: u32,
    /// Key and block-number bits already decided.
    pub key_mask: u32,
    pub idx_mask: u32,
    /// The pass whose dispatch this pass's resolve arms while work remains.
    pub arms: Option<usize>,
}

/// The radix-select state of one group (WGSL `SelState`): the composite prefix decided so
/// far and how many blocks are still to be taken inside it (0 once exact).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SelState {
    pub k: u32,
    pub rem: u32,
    pub key: u32,
    pub idx: u32,
}

impl SelState {
    /// The state before the first pass: `k` blocks to take, nothing decided.
    pub fn start(k: u32) -> Self {
        Self {
            k,
            rem: k,
            key: 0,
            idx: 0,
        }
    }

    /// WGSL `is_selected`: whether block `idx` with `key` is among the selected.
    pub fn is_selected(&self, key: u32, idx: u32) -> bool {
        self.k > 0 && (key < self.key || (key == self.key && idx <= self.idx))
    }
}

/// The start states of both selections: the prune state of every group, then the unify
/// state of every group (the order of the GPU's state buffer).
pub fn start_states(groups: &[Group]) -> Vec<SelState> {
    let prune = groups.iter().map(|g| SelState::start(g.prune as u32));
    let unify = groups.iter().map(|g| SelState::start(g.unify as u32));
    prune.chain(unify).collect()
}

/// Index of group `g`'s state of `selection` in the state buffer.
pub fn state_index(selection: Selection, g: usize, num_groups: usize) -> usize {
    match selection {
        Selection::Prune => g,
        Selection::Unify => num_groups + g,
    }
}

/// The histogram of one pass: `RADIX` counts per group, over the groups' blocks in the
/// padded numbering (`groups` in that numbering, padding blocks carry
/// [`KEY_EXCLUDED`](crate::cpu::block_stats::KEY_EXCLUDED) keys). `states` as
/// [`start_states`] orders them.
pub fn radix_histogram(
    pass: &RadixPass,
    groups: &[Group],
    key_prune: &[u32],
    key_unify: &[u32],
    states: &[SelState],
) -> Vec<u32> {
    let radix = RADIX as usize;
    let mut hist = vec![0u32; groups.len() * radix];
    for (g, group) in groups.iter().enumerate() {
        let st = states[state_index(pass.selection, g, groups.len())];
        if st.rem == 0 {
            continue;
        }
        let prune_st = states[g];
        for b in group.begin..group.end {
            let idx = b as u32;
            let (key, candidate) = match pass.selection {
                Selection::Prune => (key_prune[b], true),
                Selection::Unify => (key_unify[b], !prune_st.is_selected(key_prune[b], idx)),
            };
            let in_prefix = (key & pass.key_mask) == (st.key & pass.key_mask)
                && (idx & pass.idx_mask) == (st.idx & pass.idx_mask);
            if candidate && in_prefix {
                let of = if pass.on_index { idx } else { key };
                hist[g * radix + ((of >> pass.shift) & (RADIX - 1)) as usize] += 1;
            }
        }
    }
    hist
}
