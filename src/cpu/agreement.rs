//! Whether a GPU projection agrees with the CPU reference (docs/METHOD.md §2), as a verdict that
//! says where and by how much it does not.
//!
//! The GPU ranks blocks by f32 sums, the reference by f64 ones, so the two may legitimately
//! order two blocks differently when their errors are closer than the f32 sums' rounding:
//! a *near-tie*. A block chosen differently is accepted only when that is proven from the
//! reference's own numbers: its key lies within the rounding bound of the threshold.
//! Everything else is wrong: a different count, a block far from the threshold, a value of
//! Z, U or a magnitude off by more than f32 rounding, a different sign word.

use crate::block::{BlockState, LayerSpec, SelectionMode};
use crate::cpu::projection::{self as cpu, BlockStats, Group};
use crate::error::{Error, Result};
use crate::gpu::ProjectedLayer;
use std::fmt;

/// Rounding bound of one GPU key, in units of `n·ε₃₂·scale`: a block's errors are f32 sums
/// of its `n` terms (per-row partials, then rows; in global mode divided by `n`), each term
/// at most `scale` = the block's `Σv²` (normalised like the key in global mode), so each
/// key is within a few `n·ε₃₂·scale` of the exact value; the key's own 22-bit mantissa adds
/// `2ε₃₂·scale` at most. 64 covers the shifted-sum cancellation in `e_u` with a wide
/// margin, and stays 10⁴ times tighter than the gaps a wrong selection leaves on random
/// inputs.
pub const NEAR: f64 = 64.0;

/// Relative bound on Z and the magnitudes. `a = mean|v|` is an f32 sum of at most 32·32
/// non-negative terms, 32 per row partial then 32 row sums, divided by `n`: at most
/// (31 + 31 + 2)·2⁻²⁴ ≈ 3.8e-6 off (the reference rounds its f64 mean once). A wrong
/// count, a skipped row or a wrong term moves `a` by 1e-3 or more on ordinary blocks.
pub const VALUE_REL: f32 = 4e-6;

/// How far a GPU value may lie from the reference value `e` (Z, U, a magnitude): relative
/// [`VALUE_REL`], with a floor at f32's smallest normal. Below the normal range f32 values
/// are spaced 2^-149 apart whatever their size, so bounds stop shrinking there: the floor
/// allows a few subnormal steps (a mean rounded twice, once in f32 and once onto the
/// subnormal grid).
pub fn value_tolerance(e: f64) -> f64 {
    VALUE_REL as f64 * e.abs().max(f32::MIN_POSITIVE as f64)
}

/// Which selection of docs/METHOD.md §2 a difference is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Step 1: the pruned blocks (smallest `e_p`).
    Prune,
    /// Step 2: the unified blocks among the rest (smallest `e_u`).
    Unify,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Prune => "prune",
            Step::Unify => "unify",
        })
    }
}

/// A selection group whose count of chosen blocks differs: always wrong.
#[derive(Clone, Debug, PartialEq)]
pub struct CountMismatch {
    pub step: Step,
    /// The layer's name, or `network` in global mode.
    pub scope: String,
    pub cpu: usize,
    pub gpu: usize,
}

/// A block that one side selects and the other does not.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockDifference {
    pub step: Step,
    pub layer: usize,
    /// Block number within its layer.
    pub block: usize,
    /// Selected on the GPU only (else on the CPU only).
    pub gpu_selected: bool,
    /// The block's key as the reference computes it.
    pub key: f64,
    /// The reference's threshold key on the side the block crossed: the largest selected
    /// key (for a block the GPU selects) or the smallest eligible unselected one.
    pub threshold: f64,
    /// `|key − threshold|`.
    pub gap: f64,
    /// How far apart two keys may be and still be ordered either way by the GPU: the
    /// rounding bounds of this block and of the worst block that crossed the other way.
    pub tolerance: f64,
}

impl BlockDifference {
    /// Whether the difference is a proven near-tie (else the GPU is wrong).
    pub fn near_tie(&self) -> bool {
        self.gap <= self.tolerance
    }
}

/// A value of the GPU's output that differs from the reference by more than rounding.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueMismatch {
    pub layer: usize,
    /// `Z`, `U`, `magnitude` or `sign word`.
    pub what: &'static str,
    pub index: usize,
    pub gpu: f64,
    pub cpu: f64,
}

