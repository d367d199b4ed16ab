//! The block model of docs/METHOD.md §1: GEMM views of weight tensors and their block grids.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The largest block side anything accepts, the one limit every entry point enforces
/// (through [`BlockShape::new`], the only way to make a block shape): the sparse GEMM is
/// specialised up to 32×32 blocks, and the projection kernels' per-block loops stay far
/// inside the iteration budget of every driver at this size (see `kernels-tests`).
pub const MAX_BLOCK_SIDE: usize = 32;

/// A block of `rows × cols` weights (the paper's micro-structure unit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawBlockShape")]
pub struct BlockShape {
    pub rows: usize,
    pub cols: usize,
}

/// A block shape as stored, checked by [`BlockShape::new`] on the way in.
#[derive(Deserialize)]
struct RawBlockShape {
    rows: usize,
    cols: usize,
}

impl TryFrom<RawBlockShape> for BlockShape {
    type Error = Error;
    fn try_from(raw: RawBlockShape) -> Result<Self> {
        Self::new(raw.rows, raw.cols)
    }
}

impl BlockShape {
    /// A block shape; both sides must be 1 to [`MAX_BLOCK_SIDE`].
    pub fn new(rows: usize, cols: usize) -> Result<Self> {
        let why = if rows == 0 || cols == 0 {
            "both sides must be at least 1 (e.g. 4x4)".to_string()
        } else if rows > MAX_BLOCK_SIDE || cols > MAX_BLOCK_SIDE {
            format!("at most {MAX_BLOCK_SIDE} per side (the largest block the kernels run)")
        } else {
            return Ok(Self { rows, cols });
        };
        Err(Error::BlockShape {
            shape: format!("{rows}x{cols}"),
            why,
        })
    }

    /// Number of weights in a full (non-edge) block.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    /// Always false: a block has at least one weight.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl Default for BlockShape {
    fn default() -> Self {
        Self { rows: 4, cols: 4 }
    }
}

impl fmt::Display for BlockShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.rows, self.cols)
    }
}

impl FromStr for BlockShape {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::BlockShape {
            shape: s.to_string(),
            why: "expected ROWSxCOLS (e.g. 4x4)".into(),
        };
        let (r, c) = s.trim().split_once(['x', 'X', '×']).ok_or_else(bad)?;
        let r = r.trim().parse().map_err(|_| bad())?;
        let c = c.trim().parse().map_err(|_| bad())?;
        Self::new(r, c)
    }
}

/// How a conv2d weight `[Cout, Cin, kh, kw]` is flattened into GEMM columns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConvLayout {
    /// PyTorch's own flatten order: column = `(ci·kh + y)·kw + x`.
    #[default]
    ChannelMajor,
    /// NHWC im2col order: column = `(y·kw + x)·Cin + ci`.
    PositionMajor,
}

/// The rows × cols matrix a weight tensor is seen as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GemmView {
    pub rows: usize,
    pub cols: usize,
}

impl GemmView {
    /// The GEMM view of a tensor shape: 2-D is `[out, in]`, 4-D is a conv `[Cout, Cin, kh, kw]`.
    pub fn of_shape(layer: &str, shape: &[usize]) -> Result<Self> {
        let view = match shape {
            [out, inp] => Self {
                rows: *out,
                cols: *inp,
            },
            [cout, cin, kh, kw] => Self {
                rows: *cout,
                cols: cin * kh * kw,
            },
            _ => {
                return Err(Error::Shape {
                    layer: layer.into(),
                    why: format!(
                        "shape {shape:?} has no GEMM view (expected [out, in] or [Cout, Cin, kh, kw])"
                    ),
                });
            }
        };
        if view.rows == 0 || view.cols == 0 {
            return Err(Error::Shape {
                layer: layer.into(),
                why: format!("shape {shape:?} is empty"),
            });
        }
        Ok(view)
    }

    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// For a position-major conv weight, pairs (PyTorch index, GEMM index) of every weight.
fn position_major_pairs(shape: &[usize]) -> Option<impl Iterator<Item = (usize, usize)>> {
    let &[cout, cin, kh, kw] = shape else {
        return None;
    };
    let khw = kh * kw;
    Some((0..cout).flat_map(move |o| {
        (0..cin).flat_map(move |c| {
            (0..khw).map(move |p| ((o * cin + c) * khw + p, (o * khw + p) * cin + c))
        })
    }))
}

/// Permutes a conv weight from PyTorch order into the GEMM view of `layout` (a copy for 2-D).
pub fn to_gemm(data: &[f32], shape: &[usize], layout: ConvLayout) -> Vec<f32> {
    match (layout, position_major_pairs(shape)) {
        (ConvLayout::PositionMajor, Some(pairs)) => {
            let mut out = vec![0.0; data.len()];
            pairs.for_each(|(torch, gemm)| out[gemm] = data[torch]);
            out
        }
        _ => data.to_vec(),
    }
}

/// The inverse of [`to_gemm`]: back to PyTorch order.
pub fn from_gemm(data: &[f32], shape: &[usize], layout: ConvLayout) -> Vec<f32> {
    match (layout, position_major_pairs(shape)) {
        (ConvLayout::PositionMajor, Some(pairs)) => {
            let mut out = vec![0.0; data.len()];
            pairs.for_each(|(torch, gemm)| out[torch] = data[gemm]);
            out
        }
        _ => data.to_vec(),
    }
}

/// One block's place in its matrix: top-left corner and (possibly ragged) extent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockExtent {
    pub row0: usize,
    pub col0: usize,
    pub rows: usize,
    pub cols: usize,
}

