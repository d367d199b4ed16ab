//! The projection stage by stage against the CPU twin of each kernel (src/cpu/, one per
//! shader): after every dispatch, the buffers it wrote are compared with what its twin
//! computes from the GPU's own inputs to that dispatch, so a failure names the kernel,
//! the pass, the layer and the block or digit that differ. Discrete outputs must match
//! exactly; the statistics' floats within the bounds their twin documents
//! (src/cpu/block_stats.rs `stats_twins`, src/cpu/agreement.rs `value_tolerance`).

mod common;

use microunify::block::{
    BlockShape, BlockState, LayerSpec, MAX_BLOCK_SIDE, SelectionMode, StateMap,
};
use microunify::cpu::apply_projection::apply_projection;
use microunify::cpu::block_stats::{self as bs, KEY_EXCLUDED, StatsTwin};
use microunify::cpu::pack_states::pack_states;
use microunify::cpu::projection::Group;
use microunify::cpu::radix_histogram::{RadixPass, SelState, radix_histogram, start_states};
use microunify::cpu::radix_resolve::radix_resolve;
use microunify::gpu::Gpu;
use microunify::gpu::buffers::POISON;
use microunify::gpu::kernels::{RADIX, RESCALE_WG};
use microunify::gpu::projection::stages::{Stage, StageOutput, StatsBuffers};
use microunify::gpu::projection::{NetworkProjection, Tensor};
use microunify::layout::PackLimits;
use rand::Rng;
use rand::rngs::SmallRng;
use std::collections::BTreeSet;

/// Differences reported per stage before the rest are counted only.
const MAX_REPORTED: usize = 12;

/// Every kernel a projection dispatches: a run must have compared each of them.
const KERNELS: [&str; 6] = [
    "block_stats",
    "block_rescale",
    "radix_histogram",
    "radix_resolve",
    "pack_states",
    "apply_projection",
];

struct Case {
    layers: Vec<LayerSpec>,
    mode: SelectionMode,
    w: Vec<Vec<f32>>,
    u: Vec<Vec<f32>>,
}

/// Layer shapes with ragged edges, prime sizes, 1×1 blocks and blocks at the side limit.
fn random_layer(rng: &mut SmallRng, i: usize) -> LayerSpec {
    let dims = [1usize, 2, 3, 5, 7, 13, 17, 31, 32, 33, 64, 97];
    let m = MAX_BLOCK_SIDE;
    let blocks = [
        (1, 1),
        (1, 8),
        (4, 4),
        (8, 8),
        (3, 5),
        (7, 13),
        (m, m),
        (m - 1, m),
        (m, m - 1),
        (1, m),
        (m, 1),
    ];
    let (br, bc) = blocks[rng.random_range(0..blocks.len())];
    let shape = if rng.random_bool(0.25) {
        vec![
            dims[rng.random_range(0..dims.len())],
            rng.random_range(1..6),
            3,
            3,
        ]
    } else {
        vec![
            dims[rng.random_range(0..dims.len())],
            dims[rng.random_range(0..dims.len())],
        ]
    };
    LayerSpec::new(format!("fc{i}"), &shape, BlockShape::new(br, bc).unwrap()).unwrap()
}

/// W and U of a layer, block by block: most blocks ordinary, some wholly in a regime that
/// block_stats lists for block_rescale (huge, tiny, subnormal) or at its edges.
fn layer_values(rng: &mut SmallRng, layer: &LayerSpec) -> (Vec<f32>, Vec<f32>) {
    let grid = layer.grid();
    let n = layer.view.len();
    let (mut w, mut u) = (vec![0.0f32; n], vec![0.0f32; n]);
    let u_zero = rng.random_bool(0.5);
    for b in 0..grid.num_blocks() {
        let regime = if rng.random_bool(0.7) {
            common::REGIMES[3]
        } else {
            common::REGIMES[rng.random_range(0..common::REGIMES.len())]
        };
        for i in grid.extent(b).indices(layer.view.cols) {
            w[i] = common::regime_value(rng, regime);
            if !u_zero {
                u[i] = common::regime_value(rng, regime);
            }
        }
    }
    (w, u)
}

