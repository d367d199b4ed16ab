//! `train-gpu sweep`: the paper's central claim made measurable. For a list of compression
//! targets, on the same seed and epoch budget, it compares
//!
//! - (a) ADMM against one-shot projection (hard projection of the dense weights) followed
//!   by the same retraining, and by a retraining as long as ADMM's whole budget;
//! - (b) prune-only, unify-only and mixed ratios at equal storage (docs/METHOD.md §1 bits).
//!
//! This module holds the ratio arithmetic (pure, no libtorch), the plan of sub-runs, and
//! the outputs (`sweep.csv`, `sweep.png`, `sweep.md`). How a single run is executed is the
//! binary's business: it runs every [`SweepRow`]'s config into `DIR/{name}/`, fills
//! [`SweepRow::report`] and calls [`write_outputs`] after every finished sub-run.
//!
//! # Storage estimate
//!
//! Storage follows docs/METHOD.md §1: a dense block of `n` weights costs `32·n` bits, a unified
//! one `n + 32`, a pruned one nothing, and every block 2 bits in the state map. Block
//! *counts* are exact ([`Ratios::counts`]), but which blocks end up pruned, unified or dense
//! is data dependent, and ragged edge blocks are smaller than full ones. The estimate here
//! therefore gives every block of a layer the layer's average block size
//! `s = weights / blocks` (so the layer's total weights are exact). A run's achieved ratio
//! (`report.json`) can differ slightly from the estimate when the projection picks edge
//! blocks unevenly; the achieved ratio is what the CSV and plot show.

use crate::block::{LayerSpec, Ratios};
use crate::fsio::write_atomic;
use crate::plots::{SweepPoint, sweep_plot};
use crate::train::config::{AdmmConfig, Targets};
use crate::train::outdir::{OutDir, Owned};
use crate::train::report::Report;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::fmt::{self, Write};
use std::path::Path;

/// How a layer's compressed blocks are split between pruning and unification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Both, in the base configuration's per-layer proportion.
    Mixed,
    /// Pruning only, at the mixed ratios' storage.
    PruneOnly,
    /// Unification only, at the mixed ratios' storage (or all-unified when even that costs
    /// more).
    UnifyOnly,
}

