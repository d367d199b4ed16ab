//! How many loop iterations a kernel can run per invocation, against the budget of CPU
//! drivers built on Mesa's gallivm (lavapipe, llvmpipe under GL).
//!
//! Gallivm stores LP_MAX_TGSI_LOOP_ITERATIONS = 65,535 into one loop limiter per shader
//! invocation and decrements it at every back-edge of every loop; once it is spent, each
//! loop ends after its current iteration, silently. An invocation there is a SIMD group of
//! lanes (8 with 256-bit vectors) that runs every loop as long as its longest lane. As
//! measured (kernels-tests/loop_budget.rs): a loop whose longest lane runs T iterations
//! spends T + 1 (its last pass only finds the exit), plus what its body spends in each of
//! those passes, including one pass in which no lane is active; a loop that no lane enters
//! spends 1 (gallivm runs both arms of a branch under masks). Nothing here assumes that a
//! driver unrolls a loop.
//!
//! Each kernel's loops are modelled here ([`projection`], [`gemm`]), with their longest trip
//! counts; kernels-tests/loop_budget.rs checks every model against the loop structure naga
//! reads from the kernel's WGSL and the bound against the budget. The GEMM host cuts its
//! main loop into slices that keep within [`SHARE`] ([`gemm_slice_len`]).

use crate::block::MAX_BLOCK_SIDE;
use crate::gpu::kernels::gemm_dense_tiled::{self, Tile};
use crate::gpu::kernels::{self, Kernel, gemm_micro_tiled};

/// Gallivm's loop limiter (lp_bld_limits.h: LP_MAX_TGSI_LOOP_ITERATIONS).
pub const BUDGET: u64 = 65_535;
/// What any kernel may plan to spend of [`BUDGET`]: half, so that a model a little off
/// (or a driver a little stricter) still fits.
pub const SHARE: u64 = BUDGET / 2;

/// A shader's loops as they nest: loops, and branches that hold loops.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    /// A loop whose longest lane runs at most `trips` iterations.
    Loop {
        what: &'static str,
        trips: u64,
        body: Vec<Node>,
    },
    /// An `if` with loops in an arm. `uniform`: every lane of a group takes the same arm
    /// (the other runs masked); else both arms may run.
    If {
        uniform: bool,
        then: Vec<Node>,
        otherwise: Vec<Node>,
    },
}

/// A loop node.
pub fn lp(what: &'static str, trips: u64, body: Vec<Node>) -> Node {
    Node::Loop { what, trips, body }
}

/// A branch whose arms every lane of a group takes alike.
pub fn uniform_if(then: Vec<Node>, otherwise: Vec<Node>) -> Node {
    Node::If {
        uniform: true,
        then,
        otherwise,
    }
}

/// A branch lanes may take differently.
pub fn divergent_if(then: Vec<Node>, otherwise: Vec<Node>) -> Node {
    Node::If {
        uniform: false,
        then,
        otherwise,
    }
}

/// Budget spent by the nodes when some lane is active.
pub fn active(nodes: &[Node]) -> u64 {
    nodes
        .iter()
        .map(|n| match n {
            Node::Loop { trips, body, .. } => trips + 1 + trips * active(body) + masked(body),
            Node::If {
                uniform: true,
                then,
                otherwise,
            } => (active(then) + masked(otherwise)).max(masked(then) + active(otherwise)),
            Node::If {
                then, otherwise, ..
            } => active(then) + active(otherwise),
        })
        .sum()
}

/// Budget spent by the nodes when no lane is active.
pub fn masked(nodes: &[Node]) -> u64 {
    nodes
        .iter()
        .map(|n| match n {
            Node::Loop { body, .. } => 1 + masked(body),
            Node::If {
                then, otherwise, ..
            } => masked(then) + masked(otherwise),
        })
        .sum()
}

/// The model in words: `loop ×trips [body]`, `if [..] else [..]`.
pub fn outline(nodes: &[Node]) -> String {
    let parts: Vec<String> = nodes
        .iter()
        .map(|n| match n {
            Node::Loop { what, trips, body } if body.is_empty() => format!("{what} ×{trips}"),
            Node::Loop { what, trips, body } => format!("{what} ×{trips} [{}]", outline(body)),
            Node::If {
                then, otherwise, ..
            } => format!("if [{}] else [{}]", outline(then), outline(otherwise)),
        })
        .collect();
    parts.join(", ")
}

// ---------------------------------------------------------------------------------------
// The projection kernels, at MAX_BLOCK_SIDE
// ---------------------------------------------------------------------------------------