fn random_case(rng: &mut SmallRng, max_layers: usize, global: bool) -> Case {
    let n = rng.random_range(1..=max_layers);
    let layers: Vec<LayerSpec> = (0..n).map(|i| random_layer(rng, i)).collect();
    let mode = if global {
        SelectionMode::Global(common::ratios(rng, "network"))
    } else {
        SelectionMode::PerLayer(
            layers
                .iter()
                .map(|l| common::ratios(rng, &l.name))
                .collect(),
        )
    };
    let (w, u) = layers.iter().map(|l| layer_values(rng, l)).unzip();
    Case { layers, mode, w, u }
}

/// What the checks saw across cases, so that a run cannot pass by exercising nothing.
#[derive(Default)]
struct Coverage {
    kernels: BTreeSet<&'static str>,
    listed: usize,
    unlisted: usize,
    counted: u64,
}

/// The GPU's buffers as the last stage left them (the inputs of the next stage), and the
/// twins' fixed inputs.
struct Checker<'a> {
    net: &'a NetworkProjection,
    case: &'a Case,
    twins: Vec<Vec<StatsTwin>>,
    signs: Vec<Vec<u32>>,
    passes: Vec<RadixPass>,
    groups: Vec<Group>,
    grid: (u32, u32),
    max_groups: u32,
    keeps_subnormals: bool,
    stats: StatsBuffers,
    states: Vec<SelState>,
    hist: Vec<u32>,
    args: Vec<[u32; 3]>,
    state_map: Vec<u32>,
    coverage: &'a mut Coverage,
}

/// The differences of one stage, reported together.
struct Report {
    what: String,
    lines: Vec<String>,
    more: usize,
}

impl Report {
    fn new(what: &str) -> Self {
        Self {
            what: what.to_string(),
            lines: Vec::new(),
            more: 0,
        }
    }

    fn push(&mut self, line: String) {
        if self.lines.len() < MAX_REPORTED {
            self.lines.push(line);
        } else {
            self.more += 1;
        }
    }

    fn finish(self) {
        if !self.lines.is_empty() {
            panic!(
                "{} differs from its CPU twin:\n  {}{}",
                self.what,
                self.lines.join("\n  "),
                if self.more > 0 {
                    format!("\n  ... and {} more", self.more)
                } else {
                    String::new()
                }
            );
        }
    }
}

/// The kernel's name: the first word of the stage's description.
fn kernel_of(what: &str) -> &'static str {
    KERNELS
        .iter()
        .find(|k| what.starts_with(*k))
        .copied()
        .unwrap_or_else(|| panic!("an unknown stage {what:?}"))
}

/// Whether a float the GPU wrote is the twin's bit for bit, or the twin's subnormal that
/// an adapter flushing subnormals (as WGSL allows) wrote as zero.
fn same_f32(gpu: f32, twin: f32, keeps_subnormals: bool) -> bool {
    gpu.to_bits() == twin.to_bits()
        || (!keeps_subnormals && gpu == 0.0 && twin.abs() < f32::MIN_POSITIVE)
}