impl BlockExtent {
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Flat row-major indices of the block's weights in a matrix with `cols` columns.
    pub fn indices(&self, matrix_cols: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.rows).flat_map(move |r| {
            let start = (self.row0 + r) * matrix_cols + self.col0;
            start..start + self.cols
        })
    }
}

/// A matrix tiled into blocks, numbered row-major over the block grid.
/// Edge blocks are smaller where the block shape does not divide the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockGrid {
    pub view: GemmView,
    pub block: BlockShape,
}

impl BlockGrid {
    pub fn new(view: GemmView, block: BlockShape) -> Self {
        Self { view, block }
    }

    pub fn block_rows(&self) -> usize {
        self.view.rows.div_ceil(self.block.rows)
    }

    pub fn block_cols(&self) -> usize {
        self.view.cols.div_ceil(self.block.cols)
    }

    pub fn num_blocks(&self) -> usize {
        self.block_rows() * self.block_cols()
    }

    /// Where block `b` (row-major block number) lies.
    pub fn extent(&self, b: usize) -> BlockExtent {
        let (br, bc) = (b / self.block_cols(), b % self.block_cols());
        let row0 = br * self.block.rows;
        let col0 = bc * self.block.cols;
        BlockExtent {
            row0,
            col0,
            rows: self.block.rows.min(self.view.rows - row0),
            cols: self.block.cols.min(self.view.cols - col0),
        }
    }

    /// Block `b` of the row-major matrix `data` as a full `br × bc` tile, row-major, zero
    /// where the block's (ragged) extent ends: the form dense blocks are stored in.
    pub fn tile<'a>(&self, data: &'a [f32], b: usize) -> impl Iterator<Item = f32> + 'a {
        let ext = self.extent(b);
        let (bc, cols) = (self.block.cols, self.view.cols);
        (0..self.block.len()).map(move |p| {
            let (r, c) = (p / bc, p % bc);
            if r < ext.rows && c < ext.cols {
                data[(ext.row0 + r) * cols + ext.col0 + c]
            } else {
                0.0
            }
        })
    }

    /// The block holding matrix element `(row, col)`.
    pub fn block_of(&self, row: usize, col: usize) -> usize {
        (row / self.block.rows) * self.block_cols() + col / self.block.cols
    }
}

/// Prune and unify ratios of docs/METHOD.md §2 (fractions of a layer's blocks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ratios {
    pub prune: f64,
    pub unify: f64,
}

impl Ratios {
    /// Ratios in [0, 1] whose sum is at most 1; `scope` names where they apply in errors.
    pub fn new(prune: f64, unify: f64, scope: &str) -> Result<Self> {
        let err = |why| Error::Ratios {
            scope: scope.to_string(),
            prune,
            unify,
            why,
        };
        if !(0.0..=1.0).contains(&prune) {
            return Err(err("prune must lie in [0, 1]"));
        }
        if !(0.0..=1.0).contains(&unify) {
            return Err(err("unify must lie in [0, 1]"));
        }
        if prune + unify > 1.0 + 1e-9 {
            return Err(err("prune + unify must not exceed 1"));
        }
        Ok(Self { prune, unify })
    }

    /// Block counts `(pruned, unified)` for `n` blocks: `⌈r·n⌉` each, with a slack of
    /// max(1e-9, 1e-12·r·n) so that decimal ratios like 0.3·10 do not round up past their
    /// exact value (the product's rounding error is ~1e-16 relative), and the unified count
    /// clamped so the two never exceed `n`.
    pub fn counts(&self, n: usize) -> (usize, usize) {
        let count = |r: f64| {
            let x = r * n as f64;
            ((x - 1e-9f64.max(x * 1e-12)).ceil().max(0.0) as usize).min(n)
        };
        let p = count(self.prune);
        (p, count(self.unify).min(n - p))
    }
}

