//! The compressed matrix of docs/METHOD.md §1: a block-row index of the non-pruned blocks
//! (BSR-like), the block-state map, dense block values, unified magnitudes and sign bits.
//! This is what the micro-structured GEMM consumes and what the file format stores.

use crate::block::{BlockGrid, BlockShape, BlockState, GemmView, LayerSpec, storage_bits};
use crate::error::{Error, Result};
use crate::gpu::projection::ProjectedLayer;

/// Marks an entry of [`CompressedMatrix::entries`] as unified (else dense).
pub const UNIFIED_FLAG: u32 = 1 << 31;

/// A weight matrix in micro-structured form.
///
/// Non-pruned blocks are listed block row by block row (`row_ptr`), each as an entry
/// `(block column, payload)`: a dense block's payload is the offset of its `br·bc` values
/// in `values` (edge blocks are stored as full tiles, zero outside the matrix, so kernels
/// need no edge cases); a unified block's payload is `UNIFIED_FLAG | u`, `u` indexing
/// `magnitudes` and the `words_per_block` sign words at `u·words_per_block` in `signs`
/// (bit `r·bc + c` set when weight `(r, c)` of the tile is negative).
#[derive(Clone, Debug, PartialEq)]
pub struct CompressedMatrix {
    pub view: GemmView,
    pub block: BlockShape,
    /// State of every block, row-major over the block grid.
    pub states: Vec<BlockState>,
    /// `block_rows + 1` offsets into `entries`.
    pub row_ptr: Vec<u32>,
    /// `(block column, payload)` of each non-pruned block.
    pub entries: Vec<[u32; 2]>,
    /// Dense tiles, `br·bc` values each.
    pub values: Vec<f32>,
    /// One shared magnitude per unified block.
    pub magnitudes: Vec<f32>,
    /// `words_per_block()` words per unified block.
    pub signs: Vec<u32>,
}