impl Checker<'_> {
    fn name(&self, l: usize) -> &str {
        &self.case.layers[l].name
    }

    /// The layer's name, or the network in global mode.
    fn scope(&self, g: usize) -> String {
        match self.case.mode {
            SelectionMode::Global(_) => "the network".into(),
            SelectionMode::PerLayer(_) => format!("layer '{}'", self.name(g)),
        }
    }

    /// Layer and block-in-layer of padded block `b` (None: padding).
    fn place(&self, b: usize) -> (usize, Option<usize>) {
        let p = &self.net.layout.placements;
        let l = p.partition_point(|p| p.block_start <= b) - 1;
        let lb = b - p[l].block_start;
        (l, (lb < p[l].num_blocks).then_some(lb))
    }

    fn at(&self, l: usize, lb: usize) -> String {
        let cols = self.case.layers[l].grid().block_cols();
        format!(
            "layer '{}', block {lb} (block row {}, col {})",
            self.name(l),
            lb / cols,
            lb % cols
        )
    }

    /// The twin of padded block `b` (None: padding).
    fn twin_of(&self, b: usize) -> Option<&StatsTwin> {
        let (l, lb) = self.place(b);
        lb.map(|lb| &self.twins[l][lb])
    }

    /// Padded blocks served by chunk `c`.
    fn chunk_blocks(&self, c: usize) -> Vec<usize> {
        let layout = &self.net.layout;
        layout.pieces[layout.chunks[c].pieces.clone()]
            .iter()
            .flat_map(|p| p.blocks.clone())
            .collect()
    }

    fn sign_range(&self, l: usize, lb: usize) -> std::ops::Range<usize> {
        let p = &self.net.layout.placements[l];
        let at = p.sign_offset + lb * p.words_per_block;
        at..at + p.words_per_block
    }

    /// Everything the statistics kernels write for a real block, against its twin.
    fn check_block(&self, r: &mut Report, s: &StatsBuffers, b: usize, l: usize, lb: usize) {
        let t = &self.twins[l][lb];
        let at = self.at(l, lb);
        for (what, key, twin, tol) in [
            ("prune key", s.key_prune[b], t.prune_err, t.prune_tol),
            ("unify key", s.key_unify[b], t.unify_err, t.unify_tol),
        ] {
            let gpu = bs::key_value(key);
            if (gpu - twin).abs() > tol {
                r.push(format!(
                    "{at}: {what} {key:#010x} = {gpu:e} vs twin {twin:e}, off by {:e} > bound {tol:e}",
                    (gpu - twin).abs()
                ));
            }
        }
        let a = s.magnitudes[b];
        let flushed = !self.keeps_subnormals && a == 0.0 && t.mean_abs < f32::MIN_POSITIVE as f64;
        if (a as f64 - t.mean_abs).abs() > t.mean_tol && !flushed {
            r.push(format!(
                "{at}: mean |v| {a:e} vs twin {:e}, off by {:e} > bound {:e}",
                t.mean_abs,
                (a as f64 - t.mean_abs).abs(),
                t.mean_tol
            ));
        }
        let wpb = self.net.layout.placements[l].words_per_block;
        let twin = &self.signs[l][lb * wpb..(lb + 1) * wpb];
        let gpu = &s.signs[self.sign_range(l, lb)];
        if gpu != twin {
            r.push(format!("{at}: sign words {gpu:08x?} vs twin {twin:08x?}"));
        }
    }

    /// A statistics stage of chunk `c`: the chunk's blocks against their twins (`listed`:
    /// block_stats, whose listed blocks hold only their largest |v| yet), every block
    /// outside the chunk as the previous stage left it.
    fn check_stats(&mut self, r: &mut Report, c: usize, s: &StatsBuffers, listed: Option<&[u32]>) {
        let mine: BTreeSet<usize> = self.chunk_blocks(c).into_iter().collect();
        let got: BTreeSet<u32> = listed.unwrap_or_default().iter().copied().collect();
        if let Some(listed) = listed {
            let want: BTreeSet<u32> = mine
                .iter()
                .filter(|&&b| self.twin_of(b).is_some_and(|t| t.rescaled))
                .map(|&b| b as u32)
                .collect();
            if got.len() != listed.len() {
                r.push(format!(
                    "a block listed twice for block_rescale: {listed:?}"
                ));
            }
            for &b in got.symmetric_difference(&want) {
                let (l, lb) = self.place(b as usize);
                let place = lb.map_or(format!("padding block {b}"), |lb| self.at(l, lb));
                r.push(format!(
                    "{place}: {} for block_rescale",
                    if got.contains(&b) {
                        "listed, the twin does not list it"
                    } else {
                        "not listed, the twin lists it"
                    }
                ));
            }
        }
        for &b in &mine {
            let (l, lb) = self.place(b);
            let Some(lb) = lb else {
                if s.key_prune[b] != KEY_EXCLUDED || s.key_unify[b] != KEY_EXCLUDED {
                    r.push(format!(
                        "padding block {b} after layer '{}': keys {:#x}, {:#x}, not excluded",
                        self.name(l),
                        s.key_prune[b],
                        s.key_unify[b]
                    ));
                }
                if s.magnitudes[b].to_bits() != 0 {
                    r.push(format!("padding block {b}: magnitude {}", s.magnitudes[b]));
                }
                continue;
            };
            let t = self.twins[l][lb];
            if listed.is_none() {
                self.check_block(r, s, b, l, lb);
                if t.rescaled {
                    self.coverage.listed += 1;
                }
            } else if !t.rescaled {
                self.check_block(r, s, b, l, lb);
                self.coverage.unlisted += 1;
            } else if got.contains(&(b as u32)) {
                // Until block_rescale runs, a listed block's unify key holds its largest |v|.
                let flushed = !self.keeps_subnormals && t.top < f32::MIN_POSITIVE.to_bits();
                let top = s.key_unify[b];
                if top != t.top && !(flushed && top == 0) {
                    r.push(format!(
                        "{}: listed for block_rescale with largest |v| bits {top:#010x}, twin {:#010x}",
                        self.at(l, lb),
                        t.top
                    ));
                }
            }
        }
        let before = &self.stats;
        for b in (0..before.key_prune.len()).filter(|b| !mine.contains(b)) {
            let (l, lb) = self.place(b);
            let signs_same = lb.is_none_or(|lb| {
                let sr = self.sign_range(l, lb);
                s.signs[sr.clone()] == before.signs[sr]
            });
            if s.key_prune[b] != before.key_prune[b]
                || s.key_unify[b] != before.key_unify[b]
                || s.magnitudes[b].to_bits() != before.magnitudes[b].to_bits()
                || !signs_same
            {
                r.push(format!("block {b}, outside the chunk, was written"));
            }
        }
        self.stats = s.clone();
    }

    fn check(&mut self, stage: Stage) {
        if !matches!(stage.output, StageOutput::Reset { .. }) {
            self.coverage.kernels.insert(kernel_of(&stage.what));
        }
        let mut r = Report::new(&stage.what);
        let ng = self.groups.len();
        match stage.output {
            StageOutput::Reset { states, args } => {
                let want = start_states(&self.groups);
                if states != want {
                    r.push(format!("selection states {states:?} vs {want:?}"));
                }
                self.states = states;
                self.args = args;
            }
            StageOutput::BlockStats {
                chunk,
                stats,
                listed,
                rescale_args,
            } => {
                self.check_stats(&mut r, chunk, &stats, Some(&listed));
                let want = match listed.len() {
                    0 => [0, 1, 1],
                    n => {
                        let g = (n as u32 - 1) / RESCALE_WG;
                        [(g + 1).min(self.max_groups), g / self.max_groups + 1, 1]
                    }
                };
                if rescale_args != want {
                    r.push(format!(
                        "block_rescale armed with {rescale_args:?} for {} listed blocks, twin {want:?}",
                        listed.len()
                    ));
                }
            }
            StageOutput::BlockRescale {
                chunk,
                stats,
                first_bad,
            } => {
                self.check_stats(&mut r, chunk, &stats, None);
                for (l, &i) in first_bad.iter().enumerate() {
                    if i != u32::MAX {
                        r.push(format!(
                            "layer '{}': a non-finite value reported at {i}",
                            self.name(l)
                        ));
                    }
                }
            }
            StageOutput::RadixHistogram { pass, hist } => {
                let s = &self.stats;
                let twin = radix_histogram(
                    &self.passes[pass],
                    &self.groups,
                    &s.key_prune,
                    &s.key_unify,
                    &self.states,
                );
                let radix = RADIX as usize;
                for (i, (&g, &t)) in hist.iter().zip(&twin).enumerate() {
                    if g != t {
                        r.push(format!(
                            "radix_histogram pass {} of {}: digit {} count {g} vs {t}",
                            pass + 1,
                            self.scope(i / radix),
                            i % radix
                        ));
                    }
                }
                self.coverage.counted += hist.iter().map(|&c| c as u64).sum::<u64>();
                self.hist = hist;
            }
            StageOutput::RadixResolve {
                pass,
                states,
                hist,
                args,
            } => {
                let p = &self.passes[pass];
                let mut twin = self.states.clone();
                let arms = radix_resolve(p, &mut twin, &self.hist, ng);
                for (i, (g, t)) in states.iter().zip(&twin).enumerate() {
                    if g != t {
                        r.push(format!(
                            "radix_resolve pass {} of {}: {} state {g:?} vs {t:?}",
                            pass + 1,
                            self.scope(i % ng),
                            if i < ng { "prune" } else { "unify" }
                        ));
                    }
                }
                if let Some(d) = hist.iter().position(|&c| c != 0) {
                    r.push(format!(
                        "radix_resolve pass {} left count {} in digit {} of {}",
                        pass + 1,
                        hist[d],
                        d % RADIX as usize,
                        self.scope(d / RADIX as usize)
                    ));
                }
                let mut want = self.args.clone();
                if let (true, Some(next)) = (arms, p.arms) {
                    want[next] = [self.grid.0, self.grid.1, 1];
                }
                if args != want {
                    r.push(format!(
                        "radix_resolve pass {} left dispatch arguments {args:?}, twin {want:?}",
                        pass + 1
                    ));
                }
                self.states = states;
                self.hist = hist;
                self.args = args;
            }
            StageOutput::PackStates {
                state_map,
                magnitudes,
            } => {
                let s = &self.stats;
                let (map, mags) = pack_states(
                    &self.groups,
                    &s.key_prune,
                    &s.key_unify,
                    &self.states,
                    &s.magnitudes,
                );
                for b in 0..map.len() * 16 {
                    let (g, t) = (
                        StateMap::raw_code(&state_map, b),
                        StateMap::raw_code(&map, b),
                    );
                    let (l, lb) = self.place(b);
                    let place = lb.map_or(format!("padding block {b}"), |lb| self.at(l, lb));
                    if g != t {
                        r.push(format!("{place}: state code {g} vs twin {t}"));
                    }
                    if magnitudes[b].to_bits() != mags[b].to_bits() {
                        r.push(format!(
                            "{place}: magnitude {:e} vs twin {:e}",
                            magnitudes[b], mags[b]
                        ));
                    }
                }
                // The twin's selection is the one the radix passes must reach: k blocks each.
                for (gi, g) in self.groups.iter().enumerate() {
                    let count = |code| {
                        (g.begin..g.end)
                            .filter(|&b| StateMap::raw_code(&state_map, b) == code)
                            .count()
                    };
                    let (p, u) = (
                        count(BlockState::Pruned as u32),
                        count(BlockState::Unified as u32),
                    );
                    if (p, u) != (g.prune, g.unify) {
                        r.push(format!(
                            "{}: {p} pruned and {u} unified blocks, the selection wants {} and {}",
                            self.scope(gi),
                            g.prune,
                            g.unify
                        ));
                    }
                }
                self.stats.magnitudes = magnitudes;
                self.state_map = state_map;
            }
            StageOutput::ApplyProjection { chunk, z, u } => {
                let layout = &self.net.layout;
                for p in &layout.pieces[layout.chunks[chunk].pieces.clone()] {
                    let l = p.layer;
                    let spec = &self.case.layers[l];
                    let pl = &layout.placements[l];
                    let blocks = pl.block_start..pl.block_start + pl.num_blocks;
                    let states: Vec<BlockState> = blocks
                        .clone()
                        // Code 3 already failed pack_states (its twin never writes it).
                        .map(|b| {
                            BlockState::from_code(StateMap::raw_code(&self.state_map, b))
                                .unwrap_or(BlockState::Dense)
                        })
                        .collect();
                    let mags = &self.stats.magnitudes[blocks];
                    let (zt, ut) = apply_projection(
                        &spec.grid(),
                        &self.case.w[l],
                        &self.case.u[l],
                        &states,
                        mags,
                    );
                    let src = p.source(spec);
                    for (k, i) in src.enumerate() {
                        let (row, col) = (i / spec.view.cols, i % spec.view.cols);
                        for (what, gpu, twin) in
                            [("Z", z[p.offset + k], zt[i]), ("U", u[p.offset + k], ut[i])]
                        {
                            if !same_f32(gpu, twin, self.keeps_subnormals) {
                                r.push(format!(
                                    "layer '{}', row {row}, col {col}: {what} {gpu:e} vs twin {twin:e}",
                                    spec.name
                                ));
                            }
                        }
                    }
                }
            }
        }
        r.finish();
    }
}

