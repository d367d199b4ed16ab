//! The compressed matrix of docs/METHOD.md §1: a block-row index of the non-pruned blocks
//! (BSR-like), the block-state map, dense block values, unified magnitudes and sign bits.
//! This is what the micro-structured GEMM consumes and what the file format stores.

use crate::block::{BlockGrid, BlockShape, BlockState, GemmView, storage_bits};
use crate::error::{Error, Result};

/// Marks an entry of [`CompressedMatrix::entries`] as unified (else dense).
pub const UNIFIED_FLAG: u32 = 1 << 31;

/// A weight matrix in micro-structured form.
///
/// Non-pruned blocks are listed block row by block row (`row_ptr`), each as an entry
/// `(block column, payload)`: a dense block's payload is the offset of its `br·bc` values
/// in `values` (edge blocks are stored as full tiles, zero outside the matrix, so kernels
/// need no edge cases); a unified block's payload is `UNIFIED_FLAG | u`, `u` indexing
/// `magnitudes` and the `words_per_block` sign words at `u·words_per_block` in `signs`
/// (bit `r·bc + c` set when weight `(r, c)` of the tile is negative: the full-tile
/// numbering the projection kernels, the file and the GEMM all use).
///
/// The fields are private: [`new`](Self::new) is the one way to make a matrix and checks
/// every invariant the GEMM and [`to_dense`](Self::to_dense) rely on, so a value of this
/// type is always consistent.
#[derive(Clone, Debug, PartialEq)]
pub struct CompressedMatrix {
    view: GemmView,
    block: BlockShape,
    states: Vec<BlockState>,
    row_ptr: Vec<u32>,
    entries: Vec<[u32; 2]>,
    values: Vec<f32>,
    magnitudes: Vec<f32>,
    signs: Vec<u32>,
}

/// The block-row index of a state map: `row_ptr` and the `(block column, payload)`
/// entries, payloads numbering dense tiles (`k·br·bc`) and unified blocks (`UNIFIED_FLAG |
/// k`) in block order. The only index [`CompressedMatrix::new`] accepts.
pub fn block_index(grid: &BlockGrid, states: &[BlockState]) -> (Vec<u32>, Vec<[u32; 2]>) {
    let cols = grid.block_cols();
    let tile = grid.block.len() as u32;
    let mut row_ptr = Vec::with_capacity(grid.block_rows() + 1);
    let mut entries = Vec::new();
    let (mut dense, mut unified) = (0u32, 0u32);
    row_ptr.push(0);
    for r in 0..grid.block_rows() {
        for c in 0..cols {
            match states.get(r * cols + c) {
                Some(BlockState::Dense) => {
                    entries.push([c as u32, dense * tile]);
                    dense += 1;
                }
                Some(BlockState::Unified) => {
                    entries.push([c as u32, UNIFIED_FLAG | unified]);
                    unified += 1;
                }
                Some(BlockState::Pruned) | None => {}
            }
        }
        row_ptr.push(entries.len() as u32);
    }
    (row_ptr, entries)
}

