//! Packing a network's layers into GPU buffers: chunks no larger than one storage binding,
//! pieces aligned to the adapter's offset alignment, and a padded network-wide block numbering.

use crate::block::LayerSpec;
use crate::error::{Error, Result};
use std::ops::Range;

/// What the adapter allows, as plain numbers (`crate::gpu::packing` reads them from a
/// device): the largest storage binding and the offset alignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackLimits {
    /// Largest storage binding (and buffer) in bytes.
    pub max_binding_bytes: u64,
    /// `min_storage_buffer_offset_alignment`, in bytes.
    pub offset_alignment: u64,
}

impl PackLimits {
    /// Offsets are aligned to this many f32 elements (at least 4, for vec4 access).
    pub fn align_elems(&self) -> usize {
        ((self.offset_alignment / 4) as usize).max(4)
    }

    /// Elements one chunk may hold.
    pub fn chunk_elems(&self) -> usize {
        let a = self.align_elems();
        ((self.max_binding_bytes / 4) as usize).min(u32::MAX as usize) / a * a
    }
}

/// Where a layer's blocks sit in the network-wide numbering and its sign words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// First block's index in the padded network numbering (a multiple of the layout's
    /// block pad).
    pub block_start: usize,
    pub num_blocks: usize,
    /// `num_blocks` rounded up to the block pad.
    pub padded_blocks: usize,
    /// First sign word of the layer; each block owns `words_per_block` words.
    pub sign_offset: usize,
    pub words_per_block: usize,
}

/// A run of whole block rows of one layer stored contiguously in one chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    pub layer: usize,
    pub chunk: usize,
    pub block_rows: Range<usize>,
    /// Element offset of the piece's first weight inside its chunk (aligned).
    pub offset: usize,
    /// Padded block numbers whose threads this piece serves (includes the layer's padding
    /// when it is the layer's last piece).
    pub blocks: Range<usize>,
}

impl Piece {
    /// The piece's weights as a range of the layer's flat row-major data.
    pub fn source(&self, layer: &LayerSpec) -> Range<usize> {
        let br = layer.block.rows;
        let rows = layer.view.rows;
        let r0 = self.block_rows.start * br;
        let r1 = (self.block_rows.end * br).min(rows);
        r0 * layer.view.cols..r1 * layer.view.cols
    }
}

/// One buffer's worth of weights (no larger than one storage binding).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Elements, a multiple of 4.
    pub len: usize,
    pub pieces: Range<usize>,
}

impl Chunk {
    /// Padded block numbers served by this chunk's threads.
    pub fn blocks(&self, pieces: &[Piece]) -> Range<usize> {
        pieces[self.pieces.start].blocks.start..pieces[self.pieces.end - 1].blocks.end
    }
}

/// A whole network packed for the batched projection.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkLayout {
    pub layers: Vec<LayerSpec>,
    pub placements: Vec<Placement>,
    pub pieces: Vec<Piece>,
    pub chunks: Vec<Chunk>,
    pub limits: PackLimits,
    /// Every layer's blocks are numbered from a multiple of this.
    pub block_pad: usize,
    /// Size of the padded block numbering.
    pub total_blocks: usize,
    pub total_sign_words: usize,
}

impl NetworkLayout {
    /// Packs `layers` in order, each layer's blocks numbered from a multiple of `block_pad`
    /// (the selection kernels' workgroup, which must not straddle two layers). A layer
    /// larger than a chunk is split at block-row boundaries; only a single block row
    /// larger than one binding is refused.
    pub fn new(layers: Vec<LayerSpec>, limits: PackLimits, block_pad: usize) -> Result<Self> {
        if block_pad == 0 {
            return Err(Error::Shape {
                layer: "<network>".into(),
                why: "a block pad of 0 (layers must start at a multiple of at least 1)".into(),
            });
        }
        if layers.is_empty() {
            return Err(Error::Shape {
                layer: "<network>".into(),
                why: "no layers to project".into(),
            });
        }
        let align = limits.align_elems();
        let cap = limits.chunk_elems();
        let mut placements = Vec::with_capacity(layers.len());
        let mut pieces: Vec<Piece> = Vec::new();
        let mut chunks: Vec<Chunk> = Vec::new();
        let (mut block_start, mut sign_offset) = (0usize, 0usize);
        let mut pos = 0usize; // fill of the current chunk (elements)
        for (l, layer) in layers.iter().enumerate() {
            let grid = layer.grid();
            let n = grid.num_blocks();
            let padded = n.div_ceil(block_pad) * block_pad;
            let wpb = layer.block.len().div_ceil(32);
            placements.push(Placement {
                block_start,
                num_blocks: n,
                padded_blocks: padded,
                sign_offset,
                words_per_block: wpb,
            });
            let row_elems = layer.block.rows * layer.view.cols;
            if row_elems > cap {
                return Err(Error::TooLarge(format!(
                    "layer {:?}: one block row ({} x {} weights) exceeds the largest storage binding ({} bytes); use shorter blocks",
                    layer.name, layer.block.rows, layer.view.cols, limits.max_binding_bytes
                )));
            }
            let mut row = 0;
            while row < grid.block_rows() {
                let start = pos.div_ceil(align) * align;
                let room = cap.saturating_sub(start);
                let left_elems = (layer.view.rows - row * layer.block.rows) * layer.view.cols;
                let fit = if left_elems <= room {
                    grid.block_rows() - row
                } else {
                    room / row_elems
                };
                if fit == 0 {
                    Self::close_chunk(&mut chunks, &pieces, pos);
                    pos = 0;
                    continue;
                }
                let end_row = row + fit;
                let last = end_row == grid.block_rows();
                let b0 = block_start + row * grid.block_cols();
                let b1 = if last {
                    block_start + padded
                } else {
                    block_start + end_row * grid.block_cols()
                };
                let piece = Piece {
                    layer: l,
                    chunk: chunks.len(),
                    block_rows: row..end_row,
                    offset: start,
                    blocks: b0..b1,
                };
                pos = start + piece.source(layer).len();
                pieces.push(piece);
                row = end_row;
            }
            block_start += padded;
            sign_offset += n * wpb;
        }
        Self::close_chunk(&mut chunks, &pieces, pos);
        let keys_bytes = block_start as u64 * 4;
        let sign_bytes = sign_offset as u64 * 4;
        if keys_bytes > limits.max_binding_bytes || sign_bytes > limits.max_binding_bytes {
            return Err(Error::TooLarge(format!(
                "{block_start} blocks ({keys_bytes} bytes of keys, {sign_bytes} bytes of sign bits) exceed one storage binding ({} bytes); use larger blocks",
                limits.max_binding_bytes
            )));
        }
        if block_start > u32::MAX as usize / 2 {
            return Err(Error::TooLarge(format!(
                "{block_start} blocks do not fit 32-bit block numbers"
            )));
        }
        Ok(Self {
            layers,
            placements,
            pieces,
            chunks,
            limits,
            block_pad,
            total_blocks: block_start,
            total_sign_words: sign_offset,
        })
    }

