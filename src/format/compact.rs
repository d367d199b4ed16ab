//! A layer's compact form as the file stores it, exactly the bits docs/METHOD.md §1 counts,
//! and the [`CompressedMatrix`] it stands for. The file keeps only what cannot be derived:
//! the state map, the dense blocks' real weights (edge blocks as small as they are), one
//! magnitude per unified block and `n` sign bits per unified block of `n` weights. The
//! block-row index and the tile padding the GEMM and the projection want are rebuilt here
//! on reading, so they can never disagree with the state map.

use super::LayerMeta;
use crate::block::{BlockGrid, BlockShape, BlockState, GemmView, StateMap};
use crate::compressed::{CompressedMatrix, UNIFIED_FLAG, block_index};
use sha2::{Digest, Sha256};

/// The compact tensors of one layer, in the file's order (see the format's table).
#[derive(Clone, Debug, PartialEq)]
pub struct Compact {
    /// 2-bit state map, 4 blocks a byte ([`StateMap::as_bytes`]).
    pub states: Vec<u8>,
    /// The dense blocks' weights, block after block, each row-major over its own extent.
    pub values: Vec<f32>,
    pub magnitudes: Vec<f32>,
    /// One bit per weight of each unified block, block after block, each row-major over
    /// its own extent; bit `k` of the stream is bit `k % 8` of byte `k / 8`.
    pub signs: Vec<u8>,
}

/// How long the compact tensors of a state map are.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sizes {
    pub dense_weights: usize,
    pub unified_blocks: usize,
    pub unified_weights: usize,
}

impl Sizes {
    pub fn of(grid: &BlockGrid, states: &[BlockState]) -> Self {
        let mut s = Self {
            dense_weights: 0,
            unified_blocks: 0,
            unified_weights: 0,
        };
        for (b, st) in states.iter().enumerate() {
            let n = grid.extent(b).len();
            match st {
                BlockState::Dense => s.dense_weights += n,
                BlockState::Unified => {
                    s.unified_blocks += 1;
                    s.unified_weights += n;
                }
                BlockState::Pruned => {}
            }
        }
        s
    }

    /// Bytes of the sign bit stream.
    pub fn sign_bytes(&self) -> usize {
        self.unified_weights.div_ceil(8)
    }
}

/// The compact form of `m` (consistent, as every [`CompressedMatrix`] is).
pub fn encode(m: &CompressedMatrix) -> Compact {
    let grid = m.grid();
    let (len, wpb, bc) = (m.block().len(), m.words_per_block(), m.block().cols);
    let sizes = Sizes::of(&grid, m.states());
    let mut out = Compact {
        states: StateMap::from_states(m.states()).as_bytes().to_vec(),
        values: Vec::with_capacity(sizes.dense_weights),
        magnitudes: m.magnitudes().to_vec(),
        signs: vec![0; sizes.sign_bytes()],
    };
    let (mut di, mut ui, mut bit) = (0, 0, 0);
    for (b, s) in m.states().iter().enumerate() {
        let ext = grid.extent(b);
        match s {
            BlockState::Dense => {
                let tile = &m.values()[di * len..(di + 1) * len];
                for r in 0..ext.rows {
                    out.values
                        .extend_from_slice(&tile[r * bc..r * bc + ext.cols]);
                }
                di += 1;
            }
            BlockState::Unified => {
                let words = &m.signs()[ui * wpb..(ui + 1) * wpb];
                for r in 0..ext.rows {
                    for c in 0..ext.cols {
                        let p = r * bc + c;
                        if words[p / 32] >> (p % 32) & 1 == 1 {
                            out.signs[bit / 8] |= 1 << (bit % 8);
                        }
                        bit += 1;
                    }
                }
                ui += 1;
            }
            BlockState::Pruned => {}
        }
    }
    out
}