/// One weight matrix to project: its name, GEMM view and block shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerSpec {
    pub name: String,
    pub view: GemmView,
    pub block: BlockShape,
}

impl LayerSpec {
    /// A layer from a tensor shape (2-D linear or 4-D conv).
    pub fn new(name: impl Into<String>, shape: &[usize], block: BlockShape) -> Result<Self> {
        let name = name.into();
        let view = GemmView::of_shape(&name, shape)?;
        Ok(Self { name, view, block })
    }

    pub fn grid(&self) -> BlockGrid {
        BlockGrid::new(self.view, self.block)
    }
}

/// The three states of docs/METHOD.md §1, with their 2-bit codes in the block-state map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum BlockState {
    Dense = 0,
    Unified = 1,
    Pruned = 2,
}

impl BlockState {
    /// Decodes a 2-bit code; 3 is not a state.
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            0 => Some(Self::Dense),
            1 => Some(Self::Unified),
            2 => Some(Self::Pruned),
            _ => None,
        }
    }
}

/// The block-state map of docs/METHOD.md §1: 2 bits per block, block `b` at bits
/// `2·(b % 4)` of byte `b / 4` (LSB first). Read as little-endian `u32` words these are the
/// same bits, 16 blocks a word, block `b` at bits `2·(b % 16)` of word `b / 16`: the file
/// stores the bytes, the GPU writes the words. Bits past the last block are zero and no
/// block has code 3 (every constructor checks both).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct StateMap {
    bytes: Vec<u8>,
    len: usize,
}

impl StateMap {
    const PER_BYTE: usize = 4;
    const PER_WORD: usize = 16;

    /// Bytes a map of `len` blocks takes.
    pub fn byte_len(len: usize) -> usize {
        len.div_ceil(Self::PER_BYTE)
    }

    /// Words a map of `len` blocks takes.
    pub fn word_len(len: usize) -> usize {
        len.div_ceil(Self::PER_WORD)
    }

    /// The map of these states.
    pub fn from_states(states: &[BlockState]) -> Self {
        let mut bytes = vec![0u8; Self::byte_len(states.len())];
        for (b, s) in states.iter().enumerate() {
            bytes[b / Self::PER_BYTE] |= (*s as u8) << Self::shift(b);
        }
        Self {
            bytes,
            len: states.len(),
        }
    }

    /// The map of `len` blocks packed in `bytes`, which must be exactly
    /// [`byte_len`](Self::byte_len) long, hold no code 3 and have zero padding bits; the
    /// error says which of these fails (and for code 3, at which block).
    pub fn from_bytes(bytes: &[u8], len: usize) -> std::result::Result<Self, String> {
        if bytes.len() != Self::byte_len(len) {
            return Err(format!(
                "{} bytes for a map of {len} blocks, which takes {}",
                bytes.len(),
                Self::byte_len(len)
            ));
        }
        let map = Self {
            bytes: bytes.to_vec(),
            len,
        };
        if let Some(b) = (0..len).find(|&b| map.code(b) == 3) {
            return Err(format!("block {b} has state code 3"));
        }
        let used = len % Self::PER_BYTE;
        if used != 0 && bytes[len / Self::PER_BYTE] >> Self::shift(len) != 0 {
            return Err("padding bits after the last block are not zero".into());
        }
        Ok(map)
    }

    /// The map of `len` blocks packed in `words` (16 blocks a word), which must be exactly
    /// [`word_len`](Self::word_len) long; checked as [`from_bytes`](Self::from_bytes) is,
    /// whole words past the last block's byte included.
    pub fn from_words(words: &[u32], len: usize) -> std::result::Result<Self, String> {
        if words.len() != Self::word_len(len) {
            return Err(format!(
                "{} words for a map of {len} blocks, which takes {}",
                words.len(),
                Self::word_len(len)
            ));
        }
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let (used, spare) = bytes.split_at(Self::byte_len(len));
        if spare.iter().any(|&b| b != 0) {
            return Err("padding bits after the last block are not zero".into());
        }
        Self::from_bytes(used, len)
    }

    fn shift(b: usize) -> usize {
        2 * (b % Self::PER_BYTE)
    }

    /// The code (0-3) of block `b` in packed words that may not form a valid map: for
    /// checks that report what a kernel wrote, code 3 included.
    pub fn raw_code(words: &[u32], b: usize) -> u32 {
        (words[b / Self::PER_WORD] >> (2 * (b % Self::PER_WORD))) & 3
    }

