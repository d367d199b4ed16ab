//! Property tests of the CPU reference projection (`microunify::cpu::projection`) against
//! docs/METHOD.md §1–§2: idempotence, exact counts, per-block L2 optimality, brute-force
//! optimality on tiny layers, ragged/conv shapes, errors, the global mode's normalised
//! ranking and the tie-break by block number.
//!
//! Block statistics used as oracles here are recomputed from the raw weights in this file
//! (f64, row-major within the block); only the projection's outputs are taken from the
//! library.

use microunify::block::{BlockExtent, MAX_BLOCK_SIDE, from_gemm, to_gemm};
use microunify::cpu::projection::{self as proj, LayerProjection};
use microunify::{
    BlockGrid, BlockShape, BlockState, ConvLayout, Error, GemmView, LayerSpec, Ratios,
    SelectionMode,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

type TestResult = Result<(), TestCaseError>;

// ---------------------------------------------------------------------------------------
// Fixtures and independent oracles
// ---------------------------------------------------------------------------------------

/// A network: layers and their weights in GEMM view.
#[derive(Clone, Debug)]
struct Net {
    layers: Vec<LayerSpec>,
    data: Vec<Vec<f32>>,
}

/// One block in network order, with statistics computed here from the raw weights.
#[derive(Clone, Debug)]
struct Blk {
    layer: usize,
    /// Block number within its layer.
    b: usize,
    /// Flat indices of its weights in the layer's GEMM view (row-major within the block).
    idx: Vec<usize>,
    v: Vec<f32>,
    /// `Σ v²`.
    ep: f64,
    /// `Σ (|v| − mean|v|)²`.
    eu: f64,
    /// `mean |v|` in f64.
    mean: f64,
}

impl Blk {
    fn len(&self) -> usize {
        self.v.len()
    }
}

impl Net {
    fn new(layers: Vec<(LayerSpec, Vec<f32>)>) -> Self {
        let (layers, data) = layers.into_iter().unzip();
        Self { layers, data }
    }

    /// A net of 2-D layers `(rows, cols, block rows, block cols, weights)`, named `l0, l1…`.
    fn of(layers: &[(usize, usize, usize, usize, Vec<f32>)]) -> Self {
        Self::new(
            layers
                .iter()
                .enumerate()
                .map(|(i, (r, c, br, bc, d))| {
                    let block = BlockShape::new(*br, *bc).unwrap();
                    (
                        LayerSpec::new(format!("l{i}"), &[*r, *c], block).unwrap(),
                        d.clone(),
                    )
                })
                .collect(),
        )
    }

    fn slices(&self) -> Vec<&[f32]> {
        self.data.iter().map(Vec::as_slice).collect()
    }

    fn try_project(&self, mode: &SelectionMode) -> microunify::Result<Vec<LayerProjection>> {
        proj::project(&self.layers, &self.slices(), mode)
    }

    fn project(&self, mode: &SelectionMode) -> Vec<LayerProjection> {
        self.try_project(mode)
            .unwrap_or_else(|e| panic!("projection of a valid net failed: {e}"))
    }

    /// The same layers holding other weights.
    fn with_data(&self, data: Vec<Vec<f32>>) -> Self {
        Self {
            layers: self.layers.clone(),
            data,
        }
    }

    fn blocks(&self) -> Vec<Blk> {
        let mut out = Vec::new();
        for (l, (layer, d)) in self.layers.iter().zip(&self.data).enumerate() {
            let grid = layer.grid();
            for b in 0..grid.num_blocks() {
                let idx: Vec<usize> = grid.extent(b).indices(layer.view.cols).collect();
                let v: Vec<f32> = idx.iter().map(|&i| d[i]).collect();
                let n = v.len() as f64;
                let mut ep = 0.0f64;
                let mut sa = 0.0f64;
                for &x in &v {
                    ep += f64::from(x) * f64::from(x);
                    sa += f64::from(x).abs();
                }
                let mean = sa / n;
                let mut eu = 0.0f64;
                for &x in &v {
                    let d = f64::from(x).abs() - mean;
                    eu += d * d;
                }
                out.push(Blk {
                    layer: l,
                    b,
                    idx,
                    v,
                    ep,
                    eu,
                    mean,
                });
            }
        }
        out
    }

    fn name(&self, l: usize) -> &str {
        &self.layers[l].name
    }
}

/// `⌈r·n⌉` with the 1e-9 slack of `Ratios::counts`, characterised rather than computed:
/// the least integer `k ≥ 0` with `k ≥ r·n − 1e-9`, at most `n`.
fn is_slack_ceil(k: usize, r: f64, n: usize) -> bool {
    let x = r * n as f64 - 1e-9;
    k <= n && (k as f64) >= x.min(n as f64) && (k == 0 || ((k - 1) as f64) < x)
}

/// The slack ceiling by search (small `n` only).
fn slack_ceil(r: f64, n: usize) -> usize {
    (0..=n)
        .find(|&k| k as f64 >= r * n as f64 - 1e-9)
        .unwrap_or(n)
}

/// A selection group expected by docs/METHOD.md §2: members (indices into `Net::blocks`), counts,
/// and whether keys are normalised by block size.
#[derive(Debug)]
struct ExpGroup {
    members: Vec<usize>,
    prune: usize,
    unify: usize,
    normalise: bool,
    scope: String,
}

fn expected_groups(net: &Net, blocks: &[Blk], mode: &SelectionMode) -> Vec<ExpGroup> {
    match mode {
        SelectionMode::PerLayer(ratios) => ratios
            .iter()
            .enumerate()
            .map(|(l, r)| {
                let members: Vec<usize> = (0..blocks.len())
                    .filter(|&i| blocks[i].layer == l)
                    .collect();
                let n = members.len();
                let prune = slack_ceil(r.prune, n);
                let unify = slack_ceil(r.unify, n).min(n - prune);
                ExpGroup {
                    members,
                    prune,
                    unify,
                    normalise: false,
                    scope: net.name(l).to_string(),
                }
            })
            .collect(),
        SelectionMode::Global(r) => {
            let n = blocks.len();
            let prune = slack_ceil(r.prune, n);
            vec![ExpGroup {
                members: (0..n).collect(),
                prune,
                unify: slack_ceil(r.unify, n).min(n - prune),
                normalise: true,
                scope: "<network>".to_string(),
            }]
        }
    }
}

fn state_of(out: &[LayerProjection], blk: &Blk) -> BlockState {
    out[blk.layer].states[blk.b]
}

/// The L2-closest point of `v` in state `s`, computed here (a = mean|v| rounded to f32).
fn closest(v: &[f32], s: BlockState) -> Vec<f32> {
    match s {
        BlockState::Dense => v.to_vec(),
        BlockState::Pruned => vec![0.0; v.len()],
        BlockState::Unified => {
            let a = (v.iter().map(|&x| f64::from(x).abs()).sum::<f64>() / v.len() as f64) as f32;
            v.iter().map(|&x| if x < 0.0 { -a } else { a }).collect()
        }
    }
}

fn sq_err(v: &[f32], z: &[f32]) -> f64 {
    v.iter()
        .zip(z)
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
        .sum()
}

/// `Σ (v_i − sign(v_i)·a)²` in f64, sign of 0 being +1.
fn unified_err(v: &[f32], a: f64) -> f64 {
    v.iter()
        .map(|&x| {
            let s = if x < 0.0 { -1.0 } else { 1.0 };
            (f64::from(x) - s * a).powi(2)
        })
        .sum()
}

/// The next f32 above / below a finite `a ≥ 0` (`f32::next_up` needs Rust 1.86; MSRV is 1.85).
fn f32_up(a: f32) -> f32 {
    if a == 0.0 {
        f32::from_bits(1)
    } else {
        f32::from_bits(a.to_bits() + 1)
    }
}

fn f32_down(a: f32) -> f32 {
    if a == 0.0 {
        -f32::from_bits(1)
    } else {
        f32::from_bits(a.to_bits() - 1)
    }
}

/// The spacing of f32 values at a finite `a ≥ 0`.
fn f32_ulp(a: f32) -> f32 {
    if a == f32::MAX {
        a - f32_down(a)
    } else {
        f32_up(a) - a
    }
}

fn mode_of(net: &Net, global: bool, pairs: &[(f64, f64)]) -> SelectionMode {
    if global {
        SelectionMode::Global(Ratios::new(pairs[0].0, pairs[0].1, "<network>").unwrap())
    } else {
        SelectionMode::PerLayer(
            net.layers
                .iter()
                .zip(pairs)
                .map(|(l, &(p, u))| Ratios::new(p, u, &l.name).unwrap())
                .collect(),
        )
    }
}

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

/// Weights with awkward values: ordinary, small integers (ties), signed zeros, subnormals,
/// huge magnitudes, the f32 extremes.
fn weight() -> impl Strategy<Value = f32> {
    prop_oneof![
        8 => -4.0f32..4.0,
        3 => (-2i8..=2).prop_map(f32::from),
        1 => Just(-0.0f32),
        1 => prop::sample::select(vec![
            f32::from_bits(1),
            -f32::from_bits(1),
            f32::MIN_POSITIVE,
            -1e-40f32,
            1e-30,
        ]),
        1 => -1e30f32..1e30,
        1 => prop::sample::select(vec![f32::MAX, f32::MIN, 3e38f32, -1e38]),
    ]
}

/// Weights of one layer: random, tie-heavy, or all equal.
fn weights(n: usize) -> BoxedStrategy<Vec<f32>> {
    prop_oneof![
        4 => vec(weight(), n),
        2 => vec(prop::sample::select(vec![-1.0f32, 0.0, 1.0, 2.0]), n),
        1 => prop::sample::select(vec![1.0f32, -0.5, 0.0]).prop_map(move |x| vec![x; n]),
    ]
    .boxed()
}

/// Tensor shapes: 2-D with awkward (often prime) sizes, conv `[Cout, Cin, kh, kw]`.
fn shape() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        4 => (1usize..=13, 1usize..=13).prop_map(|(r, c)| vec![r, c]),
        2 => (1usize..=5, 1usize..=3, 1usize..=3, 1usize..=3)
            .prop_map(|(o, i, h, w)| vec![o, i, h, w]),
        1 => prop::sample::select(vec![
            vec![1, 1],
            vec![1, 23],
            vec![29, 1],
            vec![7, 11],
            vec![13, 17],
            vec![2, 3, 3, 3],
            vec![3, 1, 1, 1],
        ]),
    ]
}