/// Runs `case` stage by stage, every stage against its twin.
fn run_case(gpu: &Gpu, case: &Case, limits: Option<PackLimits>, coverage: &mut Coverage) {
    let (layers, mode) = (case.layers.clone(), case.mode.clone());
    let net = match limits {
        Some(l) => NetworkProjection::with_limits(gpu, layers, mode, l),
        None => NetworkProjection::new(gpu, layers, mode),
    }
    .unwrap();
    net.poison(gpu, POISON);
    for l in 0..case.layers.len() {
        net.write(gpu, Tensor::W, l, &case.w[l]).unwrap();
        net.write(gpu, Tensor::U, l, &case.u[l]).unwrap();
    }
    let global = matches!(case.mode, SelectionMode::Global(_));
    let v: Vec<Vec<f32>> = case
        .w
        .iter()
        .zip(&case.u)
        .map(|(w, u)| bs::v_of(w, u))
        .collect();
    let layout = &net.layout;
    let blocks = layout.total_blocks;
    let mut checker = Checker {
        net: &net,
        case,
        twins: case
            .layers
            .iter()
            .zip(&v)
            .map(|(l, v)| bs::stats_twins(&l.grid(), v, global))
            .collect(),
        signs: case
            .layers
            .iter()
            .zip(&v)
            .map(|(l, v)| bs::sign_words(&l.grid(), v))
            .collect(),
        passes: net.radix_passes(),
        groups: net.padded_groups(),
        grid: net.radix_grid(),
        max_groups: gpu.limits().max_compute_workgroups_per_dimension,
        keeps_subnormals: common::keeps_subnormals(gpu),
        stats: StatsBuffers {
            key_prune: vec![POISON; blocks],
            key_unify: vec![POISON; blocks],
            magnitudes: vec![f32::from_bits(POISON); blocks],
            signs: vec![POISON; layout.total_sign_words],
        },
        states: Vec::new(),
        hist: Vec::new(),
        args: Vec::new(),
        state_map: Vec::new(),
        coverage,
    };
    net.run_stages(gpu, |stage| checker.check(stage)).unwrap();
}