    fn code(&self, b: usize) -> u8 {
        (self.bytes[b / Self::PER_BYTE] >> Self::shift(b)) & 3
    }

    /// State of block `b`; panics past [`len`](Self::len), as slice indexing does.
    pub fn get(&self, b: usize) -> BlockState {
        assert!(b < self.len, "block {b} of a map of {} blocks", self.len);
        BlockState::from_code(self.code(b).into()).expect("constructors refuse code 3")
    }

    /// The states in block order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = BlockState> + '_ {
        (0..self.len).map(|b| self.get(b))
    }

    /// The states as a vector.
    pub fn to_vec(&self) -> Vec<BlockState> {
        self.iter().collect()
    }

    /// The packed bytes, 4 blocks a byte.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The packed words, 16 blocks a word (the bytes, zero-padded to whole words).
    pub fn words(&self) -> Vec<u32> {
        let mut words = vec![0u32; Self::word_len(self.len)];
        for (i, b) in self.bytes.iter().enumerate() {
            words[i / 4] |= u32::from(*b) << (8 * (i % 4));
        }
        words
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Block counts `[dense, unified, pruned]`.
    pub fn counts(&self) -> [usize; 3] {
        let mut c = [0; 3];
        self.iter().for_each(|s| c[s as usize] += 1);
        c
    }
}

/// Per-layer ratios, or one pair ranked across the whole network (docs/METHOD.md §2, global mode).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SelectionMode {
    PerLayer(Vec<Ratios>),
    Global(Ratios),
}

impl SelectionMode {
    /// Checks the mode against a layer list (one ratio pair per layer in per-layer mode).
    pub fn check(&self, layers: &[LayerSpec]) -> Result<()> {
        if let SelectionMode::PerLayer(r) = self
            && r.len() != layers.len()
        {
            return Err(Error::Shape {
                layer: "<network>".into(),
                why: format!("{} ratio pairs given for {} layers", r.len(), layers.len()),
            });
        }
        Ok(())
    }
}

/// Storage of a layer in bits as docs/METHOD.md §1 counts it: 32 per dense weight, one sign bit
/// per unified weight plus one f32 per unified block, nothing for pruned blocks, and the
/// 2-bit state map.
pub fn storage_bits(grid: &BlockGrid, states: &[BlockState]) -> u64 {
    let payload: u64 = states
        .iter()
        .enumerate()
        .map(|(b, s)| {
            let n = grid.extent(b).len() as u64;
            match s {
                BlockState::Dense => 32 * n,
                BlockState::Unified => n + 32,
                BlockState::Pruned => 0,
            }
        })
        .sum();
    payload + 2 * states.len() as u64
}