impl Method {
    /// The name in CSV, plots and folder names.
    pub fn name(self) -> &'static str {
        match self {
            Method::Mixed => "mixed",
            Method::PruneOnly => "prune-only",
            Method::UnifyOnly => "unify-only",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the structure is reached after the shared dense training.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Training {
    /// The base configuration's ADMM rounds, then its retraining.
    Admm,
    /// Hard projection of the dense weights, then the same retraining epochs as ADMM.
    OneShot,
    /// Hard projection of the dense weights, then retraining for ADMM's whole budget
    /// (`rounds · epochs_per_round + retrain_epochs` epochs).
    OneShotLong,
}

impl Training {
    /// The name in CSV, plots and folder names.
    pub fn name(self) -> &'static str {
        match self {
            Training::Admm => "admm",
            Training::OneShot => "one-shot",
            Training::OneShotLong => "one-shot-long",
        }
    }
}

impl fmt::Display for Training {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------------------
// Ratio arithmetic

/// A layer's block count and average block size (weights per block).
fn layer_size(spec: &LayerSpec) -> (usize, f64) {
    let n = spec.grid().num_blocks();
    (n, spec.view.len() as f64 / n as f64)
}

/// Estimated storage bits of one layer at `ratios` (exact counts, average block size; see
/// the module documentation).
pub fn layer_bits(spec: &LayerSpec, ratios: Ratios) -> f64 {
    let (n, s) = layer_size(spec);
    let (np, nu) = ratios.counts(n);
    let nd = n - np - nu;
    32.0 * s * nd as f64 + (s + 32.0) * nu as f64 + 2.0 * n as f64
}

/// Pairs every named ratio with its layer: each layer of `specs` named exactly once.
fn match_specs<'a>(
    ratios: &[(String, Ratios)],
    specs: &'a [LayerSpec],
) -> Result<Vec<&'a LayerSpec>> {
    let mut out = Vec::with_capacity(ratios.len());
    for (name, _) in ratios {
        let Some(spec) = specs.iter().find(|s| &s.name == name) else {
            bail!(
                "ratios name layer {name:?}, which the model does not have (layers: {})",
                specs
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        if out.iter().any(|s: &&LayerSpec| s.name == *name) {
            bail!("layer {name:?} is given ratios twice");
        }
        out.push(spec);
    }
    if let Some(s) = specs
        .iter()
        .find(|s| !ratios.iter().any(|(n, _)| *n == s.name))
    {
        bail!("no ratios for layer {:?}", s.name);
    }
    Ok(out)
}

/// Estimated network compression ratio of per-layer `ratios`: 32 bits per weight of all
/// layers over their estimated bits ([`layer_bits`]).
pub fn estimated_ratio(ratios: &[(String, Ratios)], specs: &[LayerSpec]) -> Result<f64> {
    let layers = match_specs(ratios, specs)?;
    let weights: usize = layers.iter().map(|s| s.view.len()).sum();
    let bits: f64 = layers
        .iter()
        .zip(ratios)
        .map(|(s, (_, r))| layer_bits(s, *r))
        .sum();
    Ok(32.0 * weights as f64 / bits)
}

/// Scales one layer's dense fraction `d = 1 − p − u` to `min(1, t·d)` and splits the rest
/// between prune and unify in the layer's own `p : u` proportion. A layer the base leaves
/// all dense (`p = u = 0`: no proportion to keep) or with no dense blocks stays as it is;
/// `t = 1` returns the ratios unchanged.
fn scale_layer(r: Ratios, t: f64) -> Ratios {
    let c = r.prune + r.unify;
    if t == 1.0 || c <= 0.0 || c >= 1.0 {
        return r;
    }
    let d = (t * (1.0 - c)).clamp(0.0, 1.0);
    let rest = 1.0 - d;
    let prune = (rest * r.prune / c).clamp(0.0, 1.0);
    let unify = (rest * r.unify / c).clamp(0.0, 1.0 - prune);
    Ratios { prune, unify }
}

/// The base per-layer shape with every layer's dense fraction scaled by `t` (clamped to
/// all-dense) and the compressed rest split in each layer's base `p : u` proportion.
/// `t = 1` is the base itself; smaller `t` compresses more.
pub fn scale_mixed(base: &[(String, Ratios)], t: f64) -> Vec<(String, Ratios)> {
    base.iter()
        .map(|(n, r)| (n.clone(), scale_layer(*r, t)))
        .collect()
}

/// Per-layer mixed ratios of the base's shape whose estimated network compression ratio
/// ([`estimated_ratio`]) is as close as possible to `target_ratio`: one common factor `t`
/// on every layer's dense fraction ([`scale_mixed`]), found by bisection over
/// `[0, 1 / min d]` (at the upper end every scalable layer is all dense). Block counts make
/// the ratio a step function of `t`; of the two sides of the step that holds the target,
/// the closer one wins. An error names the target when it lies outside what the shape
/// reaches (no dense blocks at all at one end, all dense at the other) or below 1.
pub fn mixed_targets(
    base: &[(String, Ratios)],
    specs: &[LayerSpec],
    target_ratio: f64,
) -> Result<Vec<(String, Ratios)>> {
    for (name, r) in base {
        Ratios::new(r.prune, r.unify, &format!("layer {name}"))?;
    }
    match_specs(base, specs)?;
    if !(target_ratio.is_finite() && target_ratio >= 1.0) {
        bail!("sweep target {target_ratio}: a compression ratio must be a number of at least 1");
    }
    let ratio_at = |t: f64| estimated_ratio(&scale_mixed(base, t), specs);
    let min_dense = base
        .iter()
        .map(|(_, r)| 1.0 - r.prune - r.unify)
        .filter(|&d| d > 0.0 && d < 1.0)
        .fold(f64::INFINITY, f64::min);
    let t_max = if min_dense.is_finite() {
        1.0 / min_dense
    } else {
        1.0
    };
    let (r_max, r_min) = (ratio_at(0.0)?, ratio_at(t_max)?);
    let tol = 1e-9;
    if target_ratio > r_max * (1.0 + tol) {
        bail!(
            "sweep target {target_ratio}x cannot be reached with the base's per-layer shape: \
             at most {r_max:.3}x (no dense blocks left, pruned and unified in each layer's \
             base proportion)"
        );
    }
    if target_ratio < r_min * (1.0 - tol) {
        bail!(
            "sweep target {target_ratio}x cannot be reached with the base's per-layer shape: \
             at least {r_min:.3}x (every layer whose dense fraction scales is all dense)"
        );
    }
    // ratio_at is non-increasing in t: lo keeps ratio ≥ target, hi ratio ≤ target.
    let (mut lo, mut hi) = (0.0f64, t_max);
    let (mut r_lo, mut r_hi) = (r_max, r_min);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        let r = ratio_at(mid)?;
        if r >= target_ratio {
            (lo, r_lo) = (mid, r);
        } else {
            (hi, r_hi) = (mid, r);
        }
    }
    let t = if (r_lo - target_ratio).abs() <= (r_hi - target_ratio).abs() {
        lo
    } else {
        hi
    };
    Ok(scale_mixed(base, t))
}

/// Per layer, ratios of `method` with the same estimated storage as the `mixed` ratios
/// (exact block counts, average block size):
///
/// - prune-only: no unified blocks; the mixed layer's unified bits buy dense blocks,
///   `d' = d + u·(s + 32)/(32·s)`, rounded to whole blocks and clamped to `[0, 1]`;
/// - unify-only: no pruned blocks; `d'` solves `32·s·d' + (s + 32)(1 − d') = 32·s·d +
///   (s + 32)·u`, rounded to whole blocks and clamped at `d' = 0` (all unified) when even
///   that exceeds the budget — its storage is then larger than mixed's, and the achieved
///   ratio in the run's report shows it (so does `sweep.md`). With blocks of one weight
///   (unified costs more than dense) unify-only is all dense;
/// - mixed: the ratios unchanged.
///
/// Ratios are whole block counts over the layer's block count, so [`Ratios::counts`] gives
/// them back exactly. Names missing from `specs` are passed through unchanged
/// ([`plan_runs`] checks names first).
pub fn equal_storage(
    mixed: &[(String, Ratios)],
    specs: &[LayerSpec],
    method: Method,
) -> Vec<(String, Ratios)> {
    mixed
        .iter()
        .map(|(name, r)| {
            let spec = specs.iter().find(|s| &s.name == name);
            let r = match (method, spec) {
                (Method::Mixed, _) | (_, None) => *r,
                (m, Some(spec)) => equal_storage_layer(spec, *r, m),
            };
            (name.clone(), r)
        })
        .collect()
}

fn equal_storage_layer(spec: &LayerSpec, r: Ratios, method: Method) -> Ratios {
    let (n, s) = layer_size(spec);
    let (np, nu) = r.counts(n);
    let nd = (n - np - nu) as f64;
    let payload = 32.0 * s * nd + (s + 32.0) * nu as f64;
    let frac = |k: f64| k / n as f64;
    match method {
        Method::Mixed => r,
        Method::PruneOnly => {
            let dense = (payload / (32.0 * s)).round().clamp(0.0, n as f64);
            Ratios {
                prune: frac(n as f64 - dense),
                unify: 0.0,
            }
        }
        Method::UnifyOnly => {
            let saving = 31.0 * s - 32.0;
            let dense = if saving > 0.0 {
                ((payload - (s + 32.0) * n as f64) / saving)
                    .round()
                    .clamp(0.0, n as f64)
            } else {
                n as f64
            };
            Ratios {
                prune: 0.0,
                unify: frac(n as f64 - dense),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Plan

/// Named per-layer ratios.
type LayerRatios = Vec<(String, Ratios)>;

/// What `train-gpu sweep` runs: every target × method × training, from one base config.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepPlan {
    pub base: AdmmConfig,
    /// Network compression ratios; empty runs the base config's own ratios (`t = 1`).
    pub targets: Vec<f64>,
    pub methods: Vec<Method>,
    pub trainings: Vec<Training>,
}

/// One sub-run of a sweep and, once it finished, its report.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepRow {
    /// The requested compression ratio (for the base's own ratios: their estimate).
    pub target: f64,
    pub method: Method,
    pub training: Training,
    /// The sub-run's folder name, e.g. `t36.5-mixed-admm` (`base-mixed-admm` for the
    /// base's own ratios).
    pub name: String,
    pub config: AdmmConfig,
    pub report: Option<Report>,
}

/// Every target × method × training (in that nesting order) with its config: per-layer
/// targets from [`mixed_targets`] and [`equal_storage`]; one-shot sets `rounds = 0`, and
/// one-shot-long also `retrain_epochs = rounds · epochs_per_round + retrain_epochs` of the
/// base. Everything else (seed, batch, lr, dense epochs, init, …) is the base's. The base
/// must have per-layer ratios for exactly the layers of `specs`.
pub fn plan_runs(plan: &SweepPlan, specs: &[LayerSpec]) -> Result<Vec<SweepRow>> {
    let Targets::PerLayer(base) = &plan.base.targets else {
        bail!(
            "sweep needs per-layer ratios in the base config (their per-layer shape is what \
             it scales); the base has global ratios"
        );
    };
    plan.base.check()?;
    match_specs(base, specs)?;
    if plan.methods.is_empty() || plan.trainings.is_empty() {
        bail!("sweep needs at least one method and one training");
    }
    for (i, m) in plan.methods.iter().enumerate() {
        if plan.methods[..i].contains(m) {
            bail!("sweep method {m} is given twice");
        }
    }
    for (i, t) in plan.trainings.iter().enumerate() {
        if plan.trainings[..i].contains(t) {
            bail!("sweep training {t} is given twice");
        }
    }
    for (i, t) in plan.targets.iter().enumerate() {
        if plan.targets[..i].contains(t) {
            bail!("sweep target {t} is given twice");
        }
    }
    let targets: Vec<(f64, String, LayerRatios)> = if plan.targets.is_empty() {
        vec![(
            estimated_ratio(base, specs)?,
            "base".to_string(),
            base.clone(),
        )]
    } else {
        plan.targets
            .iter()
            .map(|&t| Ok((t, format!("t{t}"), mixed_targets(base, specs, t)?)))
            .collect::<Result<_>>()?
    };
    let b = &plan.base;
    let mut rows = Vec::new();
    for (target, tag, mixed) in &targets {
        for &method in &plan.methods {
            let ratios = equal_storage(mixed, specs, method);
            for (name, r) in &ratios {
                Ratios::new(r.prune, r.unify, &format!("layer {name}"))
                    .with_context(|| format!("sweep target {target}, {method}"))?;
            }
            for &training in &plan.trainings {
                let mut config = b.clone();
                config.targets = Targets::PerLayer(ratios.clone());
                match training {
                    Training::Admm => {}
                    Training::OneShot => config.rounds = 0,
                    Training::OneShotLong => {
                        config.rounds = 0;
                        config.retrain_epochs = b.rounds * b.epochs_per_round + b.retrain_epochs;
                    }
                }
                rows.push(SweepRow {
                    target: *target,
                    method,
                    training,
                    name: format!("{tag}-{method}-{training}"),
                    config,
                    report: None,
                });
            }
        }
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------
// Outputs

fn num(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        String::new()
    }
}

fn seconds(r: &Report) -> f64 {
    let t = &r.timings;
    t.dense + t.admm + t.retrain + t.eval
}

/// `sweep.csv`: one line per finished sub-run (rows without a report are skipped).
/// Accuracies in percent; `seconds` is the sub-run's dense + ADMM + retraining + evaluation
/// time.
pub fn sweep_csv(rows: &[SweepRow]) -> String {
    let mut s = String::from(
        "target,method,training,compression_ratio,dense_accuracy,hard_projection_accuracy,\
         final_accuracy,pruned,unified,dense,seconds\n",
    );
    for row in rows {
        let Some(r) = &row.report else { continue };
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{}",
            num(row.target, 4),
            row.method,
            row.training,
            num(r.compression_ratio, 4),
            num(r.dense_accuracy, 4),
            num(r.hard_projection_accuracy, 4),
            num(r.final_accuracy, 4),
            r.blocks.pruned,
            r.blocks.unified,
            r.blocks.dense,
            num(seconds(r), 2)
        );
    }
    s
}

pub const SWEEP_CSV: &str = "sweep.csv";
pub const SWEEP_MD: &str = "sweep.md";
pub const SWEEP_PNG: &str = "sweep.png";
/// The files a sweep writes into its folder (besides one run folder per sub-run).
pub const SWEEP_FILES: [&str; 3] = [SWEEP_CSV, SWEEP_MD, SWEEP_PNG];

/// A sweep's folder, locked while this value lives (see [`OutDir`]): its own files and one
/// run folder per sub-run, each of which follows the run folder's rules when it is used.
#[derive(Debug)]
pub struct SweepDir(pub OutDir);

impl SweepDir {
    pub fn open(path: &Path, force: bool) -> Result<Self> {
        let owned = Owned {
            who: "a sweep",
            earlier: "an earlier sweep's",
            files: &SWEEP_FILES,
            subfolders: true,
        };
        Ok(Self(OutDir::open(path, force, owned)?))
    }
}

impl std::ops::Deref for SweepDir {
    type Target = OutDir;

    fn deref(&self) -> &OutDir {
        &self.0
    }
}

/// Writes `sweep.csv`, `sweep.png` (final accuracy against achieved compression ratio, one
/// line per "method training", the dense accuracy of the first finished sub-run dashed)
/// and `sweep.md` (table and findings) into `dir`. Safe to call after every sub-run.
pub fn write_outputs(dir: &Path, rows: &[SweepRow]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic(&dir.join(SWEEP_CSV), sweep_csv(rows).as_bytes())?;
    let points: Vec<SweepPoint> = rows
        .iter()
        .filter_map(|row| {
            row.report.as_ref().map(|r| SweepPoint {
                method: format!("{} {}", row.method, row.training),
                compression_ratio: r.compression_ratio,
                accuracy: r.final_accuracy,
            })
        })
        .collect();
    let dense = rows
        .iter()
        .find_map(|r| r.report.as_ref())
        .map(|r| r.dense_accuracy)
        .filter(|a| a.is_finite());
    sweep_plot(&dir.join(SWEEP_PNG), &points, dense)?;
    write_atomic(&dir.join(SWEEP_MD), sweep_markdown(rows).as_bytes())?;
    Ok(())
}

/// A difference in accuracy points, said plainly.
fn compare(a_name: &str, a: f64, b_name: &str, b: f64) -> String {
    let d = a - b;
    if !d.is_finite() {
        format!("{a_name} − {b_name}: not comparable")
    } else if d.abs() < 0.005 {
        format!("{a_name} and {b_name} equal")
    } else if d > 0.0 {
        format!("{a_name} higher by {d:.2} points")
    } else {
        format!("{b_name} higher by {:.2} points", -d)
    }
}

/// Targets in order of first appearance.
fn targets_of(rows: &[SweepRow]) -> Vec<f64> {
    let mut out: Vec<f64> = Vec::new();
    for r in rows {
        if !out.contains(&r.target) {
            out.push(r.target);
        }
    }
    out
}

fn find(rows: &[SweepRow], target: f64, m: Method, t: Training) -> Option<(&SweepRow, &Report)> {
    rows.iter()
        .find(|r| r.target == target && r.method == m && r.training == t)
        .and_then(|r| r.report.as_ref().map(|rep| (r, rep)))
}

/// `sweep.md`: every finished sub-run in a table, then the two findings computed from it.
pub fn sweep_markdown(rows: &[SweepRow]) -> String {
    let mut s = String::from(
        "# train-gpu sweep\n\nSame seed, dense training and epoch budget for every sub-run; \
         accuracies in percent, compression as achieved (docs/METHOD.md §1 bits).\n\n\
         | target | method | training | ratio | hard projection | final | pruned | unified \
         | dense | seconds |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let done = rows.iter().filter(|r| r.report.is_some()).count();
    for row in rows {
        let Some(r) = &row.report else { continue };
        let _ = writeln!(
            s,
            "| {:.2}x | {} | {} | {:.2}x | {:.2} | {:.2} | {} | {} | {} | {:.1} |",
            row.target,
            row.method,
            row.training,
            r.compression_ratio,
            r.hard_projection_accuracy,
            r.final_accuracy,
            r.blocks.pruned,
            r.blocks.unified,
            r.blocks.dense,
            seconds(r)
        );
    }
    let _ = writeln!(s, "\n{done} of {} sub-runs finished.", rows.len());
    if let Some(d) = rows.iter().find_map(|r| r.report.as_ref()) {
        let _ = writeln!(s, "Dense accuracy: {:.2}.", d.dense_accuracy);
    }
    let targets = targets_of(rows);

    // (a) ADMM against one-shot, mixed ratios.
    s += "\n## ADMM against one-shot projection (mixed ratios)\n\n";
    let (mut n_a, mut admm_wins) = (0, 0);
    for &t in &targets {
        let Some((arow, a)) = find(rows, t, Method::Mixed, Training::Admm) else {
            let _ = writeln!(s, "- target {t:.2}x: mixed ADMM not finished.");
            continue;
        };
        let mut parts = Vec::new();
        for tr in [Training::OneShot, Training::OneShotLong] {
            let Some((orow, o)) = find(rows, t, Method::Mixed, tr) else {
                continue;
            };
            if tr == Training::OneShot && a.final_accuracy.is_finite() {
                n_a += 1;
                if a.final_accuracy > o.final_accuracy {
                    admm_wins += 1;
                }
            }
            parts.push(format!(
                "{tr} {:.2} ({} retraining epochs; hard projection {:.2}): {}",
                o.final_accuracy,
                orow.config.retrain_epochs,
                o.hard_projection_accuracy,
                compare("ADMM", a.final_accuracy, tr.name(), o.final_accuracy)
            ));
        }
        let others = if parts.is_empty() {
            "no one-shot run finished".to_string()
        } else {
            format!("vs {}", parts.join("; vs "))
        };
        let _ = writeln!(
            s,
            "- target {t:.2}x: ADMM {:.2} at {:.2}x ({} rounds of {} epoch(s), then {} retraining \
             epochs; hard projection {:.2}) {others}.",
            a.final_accuracy,
            a.compression_ratio,
            arow.config.rounds,
            arow.config.epochs_per_round,
            arow.config.retrain_epochs,
            a.hard_projection_accuracy
        );
    }
    if n_a > 0 {
        let _ = writeln!(
            s,
            "\nADMM's final accuracy was above one-shot's (same retraining) at {admm_wins} of \
             {n_a} targets."
        );
    }

    // (b) mixed against prune-only and unify-only at equal storage, under ADMM.
    s += "\n## Mixed against prune-only and unify-only at equal storage (ADMM)\n\n";
    let (mut n_b, mut mixed_best) = (0, 0);
    for &t in &targets {
        let found: Vec<(Method, &Report)> = [Method::Mixed, Method::PruneOnly, Method::UnifyOnly]
            .into_iter()
            .filter_map(|m| find(rows, t, m, Training::Admm).map(|(_, r)| (m, r)))
            .collect();
        if found.is_empty() {
            continue;
        }
        let mixed = found.iter().find(|(m, _)| *m == Method::Mixed).map(|x| x.1);
        let mut parts = Vec::new();
        for (m, r) in &found {
            let mut p = format!("{m} {:.2} at {:.2}x", r.final_accuracy, r.compression_ratio);
            if let (Some(x), false) = (mixed, *m == Method::Mixed) {
                let rel = r.compression_ratio / x.compression_ratio - 1.0;
                if rel < -0.02 {
                    p += " (more storage than mixed: equal storage not reachable)";
                } else if rel > 0.02 {
                    p += " (less storage than mixed)";
                }
            }
            parts.push(p);
        }
        let mut line = format!("- target {t:.2}x: {}", parts.join(", "));
        if found.len() > 1 {
            let best = found
                .iter()
                .filter(|(_, r)| r.final_accuracy.is_finite())
                .max_by(|a, b| a.1.final_accuracy.total_cmp(&b.1.final_accuracy));
            if let Some((bm, br)) = best {
                let ties: Vec<&str> = found
                    .iter()
                    .filter(|(m, r)| {
                        m != bm && (r.final_accuracy - br.final_accuracy).abs() < 0.005
                    })
                    .map(|(m, _)| m.name())
                    .collect();
                line += &if ties.is_empty() {
                    format!("; most accurate: {bm}")
                } else {
                    format!("; most accurate: {bm}, tied with {}", ties.join(", "))
                };
                if let Some(x) = mixed {
                    n_b += 1;
                    if *bm == Method::Mixed || ties.contains(&"mixed") {
                        mixed_best += 1;
                    }
                    for (m, r) in found.iter().filter(|(m, _)| *m != Method::Mixed) {
                        line +=
                            &format!("; mixed − {m} {:+.2}", x.final_accuracy - r.final_accuracy);
                    }
                }
            }
        }
        let _ = writeln!(s, "{line}.");
    }
    if n_b > 0 {
        let _ = writeln!(
            s,
            "\nMixed was the most accurate (ties included) at {mixed_best} of {n_b} targets."
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::BlockShape;
    use crate::train::report::{Blocks, Timings};

    fn lenet5(block: BlockShape) -> Vec<LayerSpec> {
        [
            ("conv1", vec![20, 1, 5, 5]),
            ("conv2", vec![50, 20, 5, 5]),
            ("fc1", vec![500, 800]),
            ("fc2", vec![10, 500]),
        ]
        .into_iter()
        .map(|(n, s)| LayerSpec::new(n, &s, block).unwrap())
        .collect()
    }

    fn demo_base() -> Vec<(String, Ratios)> {
        let Targets::PerLayer(v) = AdmmConfig::demo().targets else {
            unreachable!()
        };
        v
    }

    fn check_valid(rs: &[(String, Ratios)]) {
        for (n, r) in rs {
            Ratios::new(r.prune, r.unify, n).unwrap();
        }
    }

    #[test]
    fn names() {
        assert_eq!(Method::PruneOnly.to_string(), "prune-only");
        assert_eq!(Method::UnifyOnly.name(), "unify-only");
        assert_eq!(Method::Mixed.name(), "mixed");
        assert_eq!(Training::OneShotLong.to_string(), "one-shot-long");
        assert_eq!(Training::OneShot.name(), "one-shot");
        assert_eq!(Training::Admm.name(), "admm");
        use clap::ValueEnum;
        assert_eq!(Method::from_str("prune-only", false), Ok(Method::PruneOnly));
        assert_eq!(
            Training::from_str("one-shot-long", false),
            Ok(Training::OneShotLong)
        );
    }

    #[test]
    fn bits_follow_method_section_1() {
        // 20x25 with 4x4 blocks: 5x7 = 35 blocks, 500 weights, average 500/35.
        let spec = &lenet5(BlockShape::default())[0];
        let s = 500.0 / 35.0;
        let all_dense = layer_bits(spec, Ratios::default());
        assert!((all_dense - (32.0 * 500.0 + 70.0)).abs() < 1e-9);
        let all_pruned = layer_bits(
            spec,
            Ratios {
                prune: 1.0,
                unify: 0.0,
            },
        );
        assert!((all_pruned - 70.0).abs() < 1e-9);
        let all_unified = layer_bits(
            spec,
            Ratios {
                prune: 0.0,
                unify: 1.0,
            },
        );
        assert!((all_unified - (35.0 * (s + 32.0) + 70.0)).abs() < 1e-9);
    }

    #[test]
    fn demo_shape_at_t_1_is_the_demo() {
        let base = demo_base();
        assert_eq!(scale_mixed(&base, 1.0), base);
        // Near 1 too the ratios and their counts are the demo's (proportions kept).
        let specs = lenet5(BlockShape::default());
        let near = scale_mixed(&base, 1.0 + 1e-13);
        for ((_, a), ((_, b), s)) in near.iter().zip(base.iter().zip(&specs)) {
            assert!((a.prune - b.prune).abs() < 1e-12 && (a.unify - b.unify).abs() < 1e-12);
            let n = s.grid().num_blocks();
            assert_eq!(a.counts(n), b.counts(n));
        }
        // Scaling keeps each layer's p:u proportion and scales d.
        for ((_, a), (_, b)) in scale_mixed(&base, 0.5).iter().zip(&base) {
            let (da, db) = (1.0 - a.prune - a.unify, 1.0 - b.prune - b.unify);
            assert!((da - 0.5 * db).abs() < 1e-12);
            assert!((a.prune * b.unify - a.unify * b.prune).abs() < 1e-12);
        }
    }

    #[test]
    fn bisection_reaches_targets() {
        let base = demo_base();
        for block in [BlockShape::default(), BlockShape::new(2, 8).unwrap()] {
            let specs = lenet5(block);
            for target in [10.0, 20.0, 36.0, 36.5] {
                let m = mixed_targets(&base, &specs, target).unwrap();
                check_valid(&m);
                let got = estimated_ratio(&m, &specs).unwrap();
                assert!(
                    (got / target - 1.0).abs() < 0.01,
                    "{block}: target {target}, got {got}"
                );
            }
        }
    }

    #[test]
    fn infeasible_targets_are_errors() {
        let base = demo_base();
        let specs = lenet5(BlockShape::default());
        for bad in [0.5, f64::NAN, f64::INFINITY, 1000.0] {
            let e = mixed_targets(&base, &specs, bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad}")), "{e}");
        }
        // 1 itself is reachable: every scalable layer (here all) nearly all dense.
        let m = mixed_targets(&base, &specs, 1.0).unwrap();
        assert!((estimated_ratio(&m, &specs).unwrap() - 1.0).abs() < 0.01);
        // Unknown or missing layers.
        let mut b = base.clone();
        b[0].0 = "conv9".into();
        assert!(mixed_targets(&b, &specs, 10.0).is_err());
        assert!(mixed_targets(&base[..3], &specs, 10.0).is_err());
    }

    #[test]
    fn equal_storage_matches_mixed_bits() {
        let base = demo_base();
        for block in [
            BlockShape::default(),
            BlockShape::new(2, 8).unwrap(),
            BlockShape::new(8, 8).unwrap(),
        ] {
            let specs = lenet5(block);
            let one_block = 32.0 * block.len() as f64;
            for target in [5.0, 10.0, 20.0, 36.5] {
                let mixed = mixed_targets(&base, &specs, target).unwrap();
                assert_eq!(equal_storage(&mixed, &specs, Method::Mixed), mixed);
                let prune = equal_storage(&mixed, &specs, Method::PruneOnly);
                let unify = equal_storage(&mixed, &specs, Method::UnifyOnly);
                check_valid(&prune);
                check_valid(&unify);
                for (i, spec) in specs.iter().enumerate() {
                    let bm = layer_bits(spec, mixed[i].1);
                    let (p, u) = (prune[i].1, unify[i].1);
                    assert_eq!(p.unify, 0.0);
                    assert_eq!(u.prune, 0.0);
                    let bp = layer_bits(spec, p);
                    assert!((bp - bm).abs() <= one_block, "{block} {target} prune {i}");
                    let bu = layer_bits(spec, u);
                    if u.unify < 1.0 {
                        assert!((bu - bm).abs() <= one_block, "{block} {target} unify {i}");
                    } else {
                        // Clamped: all unified and still above the budget (or on it).
                        assert!(bu >= bm - one_block, "{block} {target} unify {i}");
                    }
                    // Counts come back exactly from the ratios.
                    let n = spec.grid().num_blocks();
                    let (np, _) = p.counts(n);
                    assert!((np as f64 - p.prune * n as f64).abs() < 1e-6);
                }
            }
        }
    }

    #[test]
    fn unify_only_clamps_at_high_targets() {
        let base = demo_base();
        let specs = lenet5(BlockShape::default());
        // All-unified 4x4 at most 32·16 / (16 + 32 + 2) = 10.24x (ragged edges lower).
        let max_unified = 32.0 * 16.0 / 50.0;
        for target in [20.0, 36.5] {
            let mixed = mixed_targets(&base, &specs, target).unwrap();
            let unify = equal_storage(&mixed, &specs, Method::UnifyOnly);
            let r = estimated_ratio(&unify, &specs).unwrap();
            assert!(r <= max_unified + 1e-9 && r < target, "{target}: {r}");
            let fc1 = &unify.iter().find(|(n, _)| n == "fc1").unwrap().1;
            assert_eq!(fc1.unify, 1.0, "{target}");
            // Prune-only keeps the storage: the ratio stays at the target.
            let prune = equal_storage(&mixed, &specs, Method::PruneOnly);
            let rp = estimated_ratio(&prune, &specs).unwrap();
            assert!((rp / target - 1.0).abs() < 0.01, "{target}: {rp}");
        }
        // At a low target unify-only reaches equal storage.
        let mixed = mixed_targets(&base, &specs, 5.0).unwrap();
        let unify = equal_storage(&mixed, &specs, Method::UnifyOnly);
        let r = estimated_ratio(&unify, &specs).unwrap();
        assert!((r / 5.0 - 1.0).abs() < 0.01, "{r}");
    }

    #[test]
    fn demo_ratios_per_target_and_method() {
        let base = demo_base();
        let specs = lenet5(BlockShape::default());
        println!(
            "base (t = 1): estimated {:.3}x",
            estimated_ratio(&base, &specs).unwrap()
        );
        for target in [10.0, 20.0, 36.5] {
            let mixed = mixed_targets(&base, &specs, target).unwrap();
            for m in [Method::Mixed, Method::PruneOnly, Method::UnifyOnly] {
                let rs = equal_storage(&mixed, &specs, m);
                let est = estimated_ratio(&rs, &specs).unwrap();
                let layers: Vec<String> = rs
                    .iter()
                    .zip(&specs)
                    .map(|((n, r), s)| {
                        let (p, u) = r.counts(s.grid().num_blocks());
                        format!(
                            "{n} {:.4}/{:.4} ({p}+{u} of {})",
                            r.prune,
                            r.unify,
                            s.grid().num_blocks()
                        )
                    })
                    .collect();
                println!(
                    "target {target}x {m:<10} est {est:>7.3}x: {}",
                    layers.join(", ")
                );
            }
        }
    }

    fn plan(targets: Vec<f64>) -> SweepPlan {
        SweepPlan {
            base: AdmmConfig::demo(),
            targets,
            methods: vec![Method::Mixed, Method::PruneOnly, Method::UnifyOnly],
            trainings: vec![Training::Admm, Training::OneShot, Training::OneShotLong],
        }
    }

    #[test]
    fn plan_covers_every_combination() {
        let specs = lenet5(BlockShape::default());
        let rows = plan_runs(&plan(vec![10.0, 36.5]), &specs).unwrap();
        assert_eq!(rows.len(), 2 * 3 * 3);
        assert_eq!(rows[0].name, "t10-mixed-admm");
        assert!(
            rows.iter()
                .any(|r| r.name == "t36.5-unify-only-one-shot-long")
        );
        let base = AdmmConfig::demo();
        for r in &rows {
            let c = &r.config;
            assert_eq!((c.seed, c.batch, c.lr, c.dense_epochs), (1, 64, 1e-3, 6));
            let budget = base.rounds * base.epochs_per_round + base.retrain_epochs;
            let (rounds, retrain) = match r.training {
                Training::Admm => (base.rounds, base.retrain_epochs),
                Training::OneShot => (0, base.retrain_epochs),
                Training::OneShotLong => (0, budget),
            };
            assert_eq!(
                (c.rounds, c.retrain_epochs),
                (rounds, retrain),
                "{}",
                r.name
            );
            c.check().unwrap();
            let Targets::PerLayer(v) = &c.targets else {
                panic!()
            };
            let mixed = mixed_targets(
                &{
                    let Targets::PerLayer(b) = &base.targets else {
                        panic!()
                    };
                    b.clone()
                },
                &specs,
                r.target,
            )
            .unwrap();
            assert_eq!(*v, equal_storage(&mixed, &specs, r.method));
        }
        // Same method and target: same ratios across trainings.
        assert_eq!(rows[0].config.targets, rows[1].config.targets);

        // Empty targets: the base's own ratios.
        let rows = plan_runs(&plan(vec![]), &specs).unwrap();
        assert_eq!(rows.len(), 9);
        assert_eq!(rows[0].name, "base-mixed-admm");
        assert_eq!(rows[0].config.targets, AdmmConfig::demo().targets);

        // Global base, duplicates, infeasible targets.
        let mut p = plan(vec![10.0]);
        p.base.targets = Targets::Global(Ratios {
            prune: 0.5,
            unify: 0.3,
        });
        let e = plan_runs(&p, &specs).unwrap_err().to_string();
        assert!(e.contains("per-layer"), "{e}");
        let e = plan_runs(&plan(vec![10.0, 10.0]), &specs)
            .unwrap_err()
            .to_string();
        assert!(e.contains("twice"), "{e}");
        let e = plan_runs(&plan(vec![10.0, 5000.0]), &specs)
            .unwrap_err()
            .to_string();
        assert!(e.contains("5000"), "{e}");
    }

    fn report(ratio: f64, hard: f64, fin: f64) -> Report {
        Report {
            task: Default::default(),
            normalization: vec![[0.1307, 0.3081]],
            final_loss: 0.1,
            dense_accuracy: 99.0,
            hard_projection_accuracy: hard,
            final_accuracy: fin,
            compression_ratio: ratio,
            blocks: Blocks {
                dense: 1,
                unified: 2,
                pruned: 3,
            },
            layers: vec![],
            admm: vec![],
            structure_violations: 0,
            timings: Timings {
                dense: 1.0,
                admm: 2.0,
                retrain: 3.0,
                eval: 0.5,
                projection: 0.25,
            },
        }
    }

    #[test]
    fn csv_and_findings() {
        let specs = lenet5(BlockShape::default());
        let mut rows = plan_runs(&plan(vec![20.0]), &specs).unwrap();
        let fill = |rows: &mut Vec<SweepRow>, name: &str, r: Report| {
            rows.iter_mut().find(|x| x.name == name).unwrap().report = Some(r);
        };
        fill(&mut rows, "t20-mixed-admm", report(20.1, 97.0, 98.9));
        fill(&mut rows, "t20-mixed-one-shot", report(20.0, 60.0, 98.4));
        fill(
            &mut rows,
            "t20-mixed-one-shot-long",
            report(20.0, 60.0, 99.1),
        );
        fill(&mut rows, "t20-prune-only-admm", report(19.9, 95.0, 98.7));
        fill(&mut rows, "t20-unify-only-admm", report(9.8, 90.0, 97.1));
        let csv = sweep_csv(&rows);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 6);
        assert_eq!(
            lines[0],
            "target,method,training,compression_ratio,dense_accuracy,hard_projection_accuracy,\
             final_accuracy,pruned,unified,dense,seconds"
        );
        assert_eq!(
            lines[1],
            "20.0000,mixed,admm,20.1000,99.0000,97.0000,98.9000,3,2,1,6.50"
        );
        let md = sweep_markdown(&rows);
        println!("{md}");
        assert!(md.contains("ADMM higher by 0.50 points"), "{md}");
        assert!(md.contains("one-shot-long higher by 0.20 points"), "{md}");
        assert!(md.contains("at 1 of 1 targets"), "{md}");
        assert!(md.contains("most accurate: mixed"), "{md}");
        assert!(md.contains("mixed − prune-only +0.20"), "{md}");
        assert!(md.contains("more storage than mixed"), "{md}");
        assert!(md.contains("5 of 9 sub-runs finished"), "{md}");

        let dir = std::env::temp_dir().join(format!("sweep-test-{}", std::process::id()));
        write_outputs(&dir, &rows).unwrap();
        for f in ["sweep.csv", "sweep.png", "sweep.md"] {
            assert!(dir.join(f).metadata().unwrap().len() > 0, "{f}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