/// Halvings of the bounded binary searches (find_piece and find_piece_of_block in
/// chunk_pieces.wgsl, find_group in select_groups.wgsl: `n < 32u`).
pub const SEARCH_STEPS: u64 = 32;

const SIDE: u64 = MAX_BLOCK_SIDE as u64;

fn search() -> Node {
    lp("binary search", SEARCH_STEPS, vec![])
}

/// Rows × columns of one block, `cols` iterations per row.
fn block_nest(side: u64, cols: u64) -> Node {
    lp("block rows", side, vec![lp("block columns", cols, vec![])])
}

/// The loops of every projection kernel with blocks of at most `side` per side. A
/// workgroup serves one piece of one layer, so branches on the layer's layout are uniform.
pub fn projection(side: u64) -> Vec<(Kernel, Vec<Node>)> {
    let words = (side * side).div_ceil(32);
    let layouts = || {
        uniform_if(
            vec![block_nest(side, side / 4)],
            vec![block_nest(side, side)],
        )
    };
    let per_block = |body: Vec<Node>| {
        lp(
            "blocks per invocation",
            kernels::BLOCK_ITEMS as u64,
            vec![divergent_if(body, vec![])],
        )
    };
    let block_stats = vec![
        search(),
        per_block(vec![layouts(), lp("unused sign words", words, vec![])]),
    ];
    let rescale = vec![search(), block_nest(side, side)];
    let apply = vec![search(), per_block(vec![layouts()])];
    let histogram = vec![
        search(),
        uniform_if(
            vec![lp(
                "blocks per invocation",
                kernels::SELECT_ITEMS as u64,
                vec![],
            )],
            vec![],
        ),
    ];
    let resolve = vec![lp("radix digits", kernels::RADIX as u64, vec![])];
    let blocks_per_word = (kernels::SELECT_BLOCKS_PER_WORKGROUP / kernels::PACK_WG) as u64;
    let pack = vec![
        search(),
        lp("blocks per state word", blocks_per_word, vec![]),
    ];
    vec![
        (kernels::BLOCK_STATS, block_stats),
        (kernels::BLOCK_RESCALE, rescale),
        (kernels::APPLY_PROJECTION, apply),
        (kernels::RADIX_HISTOGRAM, histogram),
        (kernels::RADIX_RESOLVE, resolve),
        (kernels::PACK_STATES, pack),
        (kernels::SCALE_DUAL, vec![]),
        (kernels::COPY_VEC4, vec![]),
    ]
}

/// [`projection`] at the block-side limit every entry point enforces.
pub fn projection_at_limit() -> Vec<(Kernel, Vec<Node>)> {
    projection(SIDE)
}

// ---------------------------------------------------------------------------------------
// The GEMM kernels
// ---------------------------------------------------------------------------------------

/// Which GEMM kernel, with the override constants its loops depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmKernel {
    /// gemm_dense: `tm` rows per workgroup.
    Dense { tm: u64 },
    /// gemm_dense_small: `nb` columns of X.
    DenseSmall { nb: u64 },
    /// gemm_micro: `tm` rows (dividing `bc`'s block rows), `nv` vec4 columns, `bc` block
    /// columns.
    Micro { tm: u64, nv: u64, bc: u64 },
    /// gemm_micro_small: `rl` rows per invocation, `bc` block columns, `nb` columns of X.
    MicroSmall { rl: u64, bc: u64, nb: u64 },
    /// gemm_dense_tiled with its tile.
    DenseTiled(Tile),
    /// gemm_micro_tiled with its shape.
    MicroTiled(gemm_micro_tiled::Shape),
}

impl GemmKernel {
    /// The kernel's WGSL.
    pub fn kernel(&self) -> Kernel {
        match self {
            GemmKernel::Dense { .. } => kernels::GEMM_DENSE,
            GemmKernel::DenseSmall { .. } => kernels::GEMM_DENSE_SMALL,
            GemmKernel::Micro { .. } => kernels::GEMM_MICRO,
            GemmKernel::MicroSmall { .. } => kernels::GEMM_MICRO_SMALL,
            GemmKernel::DenseTiled(_) => kernels::GEMM_DENSE_TILED,
            GemmKernel::MicroTiled(_) => kernels::GEMM_MICRO_TILED,
        }
    }
}