/// The outcome of comparing a GPU projection with the reference.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Verdict {
    /// Layer names, for messages.
    pub layers: Vec<String>,
    pub counts: Vec<CountMismatch>,
    /// Every block selected differently, near-tie or not.
    pub differences: Vec<BlockDifference>,
    pub values: Vec<ValueMismatch>,
    /// Values the reference has as subnormals and the GPU as 0: WGSL lets an adapter flush
    /// subnormal results of arithmetic, so these are counted, not failed; an adapter that
    /// keeps subnormals (lavapipe does) should report none.
    pub flushed_subnormals: usize,
}

/// Per-layer summary of a [`Verdict`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerAgreement {
    /// Blocks that differ only by proven near-ties.
    pub near_ties: usize,
    /// Blocks with a difference that is not a near-tie.
    pub wrong: usize,
    /// Whether the layer's selection group chose a different number of blocks.
    pub count_differs: bool,
    pub value_mismatches: usize,
}

impl LayerAgreement {
    pub fn agrees(&self) -> bool {
        self.wrong == 0 && !self.count_differs && self.value_mismatches == 0
    }
}

impl fmt::Display for LayerAgreement {
    /// `same`, `N near-ties`, `N WRONG`, plus what else differs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.wrong > 0 {
            parts.push(format!("{} WRONG", self.wrong));
        }
        if self.near_ties > 0 {
            parts.push(format!("{} near-ties", self.near_ties));
        }
        if self.count_differs {
            parts.push("COUNT DIFFERS".into());
        }
        if self.value_mismatches > 0 {
            parts.push(format!("{} VALUES WRONG", self.value_mismatches));
        }
        if parts.is_empty() {
            f.write_str("same")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

impl Verdict {
    /// Whether the GPU result is the reference's up to proven near-ties and rounding.
    pub fn agrees(&self) -> bool {
        self.counts.is_empty()
            && self.values.is_empty()
            && self.differences.iter().all(BlockDifference::near_tie)
    }

    /// The differences that are not near-ties.
    pub fn wrong(&self) -> impl Iterator<Item = &BlockDifference> {
        self.differences.iter().filter(|d| !d.near_tie())
    }

    /// Summary of layer `l` (in global mode a count mismatch is charged to every layer).
    pub fn layer(&self, l: usize) -> LayerAgreement {
        let mut near = Vec::new();
        let mut wrong = Vec::new();
        for d in self.differences.iter().filter(|d| d.layer == l) {
            if d.near_tie() {
                near.push(d.block);
            } else {
                wrong.push(d.block);
            }
        }
        wrong.sort_unstable();
        wrong.dedup();
        near.sort_unstable();
        near.dedup();
        near.retain(|b| wrong.binary_search(b).is_err());
        let name = self.layers.get(l).map(String::as_str);
        LayerAgreement {
            near_ties: near.len(),
            wrong: wrong.len(),
            count_differs: self
                .counts
                .iter()
                .any(|c| Some(c.scope.as_str()) == name || c.scope == NETWORK),
            value_mismatches: self.values.iter().filter(|v| v.layer == l).count(),
        }
    }

    /// What is wrong, at most `max` items of each kind, one per line (empty if nothing).
    pub fn failures(&self, max: usize) -> String {
        let name = |l: usize| self.layers.get(l).map_or("?", String::as_str);
        let mut lines: Vec<String> = self
            .counts
            .iter()
            .take(max)
            .map(|c| {
                format!(
                    "{}: {} selection takes {} blocks on the GPU, {} on the CPU",
                    c.scope, c.step, c.gpu, c.cpu
                )
            })
            .collect();
        lines.extend(self.wrong().take(max).map(|d| {
            format!(
                "{}: block {} ({} step) is {} on the GPU only: key {:e}, CPU threshold {:e}, gap {:e} > near-tie tolerance {:e}",
                name(d.layer),
                d.block,
                d.step,
                if d.gpu_selected { "selected" } else { "unselected" },
                d.key,
                d.threshold,
                d.gap,
                d.tolerance
            )
        }));
        lines.extend(self.values.iter().take(max).map(|v| {
            format!(
                "{}: {}[{}] = {:e} on the GPU, {:e} on the CPU",
                name(v.layer),
                v.what,
                v.index,
                v.gpu,
                v.cpu
            )
        }));
        let wrong = self.wrong().count();
        if self.counts.len() > max || wrong > max || self.values.len() > max {
            lines.push(format!(
                "({} count, {wrong} block and {} value mismatches in all)",
                self.counts.len(),
                self.values.len()
            ));
        }
        lines.join("\n")
    }
}

/// The scope name of the one selection group of global mode.
const NETWORK: &str = "network";

/// Per-block data every selection check needs, in network block order.
struct Ranking<'a> {
    keys: &'a [f64],
    /// Rounding bound of each block's key.
    err: &'a [f64],
    groups: &'a [Group],
    /// Layer and block-in-layer of each network block.
    place: &'a [(usize, usize)],
    scopes: &'a [String],
}