/// The compressed matrix of a compact form whose tensors have the lengths [`Sizes::of`]
/// gives for `states` (the reader has checked them, so every index below is in range), or
/// the invariant of [`CompressedMatrix::new`] the values break.
pub fn decode(
    view: GemmView,
    block: BlockShape,
    states: Vec<BlockState>,
    values: &[f32],
    magnitudes: Vec<f32>,
    signs: &[u8],
) -> Result<CompressedMatrix, String> {
    let grid = BlockGrid::new(view, block);
    let (len, bc) = (block.len(), block.cols);
    let wpb = len.div_ceil(32);
    let [d, u, _] = counts(&states);
    let (row_ptr, entries) = block_index(&grid, &states);
    let mut tiles = vec![0.0f32; d * len];
    let mut words = vec![0u32; u * wpb];
    let (mut di, mut ui, mut at, mut bit) = (0, 0, 0, 0);
    for (b, s) in states.iter().enumerate() {
        let ext = grid.extent(b);
        match s {
            BlockState::Dense => {
                for r in 0..ext.rows {
                    let to = di * len + r * bc;
                    tiles[to..to + ext.cols].copy_from_slice(&values[at..at + ext.cols]);
                    at += ext.cols;
                }
                di += 1;
            }
            BlockState::Unified => {
                for r in 0..ext.rows {
                    for c in 0..ext.cols {
                        if signs[bit / 8] >> (bit % 8) & 1 == 1 {
                            let p = r * bc + c;
                            words[ui * wpb + p / 32] |= 1 << (p % 32);
                        }
                        bit += 1;
                    }
                }
                ui += 1;
            }
            BlockState::Pruned => {}
        }
    }
    CompressedMatrix::new(
        view, block, states, row_ptr, entries, tiles, magnitudes, words,
    )
}

fn counts(states: &[BlockState]) -> [usize; 3] {
    let mut c = [0; 3];
    states.iter().for_each(|s| c[*s as usize] += 1);
    c
}

/// Whether `dense` tiles and `unified` blocks of this shape fit the in-memory index, whose
/// payloads are 32-bit tile offsets and flagged unified numbers.
pub fn index_fits(dense: usize, unified: usize, block: BlockShape) -> bool {
    (dense as u64) * (block.len() as u64) <= u64::from(u32::MAX) && unified < UNIFIED_FLAG as usize
}

/// Which dense block (its number among the dense blocks, and its block number) holds
/// flat index `i` of the compact values.
pub fn dense_block_at(grid: &BlockGrid, states: &[BlockState], i: usize) -> (usize, usize) {
    let mut start = 0;
    let dense = (states.iter().enumerate()).filter(|(_, s)| **s == BlockState::Dense);
    for (k, (b, _)) in dense.enumerate() {
        start += grid.extent(b).len();
        if i < start {
            return (k, b);
        }
    }
    unreachable!("flat index {i} lies past the dense blocks")
}

/// The SHA-256 of a layer: its metadata entry (with an empty `sha256`, as JSON) and then
/// its compact tensors' bytes in the file's order, as lowercase hex. The compact form has
/// no redundancy left, so this is what tells a damaged weight, sign or block shape from a
/// real one.
pub fn checksum(meta: &LayerMeta, parts: &[&[u8]]) -> String {
    let unsummed = LayerMeta {
        sha256: String::new(),
        ..meta.clone()
    };
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&unsummed).expect("a LayerMeta is always JSON"));
    parts.iter().for_each(|p| h.update(p));
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compressed::ragged_example;

    #[test]
    fn the_compact_form_holds_only_real_weights() {
        // 5x6 in 4x4: (0,0) unified 4x4, (0,1) dense 4x2, (1,0) pruned, (1,1) unified 1x2.
        let (m, d) = ragged_example();
        let c = encode(&m);
        let dense_block: Vec<f32> = (0..4).flat_map(|r| [d[r * 6 + 4], d[r * 6 + 5]]).collect();
        assert_eq!(c.values, dense_block);
        assert_eq!(c.magnitudes, [0.5, 2.0]);
        // 16 + 2 sign bits: the checkerboard of the first block (odd r + c negative), then -2, +2.
        assert_eq!(c.signs.len(), 3);
        assert_eq!(c.signs[..2], [0b0101_1010, 0b0101_1010]);
        assert_eq!(c.signs[2], 0b01);
        let states = m.states().to_vec();
        let back = decode(
            m.view(),
            m.block(),
            states,
            &c.values,
            c.magnitudes,
            &c.signs,
        );
        assert_eq!(back.unwrap(), m);
    }

    #[test]
    fn the_index_limit_is_that_of_32_bit_payloads() {
        let b = BlockShape::new(4, 4).unwrap();
        let tiles = u32::MAX as usize / 16;
        assert!(index_fits(tiles, UNIFIED_FLAG as usize - 1, b));
        assert!(!index_fits(tiles + 1, 0, b));
        assert!(!index_fits(0, UNIFIED_FLAG as usize, b));
    }
}