/// The loops of a GEMM kernel whose main loop (vec4s of K for the dense kernels, entries of
/// a block row, dense and unified each, for the micro ones) runs `slice` iterations.
pub fn gemm(k: GemmKernel, slice: u64) -> Vec<Node> {
    match k {
        GemmKernel::Dense { tm } => vec![
            lp("vec4s of K", slice, vec![lp("rows", tm, vec![])]),
            lp("rows (epilogue)", tm, vec![]),
        ],
        GemmKernel::DenseSmall { nb } => vec![
            lp("vec4s of K", slice, vec![lp("columns", nb, vec![])]),
            lp("columns (epilogue)", nb, vec![]),
        ],
        GemmKernel::Micro { tm, nv, bc } => {
            let load_x4 = || lp("X rows", 4, vec![lp("vec4 columns", nv, vec![])]);
            let mac_row = || lp("vec4 columns", nv, vec![]);
            let edge = || {
                lp(
                    "edge tile columns",
                    bc % 4,
                    vec![lp("rows", tm, vec![lp("vec4 columns", nv, vec![])])],
                )
            };
            let signed4 = uniform_if(vec![], vec![lp("sign bits", 4, vec![])]);
            // The conv gather (GATHER > 0): column starts, and the pooled epilogue's pairs.
            let gather_bases = uniform_if(vec![lp("gathered vec4 columns", nv, vec![])], vec![]);
            let pooled = uniform_if(vec![lp("pooled column pairs", nv / 2, vec![])], vec![]);
            vec![
                gather_bases,
                lp(
                    "dense entries",
                    slice,
                    vec![
                        lp(
                            "tile column quads",
                            bc / 4,
                            vec![load_x4(), lp("rows", tm, vec![mac_row()])],
                        ),
                        edge(),
                    ],
                ),
                lp(
                    "unified entries",
                    slice,
                    vec![
                        lp(
                            "tile column quads",
                            bc / 4,
                            vec![load_x4(), lp("rows", tm, vec![signed4, mac_row()])],
                        ),
                        edge(),
                        lp("partial sums", tm * nv, vec![]),
                    ],
                ),
                lp(
                    "rows (epilogue)",
                    tm,
                    vec![lp("vec4 columns", nv, vec![]), pooled],
                ),
            ]
        }
        GemmKernel::MicroSmall { rl, bc, nb } => {
            let c4 = bc / 4;
            // The ROWS4 arm (4 rows, N = 1): its own loop over the tile's column quads.
            let rows4 = || uniform_if(vec![lp("tile column quads (4 rows)", c4, vec![])], vec![]);
            vec![
                lp(
                    "dense entries",
                    slice,
                    vec![
                        rows4(),
                        lp(
                            "tile column quads",
                            c4,
                            vec![lp("columns", nb, vec![lp("rows", rl, vec![])])],
                        ),
                    ],
                ),
                lp(
                    "unified entries",
                    slice,
                    vec![
                        rows4(),
                        uniform_if(
                            vec![lp("rows (one sign word)", rl, vec![])],
                            vec![lp("rows (sign words)", rl, vec![])],
                        ),
                        lp(
                            "tile column quads",
                            c4,
                            vec![lp("rows", rl, vec![lp("columns", nb, vec![])])],
                        ),
                        lp("partial sums", rl * nb, vec![]),
                    ],
                ),
                lp("rows (epilogue)", rl, vec![lp("columns", nb, vec![])]),
            ]
        }
        GemmKernel::DenseTiled(t) => dense_tiled(t, slice),
        GemmKernel::MicroTiled(s) => micro_tiled(s, slice),
    }
}

/// A register tile's multiply-adds per staged k: its X vec4s, then per row its vec4s.
fn register_tile(what: &'static str, ks: u64, rows: u64, tn4: u64) -> Node {
    lp(
        what,
        ks,
        vec![
            lp("X vec4s", tn4, vec![]),
            lp("rows", rows, vec![lp("vec4 columns", tn4, vec![])]),
        ],
    )
}

/// gemm_dense_tiled: per K tile, the two staging loops and the register tile.
fn dense_tiled(t: Tile, slice: u64) -> Vec<Node> {
    let (bk, wg) = (gemm_dense_tiled::BK, t.workgroup());
    let tn4 = (t.tn / 4) as u64;
    vec![
        lp(
            "K tiles",
            slice,
            vec![
                lp("W tile loads", (t.bm * bk / 4 / wg) as u64, vec![]),
                lp("X tile loads", (bk * t.bn / 4 / wg) as u64, vec![]),
                register_tile("K in tile", bk as u64, t.tm as u64, tn4),
            ],
        ),
        lp(
            "rows (epilogue)",
            t.tm as u64,
            vec![lp("vec4 columns", tn4, vec![])],
        ),
    ]
}