    fn close_chunk(chunks: &mut Vec<Chunk>, pieces: &[Piece], pos: usize) {
        let first = chunks.last().map_or(0, |c| c.pieces.end);
        if first < pieces.len() {
            chunks.push(Chunk {
                len: pos.div_ceil(4) * 4,
                pieces: first..pieces.len(),
            });
        }
    }

    /// The pieces of layer `l`, in row order.
    pub fn pieces_of(&self, l: usize) -> impl Iterator<Item = &Piece> {
        self.pieces.iter().filter(move |p| p.layer == l)
    }

    /// Total weights over all layers.
    pub fn num_weights(&self) -> usize {
        self.layers.iter().map(|l| l.view.len()).sum()
    }

    /// Index of a layer by name.
    pub fn layer_index(&self, name: &str) -> Option<usize> {
        self.layers.iter().position(|l| l.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::BlockShape;

    /// Any pad works here; the GPU's own is `crate::gpu::packing::BLOCK_PAD`.
    const BLOCK_PAD: usize = 64;

    fn layer(name: &str, rows: usize, cols: usize, b: usize) -> LayerSpec {
        LayerSpec::new(name, &[rows, cols], BlockShape::new(b, b).unwrap()).unwrap()
    }

    #[test]
    fn small_network_is_one_chunk_with_aligned_pieces() {
        let limits = PackLimits {
            max_binding_bytes: 1 << 20,
            offset_alignment: 256,
        };
        let l = NetworkLayout::new(
            vec![layer("a", 5, 7, 4), layer("b", 3, 3, 2)],
            limits,
            BLOCK_PAD,
        )
        .unwrap();
        assert_eq!(l.chunks.len(), 1);
        assert_eq!(l.pieces[1].offset, 64);
        assert_eq!(l.placements[1].block_start, BLOCK_PAD);
        assert_eq!(l.total_blocks, 2 * BLOCK_PAD);
        assert_eq!(l.chunks[0].blocks(&l.pieces), 0..2 * BLOCK_PAD);
    }

    #[test]
    fn large_layer_splits_at_block_rows() {
        let limits = PackLimits {
            max_binding_bytes: 4096,
            offset_alignment: 256,
        };
        // 100 x 30 weights, 4x4 blocks: a block row is 120 weights, a chunk 1024.
        let l = NetworkLayout::new(vec![layer("big", 100, 30, 4)], limits, BLOCK_PAD).unwrap();
        assert!(l.chunks.len() >= 3);
        let covered: usize = l.pieces.iter().map(|p| p.source(&l.layers[0]).len()).sum();
        assert_eq!(covered, 3000);
        for c in &l.chunks {
            assert!(c.len <= 1024);
        }
        // Thread ranges tile the padded numbering without gaps.
        let mut next = 0;
        for p in &l.pieces {
            assert_eq!(p.blocks.start, next);
            next = p.blocks.end;
        }
        assert_eq!(next, l.total_blocks);
    }

    #[test]
    fn oversized_block_row_is_refused() {
        let limits = PackLimits {
            max_binding_bytes: 1024,
            offset_alignment: 256,
        };
        let e = NetworkLayout::new(vec![layer("wide", 8, 300, 4)], limits, BLOCK_PAD).unwrap_err();
        assert!(e.to_string().contains("wide"), "{e}");
    }
}