/// Compares one selection step; `eligible` marks the candidates.
fn check_step(
    step: Step,
    rank: &Ranking,
    eligible: &[bool],
    cpu_sel: &[bool],
    gpu_sel: &[bool],
    out: &mut Verdict,
) {
    for (g, scope) in rank.groups.iter().zip(rank.scopes) {
        let r = g.begin..g.end;
        let n_cpu = cpu_sel[r.clone()].iter().filter(|s| **s).count();
        let n_gpu = gpu_sel[r.clone()].iter().filter(|s| **s).count();
        if n_cpu != n_gpu {
            out.counts.push(CountMismatch {
                step,
                scope: scope.clone(),
                cpu: n_cpu,
                gpu: n_gpu,
            });
        }
        let keys = rank.keys;
        let lo = r
            .clone()
            .filter(|&b| cpu_sel[b])
            .map(|b| keys[b])
            .fold(f64::NEG_INFINITY, f64::max);
        let hi = r
            .clone()
            .filter(|&b| eligible[b] && !cpu_sel[b])
            .map(|b| keys[b])
            .fold(f64::INFINITY, f64::min);
        let differing: Vec<usize> = r.filter(|&b| cpu_sel[b] != gpu_sel[b]).collect();
        // A block the GPU selects in place of the reference's choice was ranked below one
        // the GPU left: both keys may be off by their rounding bounds.
        let worst = |gpu_side: bool| {
            differing
                .iter()
                .filter(|&&b| gpu_sel[b] == gpu_side)
                .map(|&b| rank.err[b])
                .fold(0.0, f64::max)
        };
        let (worst_gpu, worst_cpu) = (worst(true), worst(false));
        for &b in &differing {
            let gpu_selected = gpu_sel[b];
            let (threshold, gap, other) = if gpu_selected {
                (lo, keys[b] - lo, worst_cpu)
            } else {
                (hi, hi - keys[b], worst_gpu)
            };
            let (layer, block) = rank.place[b];
            out.differences.push(BlockDifference {
                step,
                layer,
                block,
                gpu_selected,
                key: keys[b],
                threshold,
                gap,
                tolerance: rank.err[b] + other,
            });
        }
    }
}

fn shape_error(why: String) -> Error {
    Error::Shape {
        layer: "<network>".into(),
        why,
    }
}

/// Compares the GPU's block states with the reference's selection on the same input
/// `v[l] = W + U` (as the GPU computed it, in f32). The unify step is compared with the
/// reference's choice among the blocks the GPU left unpruned, so that a near-tie in
/// pruning does not cascade into a false difference there.
pub fn selection(
    layers: &[LayerSpec],
    mode: &SelectionMode,
    v: &[&[f32]],
    gpu_states: &[Vec<BlockState>],
) -> Result<Verdict> {
    let stats = checked_stats(layers, mode, v)?;
    selection_with(layers, mode, &stats, gpu_states)
}

/// The reference statistics of every layer, after checking the shapes of `v`.
fn checked_stats(
    layers: &[LayerSpec],
    mode: &SelectionMode,
    v: &[&[f32]],
) -> Result<Vec<Vec<BlockStats>>> {
    mode.check(layers)?;
    if v.len() != layers.len() {
        return Err(shape_error(format!(
            "{} tensors given for {} layers",
            v.len(),
            layers.len()
        )));
    }
    layers
        .iter()
        .zip(v)
        .map(|(l, d)| {
            cpu::check_finite(l, d)?;
            Ok(cpu::block_stats(&l.grid(), d))
        })
        .collect()
}