/// Block shapes: small arbitrary ones (often larger than the matrix) and the method's list.
fn block_shape() -> impl Strategy<Value = BlockShape> {
    prop_oneof![
        3 => (1usize..=6, 1usize..=9),
        1 => prop::sample::select(vec![(4, 4), (1, 8), (2, 8), (8, 8), (16, 16), (32, 32)]),
    ]
    .prop_map(|(r, c)| BlockShape::new(r, c).unwrap())
}

fn layer_data() -> impl Strategy<Value = (Vec<usize>, BlockShape, Vec<f32>)> {
    (shape(), block_shape()).prop_flat_map(|(s, b)| {
        let n = s.iter().product();
        (Just(s), Just(b), weights(n))
    })
}

fn net(max_layers: usize) -> impl Strategy<Value = Net> {
    vec(layer_data(), 1..=max_layers).prop_map(|ls| {
        Net::new(
            ls.into_iter()
                .enumerate()
                .map(|(i, (s, b, d))| (LayerSpec::new(format!("layer{i}"), &s, b).unwrap(), d))
                .collect(),
        )
    })
}

/// A valid `(prune, unify)` pair: random, decimal tenths, or an edge case.
fn ratio_pair() -> impl Strategy<Value = (f64, f64)> {
    prop_oneof![
        2 => (0.0f64..=1.0, 0.0f64..=1.0).prop_map(|(p, t)| (p, t * (1.0 - p))),
        2 => (0u32..=10, 0u32..=10)
            .prop_map(|(a, b)| (f64::from(a) / 10.0, f64::from(b.min(10 - a)) / 10.0)),
        1 => prop::sample::select(vec![
            (0.0, 0.0),
            (1.0, 0.0),
            (0.0, 1.0),
            (0.5, 0.5),
            (0.3, 0.7),
            (0.01, 0.0),
            (0.0, 0.01),
            (0.99, 0.01),
        ]),
    ]
}

/// A random net (1–3 layers) with a random per-layer or global mode.
fn case() -> impl Strategy<Value = (Net, SelectionMode)> {
    (net(3), any::<bool>(), vec(ratio_pair(), 3)).prop_map(|(n, global, pairs)| {
        let m = mode_of(&n, global, &pairs);
        (n, m)
    })
}

// ---------------------------------------------------------------------------------------
// Checks (shared by the property tests and the plain tests)
// ---------------------------------------------------------------------------------------

/// Property 2: exact counts per group.
fn check_counts(net: &Net, mode: &SelectionMode, out: &[LayerProjection]) -> TestResult {
    let blocks = net.blocks();
    for g in expected_groups(net, &blocks, mode) {
        let count = |s| {
            g.members
                .iter()
                .filter(|&&i| state_of(out, &blocks[i]) == s)
                .count()
        };
        let (p, u) = (count(BlockState::Pruned), count(BlockState::Unified));
        prop_assert_eq!(
            p,
            g.prune,
            "group {} ({} blocks): pruned count actual {}, expected {}",
            g.scope,
            g.members.len(),
            p,
            g.prune
        );
        prop_assert_eq!(
            u,
            g.unify,
            "group {} ({} blocks): unified count actual {}, expected {}",
            g.scope,
            g.members.len(),
            u,
            g.unify
        );
    }
    Ok(())
}