impl CompressedMatrix {
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
        let mut m = Self {
            view,
            block,
            states: states.to_vec(),
            row_ptr: vec![0],
            entries: Vec::new(),
            values: Vec::new(),
            magnitudes: Vec::new(),
            signs: Vec::new(),
        };
        for br in 0..grid.block_rows() {
            for bc in 0..grid.block_cols() {
                let b = br * grid.block_cols() + bc;
                let ext = grid.extent(b);
                let tile = |r: usize, c: usize| (ext.row0 + r) * view.cols + ext.col0 + c;
                match states[b] {
                    BlockState::Pruned => {
                        if let Some(i) = ext.indices(view.cols).find(|&i| dense[i] != 0.0) {
                            return Err(bad(format!(
                                "pruned block {b} holds {} at index {i}",
                                dense[i]
                            )));
                        }
                    }
                    BlockState::Dense => {
                        m.entries.push([bc as u32, m.values.len() as u32]);
                        for r in 0..block.rows {
                            for c in 0..block.cols {
                                let inside = r < ext.rows && c < ext.cols;
                                m.values.push(if inside { dense[tile(r, c)] } else { 0.0 });
                            }
                        }
                    }
                    BlockState::Unified => {
                        let u = m.magnitudes.len();
                        m.entries.push([bc as u32, UNIFIED_FLAG | u as u32]);
                        let a = dense[tile(0, 0)].abs();
                        let mut words = vec![0u32; wpb];
                        for r in 0..ext.rows {
                            for c in 0..ext.cols {
                                let v = dense[tile(r, c)];
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
                        m.magnitudes.push(a);
                        m.signs.extend(words);
                    }
                }
            }
            m.row_ptr.push(m.entries.len() as u32);
        }
        Ok(m)
    }

    /// Builds the compressed form straight from the GPU projection's outputs: the state map,
    /// the unified magnitudes and sign words, and the dense tiles taken from `z`. The GPU
    /// numbers sign bits within a block's actual (possibly ragged) extent, bit `r·w + c`;
    /// here they move to the full-tile position `r·bc + c` the format and GEMM use.
    pub fn from_projection(spec: &LayerSpec, p: &ProjectedLayer) -> Result<Self> {
        let grid = spec.grid();
        let (view, block) = (spec.view, spec.block);
        let n = grid.num_blocks();
        let wpb = block.len().div_ceil(32);
        let bad = |why: String| Error::Shape {
            layer: spec.name.clone(),
            why,
        };
        for (what, got, want) in [
            ("z values", p.z.len(), view.len()),
            ("states", p.states.len(), n),
            ("magnitudes", p.magnitudes.len(), n),
            ("sign words", p.signs.len(), n * wpb),
        ] {
            if got != want {
                return Err(bad(format!(
                    "projection gave {got} {what}, expected {want}"
                )));
            }
        }
        let mut m = Self {
            view,
            block,
            states: p.states.clone(),
            row_ptr: Vec::with_capacity(grid.block_rows() + 1),
            entries: Vec::new(),
            values: Vec::new(),
            magnitudes: Vec::new(),
            signs: Vec::new(),
        };
        m.row_ptr.push(0);
        for row in 0..grid.block_rows() {
            for col in 0..grid.block_cols() {
                let b = row * grid.block_cols() + col;
                let ext = grid.extent(b);
                match p.states[b] {
                    BlockState::Pruned => {}
                    BlockState::Dense => {
                        m.entries.push([col as u32, m.values.len() as u32]);
                        for r in 0..block.rows {
                            for c in 0..block.cols {
                                let inside = r < ext.rows && c < ext.cols;
                                let i = (ext.row0 + r) * view.cols + ext.col0 + c;
                                m.values.push(if inside { p.z[i] } else { 0.0 });
                            }
                        }
                    }
                    BlockState::Unified => {
                        let u = m.magnitudes.len();
                        m.entries.push([col as u32, UNIFIED_FLAG | u as u32]);
                        m.magnitudes.push(p.magnitudes[b]);
                        let src = &p.signs[b * wpb..(b + 1) * wpb];
                        let mut words = vec![0u32; wpb];
                        for r in 0..ext.rows {
                            for c in 0..ext.cols {
                                let from = r * ext.cols + c;
                                if src[from / 32] >> (from % 32) & 1 == 1 {
                                    let to = r * block.cols + c;
                                    words[to / 32] |= 1 << (to % 32);
                                }
                            }
                        }
                        m.signs.extend(words);
                    }
                }
            }
            m.row_ptr.push(m.entries.len() as u32);
        }
        Ok(m)
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
        for s in &self.states {
            c[*s as usize] += 1;
        }
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
        assert_eq!(m.row_ptr, vec![0, 2, 3]);
        assert_eq!(m.magnitudes, vec![0.5, 2.0]);
        assert_eq!(m.to_dense(), d);
        assert_eq!(m.counts(), [1, 2, 1]);
    }

    /// A `ProjectedLayer` as the GPU reports it, made by the CPU reference: signs of `v`
    /// numbered within each block's actual extent, magnitudes 0 outside unified blocks.
    fn cpu_projected(spec: &LayerSpec, v: &[f32], prune: f64, unify: f64) -> ProjectedLayer {
        use crate::cpu::projection as cpu;
        let mode = cpu::per_layer(std::slice::from_ref(spec), prune, unify).unwrap();
        let p = cpu::project(std::slice::from_ref(spec), &[v], &mode)
            .unwrap()
            .remove(0);
        ProjectedLayer {
            signs: cpu::sign_words(&spec.grid(), v),
            u: vec![0.0; v.len()],
            z: p.z,
            states: p.states,
            magnitudes: p.magnitudes,
        }
    }

    #[test]
    fn from_projection_matches_from_dense_on_ragged_blocks() {
        for (rows, cols, block) in [
            (5, 6, "4x4"),
            (7, 13, "3x5"),
            (9, 17, "8x8"),
            (3, 10, "1x8"),
        ] {
            let spec = LayerSpec::new("l", &[rows, cols], block.parse().unwrap()).unwrap();
            let v: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.1)
                .collect();
            for (prune, unify) in [(0.0, 0.0), (0.3, 0.4), (0.0, 1.0), (1.0, 0.0)] {
                let p = cpu_projected(&spec, &v, prune, unify);
                let a = CompressedMatrix::from_projection(&spec, &p).unwrap();
                let b =
                    CompressedMatrix::from_dense(spec.view, spec.block, &p.z, &p.states).unwrap();
                assert_eq!(a, b, "{rows}x{cols} {block} ({prune}, {unify})");
                assert_eq!(a.to_dense(), p.z);
            }
        }
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