fn selection_with(
    layers: &[LayerSpec],
    mode: &SelectionMode,
    stats: &[Vec<BlockStats>],
    gpu_states: &[Vec<BlockState>],
) -> Result<Verdict> {
    if gpu_states.len() != layers.len() {
        return Err(shape_error(format!(
            "{} state lists given for {} layers",
            gpu_states.len(),
            layers.len()
        )));
    }
    for ((l, s), st) in layers.iter().zip(stats).zip(gpu_states) {
        if st.len() != s.len() {
            return Err(Error::Shape {
                layer: l.name.clone(),
                why: format!("{} GPU block states for {} blocks", st.len(), s.len()),
            });
        }
    }
    let global = matches!(mode, SelectionMode::Global(_));
    let (kp, ku) = cpu::selection_keys(stats, global);
    let flat: Vec<&BlockStats> = stats.iter().flatten().collect();
    let err: Vec<f64> = flat
        .iter()
        .map(|s| {
            let scale = if global {
                s.prune_err / s.len as f64
            } else {
                s.prune_err
            };
            NEAR * s.len as f64 * f32::EPSILON as f64 * scale.max(f64::MIN_POSITIVE)
        })
        .collect();
    let place: Vec<(usize, usize)> = stats
        .iter()
        .enumerate()
        .flat_map(|(l, s)| (0..s.len()).map(move |b| (l, b)))
        .collect();
    let groups = cpu::groups(layers, mode);
    let scopes: Vec<String> = if global {
        vec![NETWORK.to_string()]
    } else {
        layers.iter().map(|l| l.name.clone()).collect()
    };
    let states: Vec<BlockState> = gpu_states.iter().flatten().copied().collect();
    let gpu_pruned: Vec<bool> = states.iter().map(|s| *s == BlockState::Pruned).collect();
    let gpu_unified: Vec<bool> = states.iter().map(|s| *s == BlockState::Unified).collect();
    let mut out = Verdict {
        layers: layers.iter().map(|l| l.name.clone()).collect(),
        ..Default::default()
    };
    let prune_rank = Ranking {
        keys: &kp,
        err: &err,
        groups: &groups,
        place: &place,
        scopes: &scopes,
    };
    let all = vec![true; kp.len()];
    let cpu_pruned = cpu::select_pruned(&kp, &groups);
    check_step(
        Step::Prune,
        &prune_rank,
        &all,
        &cpu_pruned,
        &gpu_pruned,
        &mut out,
    );
    // The reference's unify step assumes its own count of pruned blocks; with a count
    // mismatch there may be too few candidates left, and that is already reported.
    if out.counts.is_empty() {
        let not_pruned: Vec<bool> = gpu_pruned.iter().map(|p| !p).collect();
        let cpu_unified = cpu::select_unified(&ku, &gpu_pruned, &groups);
        let unify_rank = Ranking {
            keys: &ku,
            ..prune_rank
        };
        check_step(
            Step::Unify,
            &unify_rank,
            &not_pruned,
            &cpu_unified,
            &gpu_unified,
            &mut out,
        );
    }
    Ok(out)
}