fn check_coverage(c: &Coverage) {
    eprintln!(
        "kernels {:?}, {} rescaled and {} plain blocks compared, {} candidates counted",
        c.kernels, c.listed, c.unlisted, c.counted
    );
    assert_eq!(
        c.kernels.len(),
        KERNELS.len(),
        "kernels compared: {:?}",
        c.kernels
    );
    assert!(
        c.listed > 0 && c.unlisted > 0,
        "rescaled {} and plain {} blocks",
        c.listed,
        c.unlisted
    );
    assert!(c.counted > 0, "no radix histogram counted anything");
}

#[test]
fn every_stage_matches_its_twin_on_awkward_layers() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(0x57a6e);
    let mut coverage = Coverage::default();
    for case_no in 0..24 {
        let case = random_case(&mut rng, 6, case_no % 3 == 0);
        eprintln!(
            "case {case_no}: {} layers, {:?}",
            case.layers.len(),
            case.mode
        );
        run_case(&gpu, &case, None, &mut coverage);
    }
    check_coverage(&coverage);
}

#[test]
fn every_stage_matches_its_twin_across_chunks() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(0xc4a7);
    let block = |r, c| BlockShape::new(r, c).unwrap();
    let layers = vec![
        LayerSpec::new("big", &[203, 301], block(4, 4)).unwrap(),
        LayerSpec::new("edge", &[37, 61], block(MAX_BLOCK_SIDE, MAX_BLOCK_SIDE)).unwrap(),
        LayerSpec::new("conv", &[16, 8, 3, 3], block(1, 1)).unwrap(),
    ];
    let mut coverage = Coverage::default();
    for global in [false, true] {
        let mode = if global {
            SelectionMode::Global(common::ratios(&mut rng, "network"))
        } else {
            SelectionMode::PerLayer(
                layers
                    .iter()
                    .map(|l| common::ratios(&mut rng, &l.name))
                    .collect(),
            )
        };
        let (w, u) = layers.iter().map(|l| layer_values(&mut rng, l)).unzip();
        let case = Case {
            layers: layers.clone(),
            mode,
            w,
            u,
        };
        // 64 KiB bindings: "big" alone spans four chunks, pieces share chunks.
        let limits = PackLimits {
            max_binding_bytes: 64 << 10,
            offset_alignment: 256,
        };
        run_case(&gpu, &case, Some(limits), &mut coverage);
    }
    check_coverage(&coverage);
}