impl CompressedMatrix {
    /// A compressed matrix from its parts, or which invariant they break: `states` one per
    /// block of `view` in `block`s; `row_ptr` `block_rows + 1` non-decreasing offsets from 0
    /// to `entries.len()`; per block row, entries with block columns in range and
    /// increasing, one per non-pruned block, of the kind its state says; payloads numbering
    /// dense tiles and unified blocks in block order (see [`block_index`]); `values` the
    /// dense tiles, finite and zero outside the matrix; `magnitudes` one finite value >= +0
    /// per unified block; `signs` `words_per_block` words per unified block, with no bit
    /// set outside the block's weights (tile padding and bits past `br·bc`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        view: GemmView,
        block: BlockShape,
        states: Vec<BlockState>,
        row_ptr: Vec<u32>,
        entries: Vec<[u32; 2]>,
        values: Vec<f32>,
        magnitudes: Vec<f32>,
        signs: Vec<u32>,
    ) -> std::result::Result<Self, String> {
        let m = Self {
            view,
            block,
            states,
            row_ptr,
            entries,
            values,
            magnitudes,
            signs,
        };
        m.check()?;
        Ok(m)
    }

    fn check(&self) -> std::result::Result<(), String> {
        let grid = self.grid();
        let (brs, bcs) = (grid.block_rows(), grid.block_cols());
        if self.states.len() != grid.num_blocks() {
            return Err(format!(
                "{} block states for the {} blocks of a {}x{} matrix in {} blocks",
                self.states.len(),
                grid.num_blocks(),
                self.view.rows,
                self.view.cols,
                self.block
            ));
        }
        self.check_index(brs, bcs)?;
        let [d, u, _] = self.counts();
        let (tile, wpb) = (self.block.len(), self.words_per_block());
        for (what, got, want) in [
            ("tile values", self.values.len(), d * tile),
            ("magnitudes", self.magnitudes.len(), u),
            ("sign words", self.signs.len(), u * wpb),
        ] {
            if got != want {
                return Err(format!(
                    "{got} {what} where the state map ({d} dense, {u} unified blocks) needs {want}"
                ));
            }
        }
        if let Some(i) = self.values.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "tile value {} at index {i} is not finite",
                self.values[i]
            ));
        }
        if let Some(k) =
            (self.magnitudes.iter()).position(|a| !a.is_finite() || a.is_sign_negative())
        {
            return Err(format!(
                "magnitude {:?} of unified block {k} is not a finite value >= +0",
                self.magnitudes[k]
            ));
        }
        self.check_padding()
    }

    /// `row_ptr` and `entries` are exactly [`block_index`] of the states.
    fn check_index(&self, brs: usize, bcs: usize) -> std::result::Result<(), String> {
        let rp = &self.row_ptr;
        if rp.len() != brs + 1 {
            return Err(format!(
                "row_ptr has {} offsets for {brs} block rows",
                rp.len()
            ));
        }
        if rp[0] != 0
            || rp[brs] as usize != self.entries.len()
            || rp.windows(2).any(|p| p[0] > p[1])
        {
            return Err(format!(
                "row_ptr {:?}..{:?} is not a non-decreasing index from 0 to the {} entries",
                rp[0],
                rp[brs],
                self.entries.len()
            ));
        }
        let tile = self.block.len() as u64;
        let (mut dense, mut unified) = (0u64, 0u64);
        // Columns of block row `r` without an entry must hold pruned blocks.
        let no_entry_needed = |r: usize, cols: std::ops::Range<usize>| match cols
            .into_iter()
            .find(|&c| self.states[r * bcs + c] != BlockState::Pruned)
        {
            Some(c) => Err(format!(
                "block row {r}: the {:?} block in column {c} has no entry",
                self.states[r * bcs + c]
            )),
            None => Ok(()),
        };
        for r in 0..brs {
            let row = &self.entries[rp[r] as usize..rp[r + 1] as usize];
            let mut next_col = 0usize;
            for (e, &[col, payload]) in row.iter().enumerate() {
                let at = format!("entry {e} of block row {r}");
                let col = col as usize;
                if col >= bcs {
                    return Err(format!("{at}: block column {col} of {bcs}"));
                }
                if col < next_col {
                    return Err(format!(
                        "{at}: block column {col} does not follow the previous entry's"
                    ));
                }
                no_entry_needed(r, next_col..col)?;
                next_col = col + 1;
                let state = self.states[r * bcs + col];
                let (kind, want) = if payload & UNIFIED_FLAG == 0 {
                    dense += 1;
                    (BlockState::Dense, (dense - 1) * tile)
                } else {
                    unified += 1;
                    (BlockState::Unified, unified - 1)
                };
                if state != kind {
                    return Err(format!("{at}: a {kind:?} entry for a {state:?} block"));
                }
                let got = u64::from(payload & !UNIFIED_FLAG);
                if got != want {
                    return Err(format!(
                        "{at}: payload {got} where {kind:?} blocks in block order give {want}"
                    ));
                }
            }
            no_entry_needed(r, next_col..bcs)?;
        }
        Ok(())
    }

    /// Nothing outside a block's real weights: tile padding zero, no sign bit set there.
    fn check_padding(&self) -> std::result::Result<(), String> {
        let grid = self.grid();
        let (tile, bc, wpb) = (self.block.len(), self.block.cols, self.words_per_block());
        let (mut di, mut ui) = (0, 0);
        for (b, s) in self.states.iter().enumerate() {
            let ext = grid.extent(b);
            let outside = (0..tile).filter(|p| p / bc >= ext.rows || p % bc >= ext.cols);
            match s {
                BlockState::Dense => {
                    let t = &self.values[di * tile..(di + 1) * tile];
                    if let Some(p) = outside
                        .clone()
                        .find(|&p| t[p] != 0.0 || t[p].is_sign_negative())
                    {
                        return Err(format!(
                            "dense block {b} holds {} at tile position {p}, outside its {}x{} weights",
                            t[p], ext.rows, ext.cols
                        ));
                    }
                    di += 1;
                }
                BlockState::Unified => {
                    let w = &self.signs[ui * wpb..(ui + 1) * wpb];
                    let set = |p: usize| w[p / 32] >> (p % 32) & 1 == 1;
                    if let Some(p) = outside.chain(tile..wpb * 32).find(|&p| set(p)) {
                        return Err(format!(
                            "unified block {b} has sign bit {p} set, outside its {}x{} weights",
                            ext.rows, ext.cols
                        ));
                    }
                    ui += 1;
                }
                BlockState::Pruned => {}
            }
        }
        Ok(())
    }

    pub fn view(&self) -> GemmView {
        self.view
    }

    pub fn block(&self) -> BlockShape {
        self.block
    }

    /// State of every block, row-major over the block grid.
    pub fn states(&self) -> &[BlockState] {
        &self.states
    }

    /// `block_rows + 1` offsets into [`entries`](Self::entries).
    pub fn row_ptr(&self) -> &[u32] {
        &self.row_ptr
    }

    /// `(block column, payload)` of each non-pruned block.
    pub fn entries(&self) -> &[[u32; 2]] {
        &self.entries
    }

    /// Dense tiles, `br·bc` values each.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// One shared magnitude per unified block.
    pub fn magnitudes(&self) -> &[f32] {
        &self.magnitudes
    }

    /// [`words_per_block`](Self::words_per_block) words per unified block.
    pub fn signs(&self) -> &[u32] {
        &self.signs
    }

    pub fn grid(&self) -> BlockGrid {
        BlockGrid::new(self.view, self.block)
    }

    /// Sign words per unified block: `ceil(br·bc / 32)`.
    pub fn words_per_block(&self) -> usize {
        self.block.len().div_ceil(32)
    }

    /// Builds the compressed form of `dense` (row-major, already projected) given each
    /// block's state. Unified blocks take their magnitude as the mean |w| of the block and
    /// their signs from `dense`; a unified block whose weights do not share one magnitude,
    /// or a pruned block that is not all zero, is an error (it would not round-trip).
    pub fn from_dense(
        view: GemmView,
        block: BlockShape,
        dense: &[f32],
        states: &[BlockState],
    ) -> Result<Self> {
        let grid = BlockGrid::new(view, block);
        let bad = |why: String| Error::Shape {
            layer: "<compressed>".into(),
            why,
        };
        if dense.len() != view.len() {
            return Err(bad(format!(
                "{} values for a {}x{} matrix",
                dense.len(),
                view.rows,
                view.cols
            )));
        }
        if states.len() != grid.num_blocks() {
            return Err(bad(format!(
                "{} states for {} blocks",
                states.len(),
                grid.num_blocks()
            )));
        }
        let wpb = block.len().div_ceil(32);
        let (mut values, mut magnitudes, mut signs) = (Vec::new(), Vec::new(), Vec::new());
        for (b, state) in states.iter().enumerate() {
            let ext = grid.extent(b);
            let at = |r: usize, c: usize| dense[(ext.row0 + r) * view.cols + ext.col0 + c];
            match state {
                BlockState::Pruned => {
                    if let Some(i) = ext.indices(view.cols).find(|&i| dense[i] != 0.0) {
                        return Err(bad(format!(
                            "pruned block {b} holds {} at index {i}",
                            dense[i]
                        )));
                    }
                }
                BlockState::Dense => values.extend(grid.tile(dense, b)),
                BlockState::Unified => {
                    let a = at(0, 0).abs();
                    let mut words = vec![0u32; wpb];
                    for r in 0..ext.rows {
                        for c in 0..ext.cols {
                            let v = at(r, c);
                            if v.abs() != a {
                                return Err(bad(format!(
                                    "unified block {b} mixes magnitudes {a} and {}",
                                    v.abs()
                                )));
                            }
                            if v.is_sign_negative() && v != 0.0 {
                                let bit = r * block.cols + c;
                                words[bit / 32] |= 1 << (bit % 32);
                            }
                        }
                    }
                    magnitudes.push(a);
                    signs.extend(words);
                }
            }
        }
        let (row_ptr, entries) = block_index(&grid, states);
        Self::new(
            view,
            block,
            states.to_vec(),
            row_ptr,
            entries,
            values,
            magnitudes,
            signs,
        )
        .map_err(bad)
    }

    /// The dense matrix back (row-major). Exact: `from_dense(to_dense())` round-trips.
    pub fn to_dense(&self) -> Vec<f32> {
        let grid = self.grid();
        let bc = self.block.cols;
        let wpb = self.words_per_block();
        let mut out = vec![0.0f32; self.view.len()];
        for row in 0..grid.block_rows() {
            for e in self.row_ptr[row] as usize..self.row_ptr[row + 1] as usize {
                let [col, payload] = self.entries[e];
                let ext = grid.extent(row * grid.block_cols() + col as usize);
                for r in 0..ext.rows {
                    for c in 0..ext.cols {
                        let i = (ext.row0 + r) * self.view.cols + ext.col0 + c;
                        out[i] = if payload & UNIFIED_FLAG == 0 {
                            self.values[payload as usize + r * bc + c]
                        } else {
                            let u = (payload & !UNIFIED_FLAG) as usize;
                            let bit = r * bc + c;
                            let neg = self.signs[u * wpb + bit / 32] >> (bit % 32) & 1 == 1;
                            let a = self.magnitudes[u];
                            if neg { -a } else { a }
                        };
                    }
                }
            }
        }
        out
    }

    /// Storage in bits as docs/METHOD.md §1 counts it.
    pub fn bits(&self) -> u64 {
        storage_bits(&self.grid(), &self.states)
    }

    /// Dense f32 bits over [`bits`](Self::bits).
    pub fn compression_ratio(&self) -> f64 {
        32.0 * self.view.len() as f64 / self.bits() as f64
    }

    /// Block counts `[dense, unified, pruned]`.
    pub fn counts(&self) -> [usize; 3] {
        let mut c = [0; 3];
        self.states.iter().for_each(|s| c[*s as usize] += 1);
        c
    }
}

