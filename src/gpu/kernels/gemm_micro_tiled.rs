//! gemm_micro_tiled: `Y = W·X + bias` (optional ReLU) with a micro-structured W, the
//! GPU-style variant: one block row × BN columns per workgroup, X and the block weights
//! staged in workgroup memory per chunk of tile columns, a register tile per invocation.

use super::Kernel;
use super::binding::bindings;
use super::gemm_dense_tiled::Tile;
use super::reflection::generated;

/// Largest BN (`MAX_BN` in the shader) and tile columns staged at once (`MAX_KC`).
pub const MAX_BN: usize = 256;
pub const MAX_KC: usize = 8;
/// Rows of the staged weights (`MAX_ROWS`): a block row and the last row group's padding.
pub const MAX_ROWS: usize = 40;
/// Invocations a workgroup aims at (where N is wide enough to give them columns).
const TARGET_WG: usize = 64;

pub const KERNEL: Kernel = Kernel::new(
    &generated::GEMM_MICRO_TILED,
    &[
        ("TILE_WG", 64.0),
        ("BN", 64.0),
        ("RT", 4.0),
        ("TN", 4.0),
        ("KC", 4.0),
        ("BR", 4.0),
        ("BC", 4.0),
        ("WPB", 1.0),
    ],
);

/// The specialisation of one pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Columns of Y per workgroup.
    pub bn: usize,
    /// Rows and columns per invocation.
    pub rt: usize,
    pub tn: usize,
    /// Tile columns staged at once.
    pub kc: usize,
    /// The block shape and its sign words per block.
    pub br: usize,
    pub bc: usize,
    pub wpb: usize,
}

impl Shape {
    /// The shape for register tile `tile.tm × tile.tn`, block `br × bc` and `n` columns:
    /// rows per invocation capped at the block's, column groups enough for about
    /// [`TARGET_WG`] invocations but no wider than N needs, staged chunks as even as 8
    /// columns at most allow.
    pub fn new(tile: Tile, br: usize, bc: usize, wpb: usize, n: usize) -> Self {
        let rt = tile.tm.min(br).max(1);
        let row_groups = br.div_ceil(rt);
        let wanted = TARGET_WG.div_ceil(row_groups).next_power_of_two();
        let needed = n.div_ceil(tile.tn).next_power_of_two();
        let cols = wanted.min(needed).min(MAX_BN / tile.tn).max(1);
        let kc = bc.div_ceil(bc.div_ceil(MAX_KC));
        Self {
            bn: cols * tile.tn,
            rt,
            tn: tile.tn,
            kc,
            br,
            bc,
            wpb,
        }
    }

    /// Invocations per workgroup.
    pub fn workgroup(&self) -> usize {
        self.br.div_ceil(self.rt) * (self.bn / self.tn)
    }
}

/// The override constants of a pipeline of `shape`.
pub fn constants(s: Shape) -> Vec<(&'static str, f64)> {
    vec![
        ("TILE_WG", s.workgroup() as f64),
        ("BN", s.bn as f64),
        ("RT", s.rt as f64),
        ("TN", s.tn as f64),
        ("KC", s.kc as f64),
        ("BR", s.br as f64),
        ("BC", s.bc as f64),
        ("WPB", s.wpb as f64),
    ]
}

bindings! {
    pub struct Bindings for KERNEL {
        0 => rows,
        1 => entries,
        2 => values,
        3 => unified,
        4 => x,
        5 => bias,
        6 => y,
        7 => p,
    }
}

/// Workgroups (along N, along block rows) for Y of `n4` vec4 columns (whole `bn`s).
pub fn workgroups(s: Shape, n4: usize, block_rows: usize) -> (usize, usize) {
    (n4 * 4 / s.bn, block_rows)
}

#[cfg(test)]
mod tests {
    use super::super::gemm_dense_tiled::{TILES, shader_const};
    use super::*;
    use crate::block::MAX_BLOCK_SIDE;

    #[test]
    fn the_mirrors_are_the_shaders_constants() {
        for (name, v) in [
            ("MAX_BN", MAX_BN),
            ("MAX_KC", MAX_KC),
            ("MAX_ROWS", MAX_ROWS),
        ] {
            assert_eq!(shader_const(&KERNEL, name), Some(v as u64), "{name}");
        }
    }

    #[test]
    fn every_block_shape_fits_the_workgroup_arrays() {
        for t in TILES {
            for br in 1..=MAX_BLOCK_SIDE {
                for bc in 1..=MAX_BLOCK_SIDE {
                    for n in [1, 5, 64, 1000] {
                        let s = Shape::new(t, br, bc, 1, n);
                        let wg = s.workgroup();
                        assert!((1..=256).contains(&wg), "{s:?}: {wg}");
                        assert!(s.bn <= MAX_BN && s.kc <= MAX_KC && s.kc >= 1, "{s:?}");
                        // The weights array holds the padded rows the last group reads.
                        assert!(br.div_ceil(s.rt) * s.rt <= MAX_ROWS, "{s:?}");
                        assert!(s.rt * s.tn / 4 <= 16, "{s:?}");
                    }
                }
            }
        }
    }
}
