//! A projection's outputs as a [`CompressedMatrix`]: the state map, the unified blocks'
//! magnitudes and sign words as the GPU wrote them (full-tile numbering, bit `r·bc + c`,
//! the matrix's own), and the dense tiles cut from `Z`.

use crate::block::{BlockState, LayerSpec};
use crate::compressed::{CompressedMatrix, block_index};
use crate::error::{Error, Result};
use crate::gpu::projection::ProjectedLayer;

impl ProjectedLayer {
    /// The compressed form of this layer of `spec`, or why the projection's outputs do
    /// not make one (wrong lengths, or values [`CompressedMatrix::new`] refuses).
    pub fn compress(&self, spec: &LayerSpec) -> Result<CompressedMatrix> {
        let grid = spec.grid();
        let n = grid.num_blocks();
        let wpb = spec.block.len().div_ceil(32);
        let bad = |why: String| Error::Shape {
            layer: spec.name.clone(),
            why,
        };
        for (what, got, want) in [
            ("z values", self.z.len(), spec.view.len()),
            ("states", self.states.len(), n),
            ("magnitudes", self.magnitudes.len(), n),
            ("sign words", self.signs.len(), n * wpb),
        ] {
            if got != want {
                return Err(bad(format!(
                    "projection gave {got} {what}, expected {want}"
                )));
            }
        }
        let (mut values, mut magnitudes, mut signs) = (Vec::new(), Vec::new(), Vec::new());
        for (b, s) in self.states.iter().enumerate() {
            match s {
                BlockState::Dense => values.extend(grid.tile(&self.z, b)),
                BlockState::Unified => {
                    magnitudes.push(self.magnitudes[b]);
                    signs.extend_from_slice(&self.signs[b * wpb..(b + 1) * wpb]);
                }
                BlockState::Pruned => {}
            }
        }
        let (row_ptr, entries) = block_index(&grid, &self.states);
        CompressedMatrix::new(
            spec.view,
            spec.block,
            self.states.clone(),
            row_ptr,
            entries,
            values,
            magnitudes,
            signs,
        )
        .map_err(|e| {
            bad(format!(
                "the projection's outputs are not a compressed matrix: {e}"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `ProjectedLayer` as the GPU reports it, made by the CPU reference: signs of `v`
    /// for every block, magnitudes 0 outside unified blocks.
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
    fn compress_matches_from_dense_on_ragged_blocks() {
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
                let a = p.compress(&spec).unwrap();
                let b =
                    CompressedMatrix::from_dense(spec.view, spec.block, &p.z, &p.states).unwrap();
                assert_eq!(a, b, "{rows}x{cols} {block} ({prune}, {unify})");
                assert_eq!(a.to_dense(), p.z);
                // The sign words are the projection's own, not renumbered.
                let wpb = a.words_per_block();
                let unified = (p.states.iter().enumerate())
                    .filter(|(_, s)| **s == BlockState::Unified)
                    .map(|(b, _)| b);
                let copied: Vec<u32> = unified
                    .flat_map(|b| p.signs[b * wpb..(b + 1) * wpb].to_vec())
                    .collect();
                assert_eq!(a.signs(), copied);
            }
        }
    }

    #[test]
    fn short_outputs_are_errors() {
        let spec = LayerSpec::new("l", &[5, 6], "4x4".parse().unwrap()).unwrap();
        let v = vec![0.5f32; 30];
        let mut p = cpu_projected(&spec, &v, 0.0, 1.0);
        p.signs.pop();
        let e = p.compress(&spec).unwrap_err().to_string();
        assert!(e.contains("sign words") && e.contains("\"l\""), "{e}");
    }
}
