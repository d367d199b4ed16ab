//! gemm_dense_tiled: `Y = W·X + bias` (optional ReLU) with a dense W, the GPU-style variant:
//! W and X tiles staged in workgroup memory, a register tile of Y per invocation.

use super::Kernel;
use super::binding::bindings;
use super::reflection::generated;

/// K per staged tile (`BK` in the shader; checked against it below).
pub const BK: usize = 16;
/// Largest output tile the shader's workgroup arrays hold (`MAX_BM`, `MAX_BN`).
pub const MAX_BM: usize = 128;
pub const MAX_BN: usize = 128;

/// One tile configuration: a `bm × bn` tile of Y per workgroup, `tm × tn` per invocation.
/// The micro-structured variant uses `tm` (capped at the block's rows) and `tn` only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tile {
    pub bm: usize,
    pub bn: usize,
    pub tm: usize,
    pub tn: usize,
}

impl Tile {
    /// Invocations per workgroup.
    pub const fn workgroup(&self) -> usize {
        (self.bm / self.tm) * (self.bn / self.tn)
    }

    /// Whether the shader takes it: the register tile fits the accumulator (16 vec4, 2 vec4
    /// of X per k), the output tile the workgroup arrays, and each staging loop gives every
    /// invocation the same whole number of loads (no guards, no idle invocations).
    pub const fn valid(&self) -> bool {
        let wg = self.workgroup();
        (self.tn == 4 || self.tn == 8)
            && self.tm >= 1
            && self.tm * self.tn <= 64
            && self.bm.is_multiple_of(self.tm)
            && self.bn.is_multiple_of(self.tn)
            && self.bm <= MAX_BM
            && self.bn <= MAX_BN
            && wg >= 1
            && wg <= 256
            && (self.bm * BK / 4).is_multiple_of(wg)
            && (BK * self.bn / 4).is_multiple_of(wg)
    }

    /// `64x64/8x8`: output tile, then register tile.
    pub fn label(&self) -> String {
        format!("{}x{}/{}x{}", self.bm, self.bn, self.tm, self.tn)
    }
}

/// The configurations the host builds (and the autotuner times): 64 to 256 invocations.
pub const TILES: [Tile; 4] = [
    Tile {
        bm: 64,
        bn: 64,
        tm: 8,
        tn: 8,
    },
    Tile {
        bm: 128,
        bn: 64,
        tm: 8,
        tn: 8,
    },
    Tile {
        bm: 128,
        bn: 128,
        tm: 8,
        tn: 8,
    },
    Tile {
        bm: 64,
        bn: 64,
        tm: 4,
        tn: 4,
    },
];

const _: () = {
    let mut i = 0;
    while i < TILES.len() {
        assert!(TILES[i].valid());
        i += 1;
    }
};

pub const KERNEL: Kernel = Kernel::new(
    &generated::GEMM_DENSE_TILED,
    &[
        ("TILE_WG", 64.0),
        ("BM", 64.0),
        ("BN", 64.0),
        ("TM", 8.0),
        ("TN", 8.0),
    ],
);

/// The override constants of a pipeline of `tile`.
pub fn constants(t: Tile) -> Vec<(&'static str, f64)> {
    vec![
        ("TILE_WG", t.workgroup() as f64),
        ("BM", t.bm as f64),
        ("BN", t.bn as f64),
        ("TM", t.tm as f64),
        ("TN", t.tn as f64),
    ]
}

bindings! {
    pub struct Bindings for KERNEL {
        0 => w,
        1 => x,
        2 => bias,
        3 => y,
        4 => p,
    }
}

/// Workgroups (along N, along M) for Y of `n4` vec4 columns and `m_pad` rows, both whole
/// tiles; unbounded, the caller checks the per-dimension limit.
pub fn workgroups(t: Tile, n4: usize, m_pad: usize) -> (usize, usize) {
    (n4 * 4 / t.bn, m_pad / t.bm)
}

/// A `const u32` of a kernel's WGSL, as naga reads it (the Rust mirrors are checked
/// against it).
#[cfg(test)]
pub(crate) fn shader_const(kernel: &Kernel, name: &str) -> Option<u64> {
    let module = naga::front::wgsl::parse_str(kernel.source()).ok()?;
    let (_, c) = module
        .constants
        .iter()
        .find(|(_, c)| c.name.as_deref() == Some(name))?;
    match module.global_expressions[c.init] {
        naga::Expression::Literal(naga::Literal::U32(v)) => Some(v as u64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mirrors_are_the_shaders_constants() {
        for (name, v) in [("BK", BK), ("MAX_BM", MAX_BM), ("MAX_BN", MAX_BN)] {
            assert_eq!(shader_const(&KERNEL, name), Some(v as u64), "{name}");
        }
    }

    #[test]
    fn a_tile_whose_loads_do_not_divide_is_refused() {
        // 128 columns of 4 per invocation and 64 rows of 4: 512 invocations.
        let t = Tile {
            bm: 64,
            bn: 128,
            tm: 4,
            tn: 4,
        };
        assert!(!t.valid());
    }
}