/// Property 3: every block is the L2-closest point of its state; magnitudes and sign words
/// agree with the states.
fn check_blocks_l2(net: &Net, out: &[LayerProjection]) -> TestResult {
    prop_assert_eq!(out.len(), net.layers.len(), "one projection per layer");
    for (l, (layer, o)) in net.layers.iter().zip(out).enumerate() {
        let grid = layer.grid();
        prop_assert_eq!(
            o.z.len(),
            layer.view.len(),
            "layer {}: z length",
            layer.name
        );
        prop_assert_eq!(
            o.states.len(),
            grid.num_blocks(),
            "layer {}: states",
            layer.name
        );
        prop_assert_eq!(
            o.magnitudes.len(),
            grid.num_blocks(),
            "layer {}",
            layer.name
        );
        let words = proj::sign_words(&grid, &net.data[l]);
        let wpb = grid.block.len().div_ceil(32);
        prop_assert_eq!(words.len(), grid.num_blocks() * wpb);
        let stats = proj::block_stats(&grid, &net.data[l]);
        for blk in net.blocks().iter().filter(|b| b.layer == l) {
            let b = blk.b;
            let z: Vec<f32> = blk.idx.iter().map(|&i| o.z[i]).collect();
            let a = o.magnitudes[b];
            let st = o.states[b];
            let name = &layer.name;
            // block_stats against the statistics recomputed here.
            let s = stats[b];
            prop_assert_eq!(s.len, blk.len(), "layer {} block {}: len", name, b);
            prop_assert!(
                s.prune_err == blk.ep && s.mean_abs == blk.mean,
                "layer {name} block {b}: stats actual (e_p {}, mean {}), expected ({}, {})",
                s.prune_err,
                s.mean_abs,
                blk.ep,
                blk.mean
            );
            let tol_u = 1e-12 * blk.ep + f64::MIN_POSITIVE;
            prop_assert!(
                (s.unify_err - blk.eu).abs() <= tol_u,
                "layer {name} block {b}: e_u actual {}, expected {}",
                s.unify_err,
                blk.eu
            );
            let w = &words[b * wpb..(b + 1) * wpb];
            // Sign words cover every block in full-tile numbering, also at ragged edges: the
            // block's k-th weight (row-major over its extent) is (r, c) = (k / cols, k % cols)
            // of the tile, bit r·bc + c, set exactly when it is negative; no other bit is set.
            let (ext_cols, bc) = (grid.extent(b).cols, grid.block.cols);
            let mut want = vec![0u32; wpb];
            for (k, &vi) in blk.v.iter().enumerate() {
                let p = (k / ext_cols) * bc + k % ext_cols;
                want[p / 32] |= u32::from(vi < 0.0) << (p % 32);
            }
            prop_assert!(
                w == want,
                "layer {name} block {b}: sign words actual {w:?}, expected {want:?} (v = {:?})",
                blk.v
            );
            match st {
                BlockState::Pruned | BlockState::Dense => {
                    prop_assert!(
                        a == 0.0,
                        "layer {name} block {b} ({st:?}): magnitude actual {a}, expected 0"
                    );
                    if st == BlockState::Pruned {
                        for (k, &zi) in z.iter().enumerate() {
                            prop_assert!(
                                zi == 0.0,
                                "layer {name} block {b} (pruned) weight {k}: actual {zi}, expected 0"
                            );
                        }
                    } else {
                        for (k, (&zi, &vi)) in z.iter().zip(&blk.v).enumerate() {
                            prop_assert!(
                                zi.to_bits() == vi.to_bits(),
                                "layer {name} block {b} (dense) weight {k}: actual {zi}, expected {vi}"
                            );
                        }
                    }
                }
                BlockState::Unified => {
                    prop_assert!(
                        a >= 0.0 && a.is_finite() && !a.is_sign_negative(),
                        "layer {name} block {b}: magnitude actual {a}, expected finite ≥ +0"
                    );
                    // a = mean|v|, rounded once to f32 (within 1 f32 ulp of the f64 mean).
                    let dm = (f64::from(a) - blk.mean).abs();
                    prop_assert!(
                        dm <= f64::from(f32_ulp(a)),
                        "layer {name} block {b}: magnitude actual {a}, expected {} (mean|v|)",
                        blk.mean
                    );
                    for (k, (&zi, &vi)) in z.iter().zip(&blk.v).enumerate() {
                        let neg = vi < 0.0; // sign of ±0 is +1
                        prop_assert!(
                            zi.abs() == a && zi.is_sign_negative() == neg,
                            "layer {name} block {b} (unified) weight {k}: actual {zi}, expected {}{a} (v = {vi})",
                            if neg { "-" } else { "+" }
                        );
                    }
                    // Optimality of a: no perturbation ±δ reduces Σ (v − z)².
                    let e0 = unified_err(&blk.v, f64::from(a));
                    let af = f64::from(a);
                    let mut others = vec![
                        f64::from(f32_up(a)),
                        f64::from(f32_down(a)),
                        af * (1.0 + 1e-3),
                        af * (1.0 - 1e-3),
                        af * 1.5,
                        af * 0.5,
                        af + 1e-3,
                        af - 1e-3,
                    ];
                    others.retain(|x| x.is_finite() && *x >= 0.0 && *x <= f64::from(f32::MAX));
                    for a2 in others {
                        let e2 = unified_err(&blk.v, a2);
                        prop_assert!(
                            e2 >= e0 * (1.0 - 1e-12),
                            "layer {name} block {b}: a = {a} gives error {e0}, but a' = {a2} gives smaller {e2}"
                        );
                    }
                }
            }
            // The block's values equal this file's own closest point in that state.
            let want = closest(&blk.v, st);
            for (k, (&zi, &wi)) in z.iter().zip(&want).enumerate() {
                prop_assert!(
                    zi == wi,
                    "layer {name} block {b} ({st:?}) weight {k}: actual {zi}, expected {wi}"
                );
            }
        }
    }
    Ok(())
}

/// Whether the selection key of `p` must rank strictly before that of `q` on an exact tie.
/// In global mode keys are normalised; ties are only compared exactly when both block
/// lengths are powers of two, where `e·(1/n)` (what the reference computes) equals `e/n`
/// exactly — see `global_exact_ties_go_to_lower_number_for_any_block_size` for the rest.
fn tie_comparable(normalise: bool, p: &Blk, q: &Blk) -> bool {
    !normalise || (p.len().is_power_of_two() && q.len().is_power_of_two())
}