/// gemm_micro_tiled: per entry and chunk of tile columns, the staging loops (guarded
/// loads, no loops in the guards) and the register tile.
fn micro_tiled(s: gemm_micro_tiled::Shape, slice: u64) -> Vec<Node> {
    let wg = s.workgroup();
    let tn4 = (s.tn / 4) as u64;
    let chunk = || {
        lp(
            "column chunks",
            s.bc.div_ceil(s.kc) as u64,
            vec![
                lp(
                    "X slab loads",
                    (s.kc * s.bn / 4).div_ceil(wg) as u64,
                    vec![],
                ),
                lp("weight loads", (s.br * s.kc).div_ceil(wg) as u64, vec![]),
                register_tile("staged columns", s.kc as u64, s.rt as u64, tn4),
            ],
        )
    };
    vec![
        lp("dense entries", slice, vec![chunk()]),
        lp(
            "unified entries",
            slice,
            vec![chunk(), lp("partial sums", s.rt as u64 * tn4, vec![])],
        ),
        lp(
            "rows (epilogue)",
            s.rt as u64,
            vec![lp("vec4 columns", tn4, vec![])],
        ),
    ]
}

/// The loops of gemm_sign_table: one group of 4 inputs per invocation.
pub fn gemm_sign_table() -> Vec<Node> {
    vec![lp("sign patterns of the upper pair", 4, vec![])]
}

/// The network check's limits, which bound pool2d's and argmax's loops.
pub use crate::infer::network::{MAX_CLASSES, MAX_POOL_SIDE};

/// The loops of im2col: one column of X over at most `IM2COL_ROWS` rows.
pub fn im2col() -> Vec<Node> {
    vec![lp("rows of X", kernels::IM2COL_ROWS as u64, vec![])]
}

/// The loops of pool2d over a `kh × kw` window.
pub fn pool2d(kh: u64, kw: u64) -> Vec<Node> {
    vec![lp(
        "window rows",
        kh,
        vec![lp("window columns", kw, vec![])],
    )]
}

/// The loops of argmax over `classes` classes (the first read before the loop).
pub fn argmax(classes: u64) -> Vec<Node> {
    vec![lp("classes", classes.saturating_sub(1), vec![])]
}

/// The network kernels at the largest window and class count the network check accepts.
pub fn network_at_limit() -> Vec<(Kernel, Vec<Node>)> {
    vec![
        (kernels::IM2COL, im2col()),
        (kernels::POOL2D, pool2d(MAX_POOL_SIDE, MAX_POOL_SIDE)),
        (kernels::ARGMAX, argmax(MAX_CLASSES)),
    ]
}

/// The longest main-loop slice of a GEMM kernel that keeps within [`SHARE`] (at least 1:
/// every kernel's loops outside the main one are far smaller).
pub fn gemm_slice_len(k: GemmKernel) -> u64 {
    let fixed = active(&gemm(k, 0));
    let per = active(&gemm(k, 1)) - fixed;
    (SHARE.saturating_sub(fixed) / per.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_counts_what_the_probes_measured() {
        // kernels-tests/loop_budget.rs measures these on lavapipe.
        assert_eq!(active(&[lp("a", 40_000, vec![])]), 40_001);
        let nested = [lp("outer", 100, vec![lp("inner", 10, vec![])])];
        assert_eq!(active(&nested), 1202);
        assert_eq!(masked(&nested), 2);
        // A uniform branch charges the dearer arm, plus the other arm run masked.
        let branch = [uniform_if(
            vec![lp("a", 10, vec![])],
            vec![lp("b", 3, vec![])],
        )];
        assert_eq!(active(&branch), 11 + 1);
        assert_eq!(
            active(&[divergent_if(
                vec![lp("a", 10, vec![])],
                vec![lp("b", 3, vec![])]
            )]),
            11 + 4
        );
    }

    #[test]
    fn gemm_slices_fit_and_are_the_longest_that_do() {
        for k in [
            GemmKernel::Dense { tm: 8 },
            GemmKernel::DenseSmall { nb: 8 },
            GemmKernel::Micro {
                tm: 8,
                nv: 2,
                bc: 32,
            },
            GemmKernel::Micro {
                tm: 1,
                nv: 4,
                bc: 3,
            },
            GemmKernel::MicroSmall {
                rl: 4,
                bc: 32,
                nb: 2,
            },
        ] {
            let s = gemm_slice_len(k);
            assert!(active(&gemm(k, s)) <= SHARE, "{k:?}");
            assert!(active(&gemm(k, s + 1)) > SHARE, "{k:?}");
        }
    }
}