/// Compression ratio: dense f32 bits over [`storage_bits`].
pub fn compression_ratio(grid: &BlockGrid, states: &[BlockState]) -> f64 {
    32.0 * grid.view.len() as f64 / storage_bits(grid, states) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_counts_every_bit() {
        let g = BlockGrid::new(
            GemmView { rows: 4, cols: 6 },
            BlockShape::new(4, 4).unwrap(),
        );
        // One full block (16 weights) and one ragged 4x2 edge block (8 weights).
        let bits = storage_bits(&g, &[BlockState::Unified, BlockState::Dense]);
        assert_eq!(bits, (16 + 32) + 32 * 8 + 2 * 2);
        let all_pruned = storage_bits(&g, &[BlockState::Pruned, BlockState::Pruned]);
        assert_eq!(all_pruned, 4);
        assert_eq!(
            compression_ratio(&g, &[BlockState::Pruned; 2]),
            32.0 * 24.0 / 4.0
        );
    }

    #[test]
    fn state_maps_pack_two_bits_per_block_lsb_first() {
        use BlockState::{Dense as D, Pruned as P, Unified as U};
        let states = [U, P, D, U, P, U];
        let m = StateMap::from_states(&states);
        // Block b at bits 2·(b % 4) of byte b / 4.
        assert_eq!(m.as_bytes(), [0b01_00_10_01, 0b01_10]);
        // The same bits as one little-endian word, 16 blocks a word.
        assert_eq!(m.words(), [0b01_10_01_00_10_01]);
        assert_eq!(m.len(), 6);
        assert_eq!(m.to_vec(), states);
        assert_eq!(m.get(1), P);
        assert_eq!(m.counts(), [1, 3, 2]);
        assert_eq!(StateMap::from_bytes(m.as_bytes(), 6).unwrap(), m);
        assert_eq!(StateMap::from_words(&m.words(), 6).unwrap(), m);
        let many: Vec<BlockState> = (0..37).map(|i| [D, U, P][i % 3]).collect();
        let m = StateMap::from_states(&many);
        assert_eq!(StateMap::from_words(&m.words(), 37).unwrap().to_vec(), many);
    }

    #[test]
    fn bad_state_maps_are_refused() {
        let e = StateMap::from_bytes(&[0b11 << 4], 3).unwrap_err();
        assert!(e.contains("block 2 has state code 3"), "{e}");
        let e = StateMap::from_bytes(&[0b01 << 6], 3).unwrap_err();
        assert!(e.contains("padding bits"), "{e}");
        let e = StateMap::from_bytes(&[0, 0], 3).unwrap_err();
        assert!(e.contains("2 bytes") && e.contains("takes 1"), "{e}");
        // Words: padding past the last block's byte counts too.
        let e = StateMap::from_words(&[1 << 16], 5).unwrap_err();
        assert!(e.contains("padding bits"), "{e}");
        let e = StateMap::from_words(&[0b11 << 30], 16).unwrap_err();
        assert!(e.contains("block 15 has state code 3"), "{e}");
        let e = StateMap::from_words(&[0, 0], 16).unwrap_err();
        assert!(e.contains("2 words"), "{e}");
        assert!(StateMap::from_words(&[], 0).unwrap().is_empty());
    }

    #[test]
    fn tiles_are_zero_padded_at_ragged_edges() {
        let g = BlockGrid::new(
            GemmView { rows: 3, cols: 3 },
            BlockShape::new(2, 2).unwrap(),
        );
        let d: Vec<f32> = (1..=9).map(|i| i as f32).collect();
        assert_eq!(g.tile(&d, 0).collect::<Vec<_>>(), [1.0, 2.0, 4.0, 5.0]);
        assert_eq!(g.tile(&d, 1).collect::<Vec<_>>(), [3.0, 0.0, 6.0, 0.0]);
        assert_eq!(g.tile(&d, 3).collect::<Vec<_>>(), [9.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn parse_block_shapes() {
        assert_eq!(
            "4x4".parse::<BlockShape>().unwrap(),
            BlockShape { rows: 4, cols: 4 }
        );
        assert_eq!(
            "1X8".parse::<BlockShape>().unwrap(),
            BlockShape { rows: 1, cols: 8 }
        );
        for bad in ["0x4", "4x0", "4", "ax4", "", "4x4x4"] {
            assert!(bad.parse::<BlockShape>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn ratios_are_checked() {
        assert!(Ratios::new(0.5, 0.5, "l").is_ok());
        assert!(Ratios::new(0.6, 0.5, "l").is_err());
        assert!(Ratios::new(-0.1, 0.0, "l").is_err());
        assert!(Ratios::new(0.0, 1.1, "l").is_err());
        assert!(Ratios::new(f64::NAN, 0.0, "l").is_err());
    }

    #[test]
    fn counts_are_ceilings_and_fit() {
        let r = Ratios::new(0.3, 0.7, "l").unwrap();
        assert_eq!(r.counts(10), (3, 7));
        let r = Ratios::new(0.5, 0.5, "l").unwrap();
        assert_eq!(r.counts(3), (2, 1));
        assert_eq!(Ratios::new(0.01, 0.0, "l").unwrap().counts(7), (1, 0));
    }

    #[test]
    fn ragged_edges() {
        let g = BlockGrid::new(
            GemmView { rows: 5, cols: 7 },
            BlockShape::new(4, 4).unwrap(),
        );
        assert_eq!(g.num_blocks(), 4);
        assert_eq!(
            g.extent(3),
            BlockExtent {
                row0: 4,
                col0: 4,
                rows: 1,
                cols: 3
            }
        );
        let total: usize = (0..4).map(|b| g.extent(b).len()).sum();
        assert_eq!(total, 35);
        assert_eq!(g.block_of(4, 6), 3);
    }

    #[test]
    fn conv_layouts_round_trip() {
        let shape = [3, 2, 2, 3];
        let data: Vec<f32> = (0..36).map(|i| i as f32).collect();
        let g = to_gemm(&data, &shape, ConvLayout::PositionMajor);
        // Output 0, position (y=0,x=1), channel 1 is PyTorch index (0*2+1)*6+1 = 7.
        assert_eq!(g[2 + 1], 7.0);
        assert_eq!(from_gemm(&g, &shape, ConvLayout::PositionMajor), data);
        assert_eq!(to_gemm(&data, &shape, ConvLayout::ChannelMajor), data);
    }
}