/// The selection is a sorted prefix: every pruned block ranks at or before every other block
/// of its group by `e_p` (normalised in global mode), every unified block at or before every
/// dense one by `e_u`, ties going to the lower network block number.
fn check_selection_order(net: &Net, mode: &SelectionMode, out: &[LayerProjection]) -> TestResult {
    let blocks = net.blocks();
    for g in expected_groups(net, &blocks, mode) {
        let key = |e: f64, blk: &Blk| {
            if g.normalise { e / blk.len() as f64 } else { e }
        };
        for (first, second, err, what) in [
            (
                BlockState::Pruned,
                None,
                (|b: &Blk| b.ep) as fn(&Blk) -> f64,
                "e_p",
            ),
            (
                BlockState::Unified,
                Some(BlockState::Dense),
                (|b: &Blk| b.eu) as fn(&Blk) -> f64,
                "e_u",
            ),
        ] {
            let chosen: Vec<usize> = g
                .members
                .iter()
                .copied()
                .filter(|&i| state_of(out, &blocks[i]) == first)
                .collect();
            let rest: Vec<usize> = g
                .members
                .iter()
                .copied()
                .filter(|&i| {
                    let s = state_of(out, &blocks[i]);
                    s != first && second.is_none_or(|t| s == t)
                })
                .collect();
            for &p in &chosen {
                let (bp, kp) = (&blocks[p], key(err(&blocks[p]), &blocks[p]));
                for &q in &rest {
                    let (bq, kq) = (&blocks[q], key(err(&blocks[q]), &blocks[q]));
                    let tol = if g.normalise { 1e-12 * kp.max(kq) } else { 0.0 };
                    prop_assert!(
                        kp <= kq + tol,
                        "group {}: layer {} block {} ({first:?}, {what} key {kp}) ranks after layer {} block {} ({:?}, key {kq})",
                        g.scope,
                        net.name(bp.layer),
                        bp.b,
                        net.name(bq.layer),
                        bq.b,
                        state_of(out, bq)
                    );
                    if kp == kq && tie_comparable(g.normalise, bp, bq) {
                        prop_assert!(
                            p < q,
                            "group {}: tie on {what} key {kp}: layer {} block {} chosen ({first:?}) over lower-numbered layer {} block {}",
                            g.scope,
                            net.name(bp.layer),
                            bp.b,
                            net.name(bq.layer),
                            bq.b
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// Property 1: `Π(Π(x)) = Π(x)`.
///
/// Why this holds exactly for the values: the counts `(p, u)` depend only on the ratios and
/// the block counts, which the second pass shares with the first. After the first pass the
/// `p` pruned blocks have `e_p = 0` (the smallest key possible), so the second pass prunes
/// only blocks whose `e_p` is 0, i.e. all-zero blocks, whose projection is themselves. The
/// first pass's `p + u` pruned and unified blocks all have `|z_i|` equal within the block,
/// and for such a block the f64 mean of `n` equal f32 magnitudes is exact (`k·a` fits in
/// f64's 53 bits for every partial sum), so `e_u = 0` exactly; conversely `e_u = 0` in f64
/// only when every `|z_i|` equals the mean (a non-zero difference of an f32 and an f64 is
/// ≥ 2^-201 in magnitude, whose square does not underflow). So the second pass unifies
/// only blocks with equal magnitudes, whose unified value is themselves (a re-rounds to
/// the same f32). Dense blocks are copied. Normalising keys (global mode) keeps zero at
/// zero, so the argument holds for both modes.
///
/// Hence `z₂ == z₁` element-wise, bit-for-bit except that a zero may change sign (a
/// unified block whose `a` rounds to 0 writes `-0.0` for negative inputs, and a dense `-0.0`
/// may be pruned or unified to `+0.0` on the second pass). The *states* may change only
/// through ties at those zero keys: when the first output has exactly `p` all-zero blocks
/// and exactly `p + u` equal-magnitude blocks in a group, the second pass must choose the
/// same states and magnitudes; otherwise the second pass's pruned blocks must be all-zero
/// and its unified blocks equal-magnitude in `z₁`.
fn check_idempotent(net: &Net, mode: &SelectionMode, out1: &[LayerProjection]) -> TestResult {
    let net2 = net.with_data(out1.iter().map(|o| o.z.clone()).collect());
    let out2 = net2.project(mode);
    for (l, (o1, o2)) in out1.iter().zip(&out2).enumerate() {
        let grid = net.layers[l].grid();
        for (i, (&a, &b)) in o1.z.iter().zip(&o2.z).enumerate() {
            prop_assert!(
                a.to_bits() == b.to_bits() || (a == 0.0 && b == 0.0),
                "layer {} block {} flat index {}: Π(Π(x)) actual {}, expected Π(x) = {}",
                net.name(l),
                grid.block_of(i / grid.view.cols, i % grid.view.cols),
                i,
                b,
                a
            );
        }
    }
    let blocks2 = net2.blocks();
    for g in expected_groups(&net2, &blocks2, mode) {
        let zero = |blk: &Blk| blk.v.iter().all(|&x| x == 0.0);
        let equal = |blk: &Blk| blk.v.iter().all(|&x| x.abs() == blk.v[0].abs());
        let n_zero = g.members.iter().filter(|&&i| zero(&blocks2[i])).count();
        let n_equal = g.members.iter().filter(|&&i| equal(&blocks2[i])).count();
        let tie_free = n_zero == g.prune && n_equal == g.prune + g.unify;
        for &i in &g.members {
            let blk = &blocks2[i];
            let (s1, s2) = (state_of(out1, blk), state_of(&out2, blk));
            let (m1, m2) = (
                out1[blk.layer].magnitudes[blk.b],
                out2[blk.layer].magnitudes[blk.b],
            );
            let name = net.name(blk.layer);
            match s2 {
                BlockState::Pruned => prop_assert!(
                    zero(blk),
                    "layer {name} block {}: pass 2 pruned a non-zero block of Π(x): {:?}",
                    blk.b,
                    blk.v
                ),
                BlockState::Unified => prop_assert!(
                    equal(blk) && m2 == blk.v[0].abs(),
                    "layer {name} block {}: pass 2 unified Π(x) = {:?} with magnitude actual {m2}, expected {}",
                    blk.b,
                    blk.v,
                    blk.v[0].abs()
                ),
                BlockState::Dense => {}
            }
            if tie_free {
                prop_assert!(
                    s1 == s2 && m1.to_bits() == m2.to_bits(),
                    "layer {name} block {} (no ties at zero keys): pass 2 state/magnitude actual {s2:?}/{m2}, expected {s1:?}/{m1}",
                    blk.b
                );
            }
        }
    }
    // A third pass changes nothing either.
    let out3 = net.with_data(out2.iter().map(|o| o.z.clone()).collect());
    let out3 = out3.project(mode);
    for (l, (o2, o3)) in out2.iter().zip(&out3).enumerate() {
        prop_assert!(
            o2.z.iter().zip(&o3.z).all(|(a, b)| a == b),
            "layer {}: Π³(x) differs from Π²(x)",
            net.name(l)
        );
    }
    Ok(())
}

/// Property 4: brute force over every assignment with the reference's counts. With only
/// pruning (or only unification) the objective is `Σ_b e(b)` over the chosen blocks
/// (normalised by block size in global mode, which is what that mode minimises).
fn check_brute_force(net: &Net, mode: &SelectionMode, out: &[LayerProjection]) -> TestResult {
    let blocks = net.blocks();
    for g in expected_groups(net, &blocks, mode) {
        let scale = |blk: &Blk| {
            if g.normalise {
                1.0 / blk.len() as f64
            } else {
                1.0
            }
        };
        let ours: f64 = g
            .members
            .iter()
            .map(|&i| {
                let blk = &blocks[i];
                let z: Vec<f32> = blk.idx.iter().map(|&k| out[blk.layer].z[k]).collect();
                sq_err(&blk.v, &z) * scale(blk)
            })
            .sum();
        let (state, k) = if g.prune > 0 {
            prop_assert_eq!(g.unify, 0, "brute force needs one non-zero ratio");
            (BlockState::Pruned, g.prune)
        } else {
            (BlockState::Unified, g.unify)
        };
        let cost: Vec<f64> = g
            .members
            .iter()
            .map(|&i| {
                let blk = &blocks[i];
                sq_err(&blk.v, &closest(&blk.v, state)) * scale(blk)
            })
            .collect();
        let n = g.members.len();
        prop_assert!(n <= 16, "brute force on {n} blocks");
        let mut best = f64::INFINITY;
        let mut best_mask = 0u32;
        for mask in 0u32..(1 << n) {
            if mask.count_ones() as usize != k {
                continue;
            }
            let c: f64 = (0..n)
                .filter(|&j| mask >> j & 1 == 1)
                .map(|j| cost[j])
                .sum();
            if c < best {
                best = c;
                best_mask = mask;
            }
        }
        let tol = 1e-9 * best.max(ours);
        prop_assert!(
            ours <= best + tol,
            "group {}: reference total error {ours} ({:?} blocks {:?}), but {:?} blocks {:?} give {best}",
            g.scope,
            state,
            g.members
                .iter()
                .filter(|&&i| state_of(out, &blocks[i]) == state)
                .map(|&i| (blocks[i].layer, blocks[i].b))
                .collect::<Vec<_>>(),
            state,
            (0..n)
                .filter(|&j| best_mask >> j & 1 == 1)
                .map(|j| (blocks[g.members[j]].layer, blocks[g.members[j]].b))
                .collect::<Vec<_>>()
        );
    }
    Ok(())
}

fn states_of(out: &LayerProjection) -> String {
    out.states
        .iter()
        .map(|s| match s {
            BlockState::Dense => 'D',
            BlockState::Unified => 'U',
            BlockState::Pruned => 'P',
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Property 1 (both modes).
    #[test]
    fn prop_idempotent((net, mode) in case()) {
        let out = net.project(&mode);
        check_idempotent(&net, &mode, &out)?;
    }

    /// Property 2 (both modes), plus determinism.
    #[test]
    fn prop_exact_counts((net, mode) in case()) {
        let out = net.project(&mode);
        check_counts(&net, &mode, &out)?;
        let again = net.project(&mode);
        prop_assert!(out == again, "two projections of the same input differ");
    }

    /// Property 3 (both modes).
    #[test]
    fn prop_blocks_are_l2_closest((net, mode) in case()) {
        let out = net.project(&mode);
        check_blocks_l2(&net, &out)?;
    }

    /// Selection order (properties 7 and 8 on random inputs): a sorted prefix by key.
    #[test]
    fn prop_selection_is_sorted_prefix((net, mode) in case()) {
        let out = net.project(&mode);
        check_selection_order(&net, &mode, &out)?;
    }

    /// Per-layer mode treats layers independently: each layer projects as if alone.
    #[test]
    fn prop_per_layer_independent(n in net(3), pairs in vec(ratio_pair(), 3)) {
        let mode = mode_of(&n, false, &pairs);
        let out = n.project(&mode);
        for l in 0..n.layers.len() {
            let alone = Net::new(vec![(n.layers[l].clone(), n.data[l].clone())]);
            let one = alone.project(&mode_of(&alone, false, &pairs[l..]));
            prop_assert!(
                one[0] == out[l],
                "layer {}: states alone {} vs in network {}",
                n.name(l),
                states_of(&one[0]),
                states_of(&out[l])
            );
        }
    }

    /// Global mode equals per-layer mode on a single layer whose blocks all have the same
    /// power-of-two size (normalisation is then an exact monotone rescaling).
    #[test]
    fn prop_global_equals_per_layer_on_uniform_layer(
        (lb, cb) in (0u32..=2, 0u32..=3),
        (gr, gc) in (1usize..=4, 1usize..=4),
        pair in ratio_pair(),
        seed in vec(weight(), 4 * 8 * 4 * 4),
    ) {
        let (br, bc) = (1usize << lb, 1usize << cb);
        let (rows, cols) = (gr * br, gc * bc);
        let n = Net::of(&[(rows, cols, br, bc, seed[..rows * cols].to_vec())]);
        let per = n.project(&mode_of(&n, false, &[pair]));
        let glob = n.project(&mode_of(&n, true, &[pair]));
        prop_assert!(
            per == glob,
            "layer l0 {}x{} blocks {}x{}: global states {} vs per-layer {}",
            rows, cols, br, bc, states_of(&glob[0]), states_of(&per[0])
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Property 4, per-layer mode: one tiny layer (≤ 8 blocks), one non-zero ratio.
    #[test]
    fn prop_brute_force_per_layer(
        (rows, cols, (br, bc)) in (1usize..=3, 1usize..=4, prop::sample::select(vec![
            (1usize, 2usize), (2, 2), (2, 1), (1, 3), (1, 1), (3, 4), (4, 4)
        ])).prop_filter("at most 8 blocks", |(r, c, (br, bc))| r.div_ceil(*br) * c.div_ceil(*bc) <= 8),
        prune_only in any::<bool>(),
        r in prop_oneof![0.0f64..=1.0, (0u32..=10).prop_map(|k| f64::from(k) / 10.0)],
        seed in vec(weight(), 12),
    ) {
        let n = Net::of(&[(rows, cols, br, bc, seed[..rows * cols].to_vec())]);
        let pair = if prune_only { (r, 0.0) } else { (0.0, r) };
        let mode = mode_of(&n, false, &[pair]);
        let out = n.project(&mode);
        check_counts(&n, &mode, &out)?;
        check_brute_force(&n, &mode, &out)?;
    }

    /// Property 4, global mode: 1–3 tiny layers with ragged edges (≤ 12 blocks in all); the
    /// normalised total is what the global mode minimises.
    #[test]
    fn prop_brute_force_global(
        shapes in vec((1usize..=3, 1usize..=3, prop::sample::select(vec![
            (1usize, 2usize), (2, 2), (2, 1), (1, 1), (2, 3)
        ])), 1..=3).prop_filter("at most 12 blocks", |ls| {
            ls.iter().map(|(r, c, (br, bc))| r.div_ceil(*br) * c.div_ceil(*bc)).sum::<usize>() <= 12
        }),
        prune_only in any::<bool>(),
        r in prop_oneof![0.0f64..=1.0, (0u32..=10).prop_map(|k| f64::from(k) / 10.0)],
        seed in vec(weight(), 27),
    ) {
        let n = Net::of(
            &shapes
                .iter()
                .enumerate()
                .map(|(i, &(r, c, (br, bc)))| (r, c, br, bc, seed[9 * i..9 * i + r * c].to_vec()))
                .collect::<Vec<_>>(),
        );
        let pair = if prune_only { (r, 0.0) } else { (0.0, r) };
        let mode = mode_of(&n, true, &[pair]);
        let out = n.project(&mode);
        check_counts(&n, &mode, &out)?;
        check_brute_force(&n, &mode, &out)?;
    }

    /// `Ratios::counts` is the slack ceiling, clamped; decimal ratios never round up past
    /// their exact value (n up to 10⁶).
    #[test]
    fn prop_ratio_counts(
        (p, u) in ratio_pair(),
        n in prop_oneof![0usize..=50, 0usize..=1_000_000],
        (k, m) in (0u32..=100, 1usize..=10_000),
    ) {
        let r = Ratios::new(p, u, "l").unwrap();
        let (cp, cu) = r.counts(n);
        prop_assert!(is_slack_ceil(cp, p, n), "n {}: pruned actual {}, expected ⌈{}·n⌉", n, cp, p);
        let guess = (u * n as f64) as usize;
        let cu_raw = (guess.saturating_sub(2)..=(guess + 2).min(n)).find(|&c| is_slack_ceil(c, u, n));
        prop_assert!(cu_raw.is_some(), "no slack ceiling for unify {} n {}", u, n);
        let want_u = cu_raw.unwrap_or(0).min(n - cp);
        prop_assert_eq!(cu, want_u, "n {}: unified actual {}, expected {}", n, cu, want_u);
        // Exact decimals: r = k/100 on n = 100·m blocks prunes exactly k·m.
        let r = Ratios::new(f64::from(k) / 100.0, 0.0, "l").unwrap();
        let (cp, _) = r.counts(100 * m);
        prop_assert_eq!(cp, k as usize * m, "ratio {}/100 of {} blocks", k, 100 * m);
    }

    /// Property 5: the block grid partitions the matrix, in row-major block order (blocks
    /// up to the 32-per-side limit, often larger than the matrix itself).
    #[test]
    fn prop_grid_partitions_matrix(
        rows in 1usize..=40, cols in 1usize..=40,
        br in 1usize..=MAX_BLOCK_SIDE, bc in 1usize..=MAX_BLOCK_SIDE,
    ) {
        let grid = BlockGrid::new(GemmView { rows, cols }, BlockShape::new(br, bc).unwrap());
        prop_assert_eq!(grid.num_blocks(), rows.div_ceil(br) * cols.div_ceil(bc));
        let mut owner = vec![usize::MAX; rows * cols];
        let mut prev: Option<BlockExtent> = None;
        for b in 0..grid.num_blocks() {
            let e = grid.extent(b);
            prop_assert!(e.rows >= 1 && e.cols >= 1 && e.rows <= br && e.cols <= bc,
                "block {}: extent {:?} for block {}x{}", b, e, br, bc);
            prop_assert!(e.row0 + e.rows <= rows && e.col0 + e.cols <= cols,
                "block {}: extent {:?} outside {}x{}", b, e, rows, cols);
            // Ragged only at the last block row / column.
            let full_r = e.row0 + br <= rows;
            let full_c = e.col0 + bc <= cols;
            prop_assert_eq!(e.rows == br, full_r, "block {}: rows {} of {}", b, e.rows, br);
            prop_assert_eq!(e.cols == bc, full_c, "block {}: cols {} of {}", b, e.cols, bc);
            if let Some(p) = prev {
                prop_assert!((p.row0, p.col0) < (e.row0, e.col0), "block {} not row-major", b);
            }
            prev = Some(e);
            let idx: Vec<usize> = e.indices(cols).collect();
            prop_assert_eq!(idx.len(), e.len());
            prop_assert!(idx.windows(2).all(|w| w[0] < w[1]), "block {}: indices not row-major", b);
            for i in idx {
                prop_assert_eq!(owner[i], usize::MAX, "element {} in two blocks", i);
                owner[i] = b;
                prop_assert_eq!(grid.block_of(i / cols, i % cols), b,
                    "block_of({}, {}) actual {}, expected {}", i / cols, i % cols,
                    grid.block_of(i / cols, i % cols), b);
            }
        }
        prop_assert!(owner.iter().all(|&o| o != usize::MAX), "an element in no block");
    }

    /// Property 5: conv GEMM views and `to_gemm`/`from_gemm` for both layouts.
    #[test]
    fn prop_conv_layouts(
        (co, ci, kh, kw) in (1usize..=6, 1usize..=6, 1usize..=5, 1usize..=5),
        layout in prop::sample::select(vec![ConvLayout::ChannelMajor, ConvLayout::PositionMajor]),
    ) {
        let shape = [co, ci, kh, kw];
        let spec = LayerSpec::new("conv", &shape, BlockShape::default()).unwrap();
        prop_assert_eq!(spec.view, GemmView { rows: co, cols: ci * kh * kw });
        let n = co * ci * kh * kw;
        // PyTorch element (o, c, y, x) holds its own flat index.
        let data: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let g = to_gemm(&data, &shape, layout);
        prop_assert_eq!(g.len(), n);
        let cols = ci * kh * kw;
        for o in 0..co {
            for c in 0..ci {
                for y in 0..kh {
                    for x in 0..kw {
                        let torch = ((o * ci + c) * kh + y) * kw + x;
                        let col = match layout {
                            ConvLayout::ChannelMajor => (c * kh + y) * kw + x,
                            ConvLayout::PositionMajor => (y * kw + x) * ci + c,
                        };
                        prop_assert_eq!(g[o * cols + col], torch as f32,
                            "{:?} (o {}, c {}, y {}, x {}): gemm col {}", layout, o, c, y, x, col);
                    }
                }
            }
        }
        prop_assert_eq!(from_gemm(&g, &shape, layout), data.clone(), "{:?}: from_gemm ∘ to_gemm", layout);
        prop_assert_eq!(to_gemm(&from_gemm(&data, &shape, layout), &shape, layout), data.clone(),
            "{:?}: to_gemm ∘ from_gemm", layout);
        // 2-D shapes are copied for either layout.
        prop_assert_eq!(to_gemm(&data, &[co, n / co], layout), data.clone());
        prop_assert_eq!(from_gemm(&data, &[co, n / co], layout), data);
    }

    /// Property 6: the first non-finite value is reported with layer, index, row and col.
    #[test]
    fn prop_non_finite_named(
        (rows, cols) in (1usize..=9, 1usize..=9),
        pos in any::<prop::sample::Index>(),
        later in any::<prop::sample::Index>(),
        bad in prop::sample::select(vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -f32::NAN]),
        in_second in any::<bool>(),
    ) {
        let len = rows * cols;
        let i = pos.index(len);
        let mut d = vec![0.5f32; len];
        d[i] = bad;
        let j = i + later.index(len - i);
        d[j] = f32::NAN; // a later (or the same) non-finite value is not the one reported
        d[i] = bad;
        let good = vec![1.0f32; 6];
        let n = if in_second {
            Net::of(&[(2, 3, 1, 2, good), (rows, cols, 2, 2, d)])
        } else {
            Net::of(&[(rows, cols, 2, 2, d), (2, 3, 1, 2, good)])
        };
        let bad_layer = if in_second { "l1" } else { "l0" };
        for mode in [mode_of(&n, false, &[(0.5, 0.2); 2]), mode_of(&n, true, &[(0.0, 0.0)])] {
            match n.try_project(&mode) {
                Err(e @ Error::NonFinite { .. }) => {
                    let msg = e.to_string();
                    let Error::NonFinite { layer, index, row, col, value } = e else { unreachable!() };
                    prop_assert_eq!(&layer, bad_layer);
                    prop_assert_eq!((index, row, col), (i, i / cols, i % cols),
                        "layer {}: (index, row, col) actual {:?}, expected {:?}", layer, (index, row, col), (i, i / cols, i % cols));
                    prop_assert!(value.to_bits() == bad.to_bits() || (value.is_nan() && bad.is_nan()),
                        "layer {}: value actual {}, expected {}", layer, value, bad);
                    for needle in [
                        format!("{bad_layer:?}"),
                        format!("index {i}"),
                        format!("row {}", i / cols),
                        format!("col {}", i % cols),
                    ] {
                        prop_assert!(msg.contains(&needle), "message {:?} lacks {:?}", msg, needle);
                    }
                }
                other => prop_assert!(false, "expected Error::NonFinite, got {:?}", other.map(|_| ())),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Plain tests
// ---------------------------------------------------------------------------------------

fn run_all_checks(net: &Net, mode: &SelectionMode) -> Vec<LayerProjection> {
    let out = net.project(mode);
    check_counts(net, mode, &out).unwrap();
    check_blocks_l2(net, &out).unwrap();
    check_selection_order(net, mode, &out).unwrap();
    check_idempotent(net, mode, &out).unwrap();
    out
}

/// Property 5: a 1×1 matrix, with a 1×1 block and with blocks larger than the matrix.
#[test]
fn one_by_one_and_oversized_blocks() {
    for (br, bc) in [(1, 1), (4, 4), (32, 32), (1, 8), (8, 1)] {
        for (p, u, want) in [
            (0.0, 0.0, BlockState::Dense),
            (1.0, 0.0, BlockState::Pruned),
            (0.0, 1.0, BlockState::Unified),
            (0.01, 0.0, BlockState::Pruned),
            (0.0, 0.01, BlockState::Unified),
        ] {
            let n = Net::of(&[(1, 1, br, bc, vec![-2.5])]);
            let out = run_all_checks(&n, &mode_of(&n, false, &[(p, u)]));
            assert_eq!(
                out[0].states,
                vec![want],
                "1x1 block {br}x{bc} ratios ({p}, {u})"
            );
            let z = match want {
                BlockState::Pruned => 0.0,
                _ => -2.5,
            };
            assert_eq!(out[0].z, vec![z], "1x1 block {br}x{bc} ratios ({p}, {u})");
        }
    }
    // A 3×5 matrix inside one 4×8 block: one ragged block of 15 weights.
    let d: Vec<f32> = (0..15).map(|i| i as f32 - 7.0).collect();
    let n = Net::of(&[(3, 5, 4, 8, d.clone())]);
    let out = run_all_checks(&n, &mode_of(&n, false, &[(0.0, 1.0)]));
    let a = (56.0f64 / 15.0) as f32; // mean |v| of -7..=7
    assert_eq!(out[0].magnitudes, vec![a]);
    assert_eq!(out[0].z[0], -a);
    assert_eq!(out[0].z[7], a, "sign of 0 is +1");
}

/// Property 5: ragged edges on prime sizes, exact states.
#[test]
fn ragged_prime_matrix() {
    // 7×11 with 4×4 blocks: 2×3 = 6 blocks, sizes 16 16 12 / 12 12 9.
    let mut d = vec![0.0f32; 77];
    let grid = BlockGrid::new(
        GemmView { rows: 7, cols: 11 },
        BlockShape::new(4, 4).unwrap(),
    );
    let sizes: Vec<usize> = (0..6).map(|b| grid.extent(b).len()).collect();
    assert_eq!(sizes, vec![16, 16, 12, 12, 12, 9]);
    // Block b holds magnitude (b + 1) with alternating signs.
    for (i, x) in d.iter_mut().enumerate() {
        let b = grid.block_of(i / 11, i % 11);
        *x = (b + 1) as f32 * if i % 2 == 0 { 1.0 } else { -1.0 };
    }
    // Block 5 unequal magnitudes so its e_u > 0.
    d[76] = 100.0;
    let n = Net::of(&[(7, 11, 4, 4, d)]);
    // ⌈0.34·6⌉ = 3 pruned (smallest Σv²: blocks 0, 1, 2), ⌈0.5·6⌉ = 3 unified.
    let out = run_all_checks(&n, &mode_of(&n, false, &[(0.34, 0.5)]));
    assert_eq!(states_of(&out[0]), "PPPUUU");
    assert_eq!(out[0].magnitudes[3..5], [4.0, 5.0]);
    // Only 1 unified: the blocks 3, 4 (e_u = 0) tie, the lower number wins; 5 stays dense.
    let out = run_all_checks(&n, &mode_of(&n, false, &[(0.5, 1.0 / 6.0)]));
    assert_eq!(states_of(&out[0]), "PPPUDD");
}

/// Property 5: conv layers are projected in their GEMM view for both layouts; a block of a
/// position-major view gathers the same (y, x) position across channels.
#[test]
fn conv_layer_projection_both_layouts() {
    let shape = [2usize, 3, 2, 2]; // GEMM 2 × 12
    // Torch element (o, c, y, x) = (c + 1) · (-1)^(y + x), scaled by (o + 1).
    let mut t = vec![0.0f32; 24];
    for o in 0..2 {
        for c in 0..3 {
            for p in 0..4 {
                let s = if (p / 2 + p % 2) % 2 == 0 { 1.0 } else { -1.0 };
                t[(o * 3 + c) * 4 + p] = (c + 1) as f32 * (o + 1) as f32 * s;
            }
        }
    }
    for layout in [ConvLayout::ChannelMajor, ConvLayout::PositionMajor] {
        let block = BlockShape::new(1, 4).unwrap();
        let spec = LayerSpec::new("conv", &shape, block).unwrap();
        assert_eq!(spec.view, GemmView { rows: 2, cols: 12 });
        let g = to_gemm(&t, &shape, layout);
        let net = Net::new(vec![(spec, g.clone())]);
        let out = run_all_checks(&net, &mode_of(&net, false, &[(0.0, 0.5)]));
        // Channel-major 1×4 blocks are one channel's 2×2 kernel: equal magnitudes, e_u = 0
        // everywhere, so ties unify blocks 0, 1, 2 (the lowest numbers) of 6.
        // Position-major 1×4 blocks straddle channels (mixed magnitudes, e_u > 0).
        let back = from_gemm(&out[0].z, &shape, layout);
        match layout {
            ConvLayout::ChannelMajor => {
                assert_eq!(states_of(&out[0]), "UUUDDD", "{layout:?}");
                assert_eq!(back, t, "{layout:?}: unified channel kernels are unchanged");
            }
            ConvLayout::PositionMajor => {
                assert_eq!(out[0].states.len(), 6);
                // The round trip maps the projection back into torch order element by element.
                assert_eq!(to_gemm(&back, &shape, layout), out[0].z, "{layout:?}");
            }
        }
    }
}

/// Property 6: input, ratio and shape errors.
#[test]
fn errors_are_reported() {
    let n = Net::of(&[(2, 3, 1, 2, vec![1.0; 6]), (3, 3, 2, 2, vec![1.0; 9])]);
    let ok = mode_of(&n, false, &[(0.5, 0.0); 2]);
    // Wrong data length.
    let mut short = n.clone();
    short.data[1].pop();
    match short.try_project(&ok) {
        Err(Error::Shape { layer, why }) => {
            assert_eq!(layer, "l1");
            assert!(why.contains('8') && why.contains("3x3"), "{why}");
        }
        other => panic!("expected Error::Shape, got {:?}", other.map(|_| ())),
    }
    let mut long = n.clone();
    long.data[0].push(0.0);
    assert!(
        matches!(long.try_project(&ok), Err(Error::Shape { layer, .. }) if layer == "l0"),
        "longer data accepted"
    );
    // Wrong number of tensors.
    assert!(matches!(
        proj::project(&n.layers, &[&n.data[0][..]], &ok),
        Err(Error::Shape { .. })
    ));
    // Per-layer ratio count mismatch (both ways).
    for k in [1usize, 3] {
        let mode = SelectionMode::PerLayer(vec![Ratios::new(0.5, 0.0, "x").unwrap(); k]);
        match n.try_project(&mode) {
            Err(e @ Error::Shape { .. }) => {
                assert!(e.to_string().contains(&format!("{k} ratio pairs")), "{e}")
            }
            other => panic!(
                "{k} ratio pairs: expected Error::Shape, got {:?}",
                other.map(|_| ())
            ),
        }
    }
    // Ratios outside [0, 1], summing past 1, or not numbers.
    for (p, u) in [
        (-0.1, 0.0),
        (0.0, -1e-12),
        (1.1, 0.0),
        (0.0, 1.0 + 1e-6),
        (0.6, 0.5),
        (1.0, 0.1),
        (f64::NAN, 0.0),
        (0.0, f64::NAN),
        (f64::INFINITY, 0.0),
        (0.0, f64::NEG_INFINITY),
    ] {
        match Ratios::new(p, u, "scope-x") {
            Err(e @ Error::Ratios { .. }) => assert!(e.to_string().contains("scope-x"), "{e}"),
            other => panic!("ratios ({p}, {u}): expected Error::Ratios, got {other:?}"),
        }
    }
    for (p, u) in [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (0.3, 0.7), (0.1, 0.9)] {
        assert!(Ratios::new(p, u, "s").is_ok(), "ratios ({p}, {u}) refused");
    }
    // per_layer names the layers in its errors.
    match proj::per_layer(&n.layers, 0.7, 0.7) {
        Err(Error::Ratios { scope, .. }) => assert_eq!(scope, "l0"),
        other => panic!("expected Error::Ratios, got {other:?}"),
    }
    // Block shapes with a zero side.
    for (r, c) in [(0, 4), (4, 0), (0, 0), (70_000, 1)] {
        assert!(
            matches!(BlockShape::new(r, c), Err(Error::BlockShape { .. })),
            "block {r}x{c} accepted"
        );
    }
    for s in ["0x4", "4x0", "0x0", "x4", "4x", "-1x4"] {
        assert!(s.parse::<BlockShape>().is_err(), "block {s:?} parsed");
    }
    // Tensor shapes without a GEMM view.
    for s in [
        &[0usize, 3][..],
        &[3, 0],
        &[3],
        &[2, 2, 2],
        &[2, 0, 3, 3],
        &[2, 2, 3, 3, 1],
        &[],
    ] {
        assert!(
            matches!(
                LayerSpec::new("bad", s, BlockShape::default()),
                Err(Error::Shape { .. })
            ),
            "shape {s:?} accepted"
        );
    }
}

/// Property 7: global mode ranks by normalised error. A ragged 3×3 matrix with 2×2 blocks
/// has sizes 4, 2, 2, 1; block 0 (four 1s: e_p 4, normalised 1) and block 3 (one 1.5: e_p
/// 2.25, normalised 2.25) swap order between raw and normalised ranking.
#[test]
fn global_ranks_by_normalised_error() {
    #[rustfmt::skip]
    let d = vec![
        1.0, 1.0, 10.0,
        1.0, 1.0, 10.0,
        10.0, 10.0, 1.5,
    ];
    let n = Net::of(&[(3, 3, 2, 2, d)]);
    // 1 of 4 pruned: normalised → block 0; raw (per-layer) → block 3.
    let glob = run_all_checks(&n, &mode_of(&n, true, &[(0.25, 0.0)]));
    assert_eq!(
        states_of(&glob[0]),
        "PDDD",
        "global (normalised) pruning: actual {}, expected PDDD",
        states_of(&glob[0])
    );
    let per = run_all_checks(&n, &mode_of(&n, false, &[(0.25, 0.0)]));
    assert_eq!(
        states_of(&per[0]),
        "DDDP",
        "per-layer (raw) pruning: actual {}, expected DDDP",
        states_of(&per[0])
    );

    // Unification: block 0 = [1, 1, 1, 2] (e_u 0.75, normalised 0.1875), block 1 = [1, 2]
    // (e_u 0.5, normalised 0.25); blocks 2 and 3 have larger errors.
    #[rustfmt::skip]
    let d = vec![
        1.0, 1.0, 1.0,
        1.0, 2.0, 2.0,
        0.0, 9.0, 5.0,
    ];
    let n = Net::of(&[(3, 3, 2, 2, d)]);
    // Block 3 is a single weight: e_u = 0 always. Unify 2 of 4: {3, 0} vs {3, 1}.
    let glob = run_all_checks(&n, &mode_of(&n, true, &[(0.0, 0.5)]));
    assert_eq!(states_of(&glob[0]), "UDDU", "global unification");
    let per = run_all_checks(&n, &mode_of(&n, false, &[(0.0, 0.5)]));
    assert_eq!(states_of(&per[0]), "DUDU", "per-layer unification");

    // Across layers: a 2×2 layer of 1s (one 2×2 block: normalised 1) against a 1×1 layer
    // holding 1.5 (normalised 2.25, raw 2.25 < 4).
    let n = Net::of(&[(2, 2, 2, 2, vec![1.0; 4]), (1, 1, 1, 1, vec![1.5])]);
    let glob = run_all_checks(&n, &mode_of(&n, true, &[(0.5, 0.0)]));
    assert_eq!(
        (states_of(&glob[0]), states_of(&glob[1])),
        ("P".into(), "D".into()),
        "global across layers"
    );
}

/// Property 8: all-equal blocks select the lowest block numbers first.
#[test]
fn ties_go_to_lowest_block_numbers() {
    // Per-layer: 8×8 of 1s in 2×2 blocks (16 blocks, all e_p 4, e_u 0).
    let n = Net::of(&[(8, 8, 2, 2, vec![1.0; 64])]);
    let out = run_all_checks(&n, &mode_of(&n, false, &[(0.25, 0.25)]));
    assert_eq!(states_of(&out[0]), "PPPPUUUUDDDDDDDD");
    let out = run_all_checks(&n, &mode_of(&n, false, &[(0.1, 0.0)]));
    assert_eq!(states_of(&out[0]), "PPDDDDDDDDDDDDDD");
    // All zeros: e_p = e_u = 0 everywhere.
    let n = Net::of(&[(5, 5, 2, 2, vec![0.0; 25])]);
    let out = run_all_checks(&n, &mode_of(&n, false, &[(0.3, 0.4)]));
    assert_eq!(states_of(&out[0]), "PPPUUUUDD");
    // Global across layers with power-of-two ragged sizes (4, 2, 2, 1 and 2, 1): every
    // normalised e_p is exactly 1, so the first blocks in network order win.
    let n = Net::of(&[
        (3, 3, 2, 2, vec![-1.0; 9]),
        (2, 3, 2, 2, vec![1.0; 6]),
        (1, 1, 1, 1, vec![1.0]),
    ]);
    let out = run_all_checks(&n, &mode_of(&n, true, &[(0.4, 0.3)]));
    // 7 blocks: ⌈2.8⌉ = 3 pruned, ⌈2.1⌉ = 3 unified, network order.
    let got: Vec<String> = out.iter().map(states_of).collect();
    assert_eq!(got, vec!["PPPU", "UU", "D"]);
    // Unified blocks keep the signs: layer l0 block 3 is -1.
    assert_eq!(out[0].z[8], -1.0);
}

/// Property 8 in global mode for block sizes that are not powers of two: a 1×1 layer of
/// 1.0 (normalised e_p exactly 1) before a 7×7 layer of 1.0 in one 7×7 block (normalised
/// e_p = 49/49 = 1). docs/METHOD.md §2: equal errors → the lower block number (layer l0) is
/// pruned. The reference normalises as `e · (1/49)`, which rounds to 0.9999999999999999,
/// so it prunes layer l1's block instead.
#[test]
fn global_exact_ties_go_to_lower_number_for_any_block_size() {
    let n = Net::of(&[(1, 1, 1, 1, vec![1.0]), (7, 7, 7, 7, vec![1.0; 49])]);
    let out = n.project(&mode_of(&n, true, &[(0.5, 0.0)]));
    let got = (states_of(&out[0]), states_of(&out[1]));
    assert_eq!(
        got,
        ("P".to_string(), "D".to_string()),
        "layer l0 block 0 / layer l1 block 0: actual {got:?}, expected (P, D)"
    );
}

/// Property 2: decimal ratios do not round up past their exact count.
#[test]
fn decimal_ratio_counts() {
    for (p, u, n, want) in [
        (0.3, 0.7, 10, (3, 7)),
        (0.1, 0.2, 30, (3, 6)),
        (0.7, 0.3, 10, (7, 3)),
        (0.5, 0.5, 3, (2, 1)),
        (0.01, 0.0, 7, (1, 0)),
        (1.0, 0.0, 13, (13, 0)),
        (0.0, 1.0, 13, (0, 13)),
        (0.33, 0.67, 100, (33, 67)),
        // 0.07·100 = 7.000000000000001 and 0.14·100 = 14.000000000000002 in f64: the slack.
        (0.07, 0.14, 100, (7, 14)),
        (0.56, 0.0, 1_000_000, (560_000, 0)),
        (0.0, 0.0, 0, (0, 0)),
        (1.0, 0.0, 0, (0, 0)),
    ] {
        let got = Ratios::new(p, u, "l").unwrap().counts(n);
        assert_eq!(got, want, "ratios ({p}, {u}) of {n} blocks");
    }
    // The same through the projection: 10 blocks, 0.3 / 0.7.
    let n = Net::of(&[(
        1,
        10,
        1,
        1,
        (0..10).map(|i| i as f32 * 0.37 - 1.0).collect(),
    )]);
    let out = run_all_checks(&n, &mode_of(&n, false, &[(0.3, 0.7)]));
    let c = |s| out[0].states.iter().filter(|&&x| x == s).count();
    assert_eq!((c(BlockState::Pruned), c(BlockState::Unified)), (3, 7));
}

/// Idempotence with signed zeros and a unified magnitude that rounds to 0 in f32.
#[test]
fn idempotent_with_signed_zero_and_vanishing_magnitude() {
    // Block [-min_subnormal, 0]: mean|v| = 2^-150 rounds (to even) to 0 → z = [-0.0, +0.0].
    let tiny = f32::from_bits(1);
    let n = Net::of(&[(1, 4, 1, 2, vec![-tiny, 0.0, -0.0, 3.0])]);
    let mode = mode_of(&n, false, &[(0.0, 1.0)]);
    let out = run_all_checks(&n, &mode);
    assert_eq!(out[0].magnitudes[0], 0.0);
    assert_eq!(out[0].z[0], 0.0);
    assert_eq!(out[0].z[2..], [1.5, 1.5], "sign of -0.0 is +1");
}