/// A 5×6 matrix in 4×4 blocks with every state and ragged edges, for tests here and in
/// the GEMM reference: (0,0) unified, (0,1) dense 4×2 edge, (1,0) pruned 1×4, (1,1)
/// unified 1×2. Returns the compressed form and its dense matrix.
#[cfg(test)]
pub(crate) fn ragged_example() -> (CompressedMatrix, Vec<f32>) {
    let view = GemmView { rows: 5, cols: 6 };
    let block = BlockShape::new(4, 4).expect("4x4");
    let mut d = vec![0.0f32; 30];
    for r in 0..4 {
        for c in 0..4 {
            d[r * 6 + c] = if (r + c) % 2 == 0 { 0.5 } else { -0.5 };
        }
        d[r * 6 + 4] = r as f32;
        d[r * 6 + 5] = -(r as f32) - 1.0;
    }
    d[4 * 6 + 4] = -2.0;
    d[4 * 6 + 5] = 2.0;
    let states = [
        BlockState::Unified,
        BlockState::Dense,
        BlockState::Pruned,
        BlockState::Unified,
    ];
    let m = CompressedMatrix::from_dense(view, block, &d, &states).expect("consistent example");
    (m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_ragged_edges() {
        let (m, d) = ragged_example();
        assert_eq!(m.row_ptr(), [0, 2, 3]);
        assert_eq!(m.magnitudes(), [0.5, 2.0]);
        assert_eq!(m.to_dense(), d);
        assert_eq!(m.counts(), [1, 2, 1]);
    }

    /// The parts of a matrix, to break one invariant at a time.
    #[derive(Clone)]
    struct Parts {
        states: Vec<BlockState>,
        row_ptr: Vec<u32>,
        entries: Vec<[u32; 2]>,
        values: Vec<f32>,
        magnitudes: Vec<f32>,
        signs: Vec<u32>,
    }

    fn parts(m: &CompressedMatrix) -> Parts {
        Parts {
            states: m.states().to_vec(),
            row_ptr: m.row_ptr().to_vec(),
            entries: m.entries().to_vec(),
            values: m.values().to_vec(),
            magnitudes: m.magnitudes().to_vec(),
            signs: m.signs().to_vec(),
        }
    }

    /// One way to break a matrix's parts.
    type Breakage = Box<dyn FnOnce(&mut Parts)>;

    /// What `new` says about the ragged example with `change` applied to its parts.
    fn refused(change: impl FnOnce(&mut Parts)) -> String {
        let (m, _) = ragged_example();
        let mut p = parts(&m);
        change(&mut p);
        CompressedMatrix::new(
            m.view(),
            m.block(),
            p.states,
            p.row_ptr,
            p.entries,
            p.values,
            p.magnitudes,
            p.signs,
        )
        .expect_err("a broken matrix was accepted")
    }

    #[test]
    fn new_accepts_what_from_dense_builds() {
        let (m, _) = ragged_example();
        let p = parts(&m);
        let again = CompressedMatrix::new(
            m.view(),
            m.block(),
            p.states,
            p.row_ptr,
            p.entries,
            p.values,
            p.magnitudes,
            p.signs,
        );
        assert_eq!(again.unwrap(), m);
    }

    #[test]
    fn new_refuses_every_broken_invariant() {
        // The example: block row 0 = [unified (0,0), dense (0,1)], block row 1 = [pruned,
        // unified 1x2 edge block]; entries [[0, U|0], [1, 0], [1, U|1]], row_ptr [0, 2, 3].
        let u = UNIFIED_FLAG;
        let cases: Vec<(&str, Breakage)> = vec![
            (
                "3 block states",
                Box::new(|p| {
                    p.states.pop();
                }),
            ),
            (
                "row_ptr has 2 offsets",
                Box::new(|p| {
                    p.row_ptr.pop();
                }),
            ),
            ("non-decreasing", Box::new(|p| p.row_ptr = vec![0, 3, 2])),
            ("non-decreasing", Box::new(|p| p.row_ptr = vec![1, 2, 3])),
            ("non-decreasing", Box::new(|p| p.row_ptr[2] = 2)),
            ("block column 2 of 2", Box::new(|p| p.entries[1][0] = 2)),
            ("does not follow", Box::new(|p| p.entries[1][0] = 0)),
            (
                "column 1 has no entry",
                Box::new(|p| {
                    p.entries.remove(1);
                    p.row_ptr = vec![0, 1, 2];
                }),
            ),
            (
                "a Dense entry for a Unified block",
                Box::new(|p| p.entries[0][1] = 0),
            ),
            (
                "a Unified entry for a Dense block",
                Box::new(move |p| p.entries[1][1] = u | 1),
            ),
            ("payload 0 where", Box::new(move |p| p.entries[2][1] = u)),
            ("payload 16 where", Box::new(|p| p.entries[1][1] = 16)),
            (
                "block row 1: the Dense block in column 0 has no entry",
                Box::new(|p| p.states[2] = BlockState::Dense),
            ),
            (
                "15 tile values",
                Box::new(|p| {
                    p.values.pop();
                }),
            ),
            (
                "1 magnitudes",
                Box::new(|p| {
                    p.magnitudes.pop();
                }),
            ),
            ("3 sign words", Box::new(|p| p.signs.push(0))),
            ("tile value NaN", Box::new(|p| p.values[0] = f32::NAN)),
            ("inf", Box::new(|p| p.magnitudes[1] = f32::INFINITY)),
            ("-0.0", Box::new(|p| p.magnitudes[0] = -0.0)),
            // The dense 4x2 edge block: tile columns 2 and 3 lie outside the matrix.
            (
                "dense block 1 holds 7 at tile position 2",
                Box::new(|p| p.values[2] = 7.0),
            ),
            (
                "dense block 1 holds -0 at tile position 15",
                Box::new(|p| p.values[15] = -0.0),
            ),
            // The unified 1x2 edge block: only bits 0 and 1 are weights.
            (
                "unified block 3 has sign bit 4 set",
                Box::new(|p| p.signs[1] |= 1 << 4),
            ),
            (
                "unified block 3 has sign bit 2 set",
                Box::new(|p| p.signs[1] |= 1 << 2),
            ),
        ];
        for (want, change) in cases {
            let e = refused(change);
            assert!(e.contains(want), "expected {want:?} in {e:?}");
        }
    }

    #[test]
    fn sign_bits_past_the_tile_are_refused() {
        // 3x3 blocks: 9 bits of one word are weights, bits 9..32 are padding.
        let view = GemmView { rows: 3, cols: 3 };
        let block = BlockShape::new(3, 3).unwrap();
        let states = vec![BlockState::Unified];
        let (row_ptr, entries) = block_index(&BlockGrid::new(view, block), &states);
        let make = |word: u32| {
            CompressedMatrix::new(
                view,
                block,
                states.clone(),
                row_ptr.clone(),
                entries.clone(),
                vec![],
                vec![1.0],
                vec![word],
            )
        };
        assert!(make(0b1_0000_0001).is_ok());
        let e = make(1 << 9).unwrap_err();
        assert!(e.contains("sign bit 9 set"), "{e}");
    }

    #[test]
    fn inconsistent_states_are_errors() {
        let view = GemmView { rows: 2, cols: 2 };
        let block = BlockShape::new(2, 2).unwrap();
        let e =
            CompressedMatrix::from_dense(view, block, &[1.0, 0.0, 0.0, 0.0], &[BlockState::Pruned]);
        assert!(e.is_err());
        let e = CompressedMatrix::from_dense(
            view,
            block,
            &[1.0, -2.0, 1.0, 1.0],
            &[BlockState::Unified],
        );
        assert!(e.is_err());
    }
}