/// [`selection`] plus every value the GPU produced: Z and U (`U + W − Z` with `v = W + U`,
/// so `v − Z`) against the reference's apply on the GPU's own states, the magnitudes, and
/// the sign words (exactly).
pub fn projection(
    layers: &[LayerSpec],
    mode: &SelectionMode,
    v: &[&[f32]],
    out: &[ProjectedLayer],
) -> Result<Verdict> {
    let stats = checked_stats(layers, mode, v)?;
    let states: Vec<Vec<BlockState>> = out.iter().map(|o| o.states.clone()).collect();
    let mut verdict = selection_with(layers, mode, &stats, &states)?;
    for (l, ((layer, o), s)) in layers.iter().zip(out).zip(&stats).enumerate() {
        if o.z.len() != v[l].len() || o.u.len() != v[l].len() {
            return Err(Error::Shape {
                layer: layer.name.clone(),
                why: format!(
                    "GPU output of {} Z and {} U values for {}",
                    o.z.len(),
                    o.u.len(),
                    v[l].len()
                ),
            });
        }
        let reference = cpu::apply(&layer.grid(), v[l], s, &o.states);
        // In f64: |v| + |Z| may pass f32's range, the difference of two f32 never does.
        let mut check = |what, index, gpu: f32, cpu: f64, bound: f64| {
            let gpu = gpu as f64;
            if (gpu - cpu).abs() <= bound || gpu == cpu {
                return;
            }
            if gpu == 0.0 && cpu.abs() < f32::MIN_POSITIVE as f64 {
                verdict.flushed_subnormals += 1;
                return;
            }
            verdict.values.push(ValueMismatch {
                layer: l,
                what,
                index,
                gpu,
                cpu,
            });
        };
        let rel = value_tolerance;
        for (i, (&z, &e)) in o.z.iter().zip(&reference.z).enumerate() {
            let (e, x) = (e as f64, v[l][i] as f64);
            check("Z", i, z, e, rel(e.abs()));
            // U = V − Z inherits Z's error, which is relative to |Z|, not to |U|.
            check("U", i, o.u[i], x - e, rel(e.abs() + x.abs()));
        }
        for (b, (&a, &e)) in o.magnitudes.iter().zip(&reference.magnitudes).enumerate() {
            check("magnitude", b, a, e as f64, rel(e.abs() as f64));
        }
        let signs = cpu::sign_words(&layer.grid(), v[l]);
        for (i, (&g, &c)) in o.signs.iter().zip(&signs).enumerate() {
            if g != c || o.signs.len() != signs.len() {
                verdict.values.push(ValueMismatch {
                    layer: l,
                    what: "sign word",
                    index: i,
                    gpu: g as f64,
                    cpu: c as f64,
                });
            }
        }
    }
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{BlockShape, Ratios};

    /// One 1×4 layer of 1×1 blocks with the given values: block `i`'s `e_p` is `v[i]²`.
    fn layer(values: &[f32]) -> (Vec<LayerSpec>, SelectionMode) {
        let spec =
            LayerSpec::new("fc", &[1, values.len()], BlockShape::new(1, 1).unwrap()).unwrap();
        let mode = SelectionMode::PerLayer(vec![Ratios::new(0.5, 0.0, "fc").unwrap()]);
        (vec![spec], mode)
    }

    use BlockState::{Dense as D, Pruned as P};

    #[test]
    fn the_reference_choice_agrees() {
        let v = [1.0f32, 2.0, 3.0, 4.0];
        let (layers, mode) = layer(&v);
        let verdict = selection(&layers, &mode, &[&v], &[vec![P, P, D, D]]).unwrap();
        assert!(
            verdict.agrees() && verdict.differences.is_empty(),
            "{verdict:?}"
        );
        assert_eq!(verdict.layer(0).to_string(), "same");
    }

    #[test]
    fn a_far_block_is_wrong_with_its_gap_and_tolerance() {
        let v = [1.0f32, 2.0, 3.0, 4.0];
        let (layers, mode) = layer(&v);
        // Block 3 (e_p 16) pruned instead of block 1 (e_p 4).
        let verdict = selection(&layers, &mode, &[&v], &[vec![P, D, D, P]]).unwrap();
        assert!(!verdict.agrees());
        let wrong: Vec<_> = verdict.wrong().collect();
        assert_eq!(wrong.len(), 2, "{verdict:?}");
        let d = wrong.iter().find(|d| d.gpu_selected).unwrap();
        assert_eq!((d.block, d.key, d.threshold, d.gap), (3, 16.0, 4.0, 12.0));
        let ulp = f32::EPSILON as f64;
        assert_eq!(d.tolerance, NEAR * ulp * (16.0 + 4.0));
        assert_eq!(verdict.layer(0).to_string(), "2 WRONG");
        let msg = verdict.failures(5);
        assert!(
            msg.contains("fc: block 3 (prune step) is selected on the GPU only"),
            "{msg}"
        );
    }

    #[test]
    fn a_near_tie_is_accepted_and_counted() {
        // Blocks 1 and 2 differ by one part in 10^9: either may be pruned.
        let v = [1.0f32, 2.0, 2.0 + 2.0 * f32::EPSILON, 4.0];
        let (layers, mode) = layer(&v);
        let verdict = selection(&layers, &mode, &[&v], &[vec![P, D, P, D]]).unwrap();
        assert!(verdict.agrees(), "{}", verdict.failures(5));
        assert_eq!(verdict.differences.len(), 2);
        assert!(verdict.differences.iter().all(|d| d.near_tie()));
        assert_eq!(verdict.layer(0).to_string(), "2 near-ties");
    }

    #[test]
    fn a_gap_just_past_the_tolerance_is_wrong() {
        // Keys 4 and 4·(1 + t): wrong once t exceeds the sum of both rounding bounds.
        let bound = 2.0 * NEAR * f32::EPSILON as f64;
        for (t, near) in [(0.9 * bound, true), (1.2 * bound, false)] {
            let b = (4.0 * (1.0 + t)).sqrt() as f32;
            let v = [1.0f32, 2.0, b, 4.0];
            let (layers, mode) = layer(&v);
            let verdict = selection(&layers, &mode, &[&v], &[vec![P, D, P, D]]).unwrap();
            assert_eq!(verdict.agrees(), near, "t = {t:e}: {verdict:?}");
        }
    }

    #[test]
    fn a_different_count_is_wrong() {
        let v = [1.0f32, 2.0, 3.0, 4.0];
        let (layers, mode) = layer(&v);
        let verdict = selection(&layers, &mode, &[&v], &[vec![P, D, D, D]]).unwrap();
        assert_eq!(verdict.counts.len(), 1);
        assert_eq!((verdict.counts[0].cpu, verdict.counts[0].gpu), (2, 1));
        assert!(!verdict.agrees());
        assert!(verdict.layer(0).to_string().contains("COUNT DIFFERS"));
    }

    #[test]
    fn unify_differences_are_judged_among_the_gpus_unpruned_blocks() {
        // 1×2 blocks: e_u is 0 for equal pairs, else the spread. Prune 1 of 4, unify 1.
        let spec = LayerSpec::new("l", &[1, 8], BlockShape::new(1, 2).unwrap()).unwrap();
        let mode = SelectionMode::PerLayer(vec![Ratios::new(0.25, 0.25, "l").unwrap()]);
        let v = [0.1f32, 0.1, 5.0, 5.0, 3.0, 4.0, 7.0, 1.0];
        use BlockState::Unified as U;
        // Block 0 (smallest e_p) pruned, block 1 (e_u = 0) unified: the reference.
        let ok = selection(
            std::slice::from_ref(&spec),
            &mode,
            &[&v],
            &[vec![P, U, D, D]],
        )
        .unwrap();
        assert!(ok.agrees() && ok.differences.is_empty(), "{ok:?}");
        // Block 3 (e_u 18) unified instead: wrong, in the unify step.
        let bad = selection(&[spec], &mode, &[&v], &[vec![P, D, D, U]]).unwrap();
        assert!(!bad.agrees());
        assert!(bad.wrong().all(|d| d.step == Step::Unify), "{bad:?}");
    }

    #[test]
    fn wrong_values_and_flushed_subnormals() {
        let v = [1.0f32, 2.0, 3.0, 4.0];
        let (layers, mode) = layer(&v);
        let good = ProjectedLayer {
            z: vec![0.0, 0.0, 3.0, 4.0],
            u: vec![1.0, 2.0, 0.0, 0.0],
            states: vec![P, P, D, D],
            magnitudes: vec![0.0; 4],
            signs: vec![0; 4],
        };
        assert!(
            projection(&layers, &mode, &[&v], std::slice::from_ref(&good))
                .unwrap()
                .agrees()
        );
        let mut bad = good.clone();
        bad.z[2] = 3.0001;
        bad.signs[3] = 1;
        let verdict = projection(&layers, &mode, &[&v], &[bad]).unwrap();
        let what: Vec<_> = verdict.values.iter().map(|m| (m.what, m.index)).collect();
        assert_eq!(what, [("Z", 2), ("sign word", 3)]);
        assert!(!verdict.agrees());
        // Subnormal results the GPU returns as 0 are counted, not failed: blocks 1 and 2
        // (the smallest) pruned, block 0 dense with Z = v = 1e-40, all flushed.
        let tiny = [1e-40f32, 1e-41, 5e-41, 4.0];
        let flushed = ProjectedLayer {
            z: vec![0.0, 0.0, 0.0, 4.0],
            u: vec![0.0; 4],
            states: vec![D, P, P, D],
            ..good
        };
        let verdict = projection(&layers, &mode, &[&tiny], &[flushed]).unwrap();
        assert!(verdict.agrees(), "{}", verdict.failures(5));
        assert_eq!(verdict.flushed_subnormals, 3, "{verdict:?}");
    }

    #[test]
    fn mismatched_inputs_are_errors() {
        let v = [1.0f32, 2.0, 3.0, 4.0];
        let (layers, mode) = layer(&v);
        assert!(selection(&layers, &mode, &[&v], &[vec![P, D]]).is_err());
        assert!(selection(&layers, &mode, &[&v[..3]], &[vec![P, D, D, D]]).is_err());
        assert!(selection(&layers, &mode, &[], &[]).is_err());
    }
}
