//! `train-gpu sensitivity`: how much each layer of a trained network suffers from being
//! compressed alone, and the per-layer ratios that reach a network compression ratio at
//! the smallest predicted loss.
//!
//! For each compressible layer and each (prune, unify) pair of a [`Grid`], the layer alone
//! is projected one-shot (the CPU projection of docs/METHOD.md §2, the GPU's twin), put
//! into the model, and the model is scored in evaluation mode on a slice of the training
//! set held back for the purpose ([`holdout`]; never the test set); then the layer is
//! restored exactly. Each point records the layer's exact §1 bits from its projected block
//! states. The proposal ([`propose`]) treats the per-layer increases as additive and picks
//! one point per layer so that `32·Σweights / Σbits` of the compressed layers is at least
//! the target ([`knapsack`]). Additivity is the approximation: layers compressed together
//! interact, and the ADMM run that follows trains the network into the structure anyway;
//! the proposal says where compression is cheap, not what the run will score.

pub mod knapsack;

use crate::block::{LayerSpec, Ratios, SelectionMode, storage_bits};
use crate::cpu::projection::project;
use crate::fsio::write_atomic;
use crate::plots::{SensitivityCurve, sensitivity_plot};
use crate::train::config::{Targets, Task};
use crate::train::data::TensorSet;
use crate::train::fit::{Score, evaluate};
use crate::train::network::Model;
use crate::train::outdir::{OutDir, Owned};
use crate::train::settings::{FileConfig, Settings};
use crate::train::tensors::set_values;
use anyhow::{Context, Result, bail};
use knapsack::Choice;
use std::fmt::Write as _;
use std::path::Path;

pub const SENSITIVITY_CSV: &str = "sensitivity.csv";
pub const SENSITIVITY_PNG: &str = "sensitivity.png";
pub const PROPOSAL: &str = "proposal.toml";
/// The files `train-gpu sensitivity` writes into its folder.
pub const SENSITIVITY_FILES: [&str; 3] = [SENSITIVITY_CSV, SENSITIVITY_PNG, PROPOSAL];

/// The default grid (`--grid`): prune and unify values, every pair with a sum up to 1.
pub const DEFAULT_GRID: &str = "0,0.25,0.5,0.6,0.7,0.8,0.9,0.95,0.98/0,0.1,0.2,0.4,0.6,0.8";

/// The most images the default holdout takes (else a tenth of the training set).
pub const DEFAULT_HOLDOUT_MAX: i64 = 5000;

/// The (prune, unify) pairs measured for every layer: all pairs of a prune list and a
/// unify list whose sum is at most 1 (with the tolerance of [`Ratios::new`]). The dense
/// pair (0, 0) is always among them, first: the knapsack may leave a layer as it is, and
/// its measured increase (exactly 0) shows that a layer is restored exactly.
#[derive(Clone, Debug, PartialEq)]
pub struct Grid {
    pub points: Vec<Ratios>,
}

impl Default for Grid {
    fn default() -> Self {
        DEFAULT_GRID.parse().expect("the default grid parses")
    }
}

/// `"0,0.5/0.1"`: numbers in [0, 1], sorted and deduplicated.
fn grid_values(s: &str, what: &str) -> Result<Vec<f64>> {
    let mut v = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let x: f64 = part
            .parse()
            .ok()
            .filter(|x: &f64| (0.0..=1.0).contains(x))
            .with_context(|| format!("--grid: {what} value {part:?} is not a number in [0, 1]"))?;
        v.push(x);
    }
    v.sort_by(f64::total_cmp);
    v.dedup();
    Ok(v)
}

impl std::str::FromStr for Grid {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let Some((p, u)) = s.split_once('/') else {
            bail!("--grid {s:?} is not PRUNE,PRUNE,.../UNIFY,UNIFY,... (e.g. {DEFAULT_GRID})");
        };
        let (prunes, unifies) = (grid_values(p, "prune")?, grid_values(u, "unify")?);
        let mut points = vec![Ratios::default()];
        for &prune in &prunes {
            for &unify in &unifies {
                if let Ok(r) = Ratios::new(prune, unify, "--grid")
                    && r != Ratios::default()
                {
                    points.push(r);
                }
            }
        }
        if points.len() > knapsack::MAX_CHOICES {
            bail!(
                "--grid has {} (prune, unify) pairs; at most {}",
                points.len(),
                knapsack::MAX_CHOICES
            );
        }
        Ok(Self { points })
    }
}

/// A slice of a set: which images, for the output to say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slice {
    /// The first image (0-based) and how many.
    pub start: i64,
    pub len: i64,
    /// How many the whole set has.
    pub of: i64,
}

impl std::fmt::Display for Slice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the last {} of the {} training images (indices {} to {})",
            self.len,
            self.of,
            self.start,
            self.start + self.len - 1
        )
    }
}

/// The last `n` images of `set` (default: min([`DEFAULT_HOLDOUT_MAX`], a tenth of the set,
/// at least one).
pub fn holdout(set: &TensorSet, n: Option<i64>) -> Result<(TensorSet, Slice)> {
    let of = set.len();
    if of == 0 {
        bail!("the training set holds no images");
    }
    let len = n.unwrap_or((of / 10).clamp(1, DEFAULT_HOLDOUT_MAX));
    if !(1..=of).contains(&len) {
        bail!("--holdout {len}: the training set has {of} images (give 1 to {of})");
    }
    let start = of - len;
    let slice = TensorSet {
        images: set.images.narrow(0, start, len),
        labels: set.labels.narrow(0, start, len),
        normalization: set.normalization.clone(),
    };
    Ok((slice, Slice { start, len, of }))
}

/// One measurement: layer `layer` (an index into the plan) projected at `ratios` alone.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub layer: usize,
    pub ratios: Ratios,
    /// The layer's storage at this projection (docs/METHOD.md §1).
    pub bits: u64,
    /// The model's loss on the slice, and its increase over the uncompressed model's.
    pub loss: f64,
    pub increase: f64,
    /// The task's score on the slice (accuracy in percent, or PSNR in dB).
    pub score: f64,
}

/// What [`measure`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct Sensitivity {
    pub task: Task,
    /// The layers measured (the run's plan).
    pub layers: Vec<LayerSpec>,
    /// The uncompressed model on the slice.
    pub base: Score,
    /// Layer by layer, grid point by grid point.
    pub points: Vec<Point>,
}

/// Compression ratio of `weights` f32 weights stored in `bits`.
pub fn ratio(weights: usize, bits: u64) -> f64 {
    32.0 * weights as f64 / bits as f64
}

impl Sensitivity {
    pub fn points_of(&self, layer: usize) -> impl Iterator<Item = &Point> {
        self.points.iter().filter(move |p| p.layer == layer)
    }

    /// The layer's compression ratio at a point.
    pub fn ratio(&self, p: &Point) -> f64 {
        ratio(self.layers[p.layer].view.len(), p.bits)
    }

    /// `sensitivity.csv`: one row per (layer, grid point).
    pub fn csv(&self) -> String {
        let mut s = String::from("layer,weights,prune,unify,bits,ratio,loss,loss_increase,score\n");
        for p in &self.points {
            let l = &self.layers[p.layer];
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{}",
                csv_field(&l.name),
                l.view.len(),
                p.ratios.prune,
                p.ratios.unify,
                p.bits,
                self.ratio(p),
                p.loss,
                p.increase,
                p.score
            );
        }
        s
    }

    /// One curve per layer for [`sensitivity_plot`].
    pub fn curves(&self) -> Vec<SensitivityCurve> {
        (0..self.layers.len())
            .map(|l| SensitivityCurve {
                layer: self.layers[l].name.clone(),
                points: self
                    .points_of(l)
                    .map(|p| (self.ratio(p), p.increase))
                    .collect(),
            })
            .collect()
    }
}

/// A layer name as a CSV field: quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Measures every layer of `layers` (the plan of `model`'s compressible weights, in
/// order) at every point of `grid` on `set`, scoring in batches of `batch`; `progress`
/// sees each point as it is measured. Every layer is restored exactly after its points
/// (also when a measurement fails).
pub fn measure(
    model: &Model,
    layers: &[LayerSpec],
    task: Task,
    set: &TensorSet,
    grid: &Grid,
    batch: i64,
    progress: &mut dyn FnMut(&Point),
) -> Result<Sensitivity> {
    if layers.len() != model.weights().len() {
        bail!(
            "{} layers planned for a model with {} compressible weights",
            layers.len(),
            model.weights().len()
        );
    }
    let base = evaluate(model, task, set, batch)?;
    let mut points = Vec::with_capacity(layers.len() * grid.points.len());
    for (l, (spec, w)) in layers.iter().zip(model.weights()).enumerate() {
        let saved = w.detach().copy();
        let data = crate::train::tensors::host(w)?;
        let measured = grid.points.iter().try_for_each(|&r| -> Result<()> {
            let proj = project(
                std::slice::from_ref(spec),
                &[&data],
                &SelectionMode::PerLayer(vec![r]),
            )
            .with_context(|| format!("projecting layer {}", spec.name))?;
            let proj = &proj[0];
            set_values(w, &proj.z)?;
            let score = evaluate(model, task, set, batch)?;
            let p = Point {
                layer: l,
                ratios: r,
                bits: storage_bits(&spec.grid(), &proj.states),
                loss: score.loss,
                increase: score.loss - base.loss,
                score: score.value,
            };
            progress(&p);
            points.push(p);
            Ok(())
        });
        tch::no_grad(|| w.shallow_clone().f_copy_(&saved))
            .with_context(|| format!("restoring layer {}", spec.name))?;
        measured?;
    }
    Ok(Sensitivity {
        task,
        layers: layers.to_vec(),
        base,
        points,
    })
}

/// The per-layer ratios of a proposal and what they are predicted to give.
#[derive(Clone, Debug, PartialEq)]
pub struct Proposal {
    /// One pair per layer, in plan order, with the layer's name.
    pub ratios: Vec<(String, Ratios)>,
    /// Σ bits of the chosen points, and the network compression ratio they give.
    pub bits: u64,
    pub ratio: f64,
    /// The base loss plus the sum of the chosen points' increases.
    pub loss: f64,
}

/// The largest bit count whose ratio for `weights` is at least `target` (as [`ratio`]
/// computes it, so that the check of a proposal agrees with its choice).
fn bit_budget(weights: usize, target: f64) -> u64 {
    // The float-to-integer cast saturates; the loops only fix the last rounding step.
    let mut b = (32.0 * weights as f64 / target).floor() as u64;
    while b > 0 && ratio(weights, b) < target {
        b -= 1;
    }
    while b < u64::MAX && ratio(weights, b + 1) >= target {
        b += 1;
    }
    b
}

/// The points, one per layer, whose network ratio is at least `target` at the smallest
/// predicted loss; an error naming the best reachable ratio when none reaches it.
pub fn propose(s: &Sensitivity, target: f64) -> Result<Proposal> {
    if !(target.is_finite() && target > 0.0) {
        bail!("--target-ratio must be a positive number, got {target}");
    }
    let per_layer: Vec<Vec<&Point>> = (0..s.layers.len())
        .map(|l| s.points_of(l).collect())
        .collect();
    let choices: Vec<Vec<Choice>> = per_layer
        .iter()
        .map(|ps| {
            ps.iter()
                .map(|p| Choice {
                    bits: p.bits,
                    increase: p.increase,
                })
                .collect()
        })
        .collect();
    let weights: usize = s.layers.iter().map(|l| l.view.len()).sum();
    let Some(picks) = knapsack::solve(&choices, bit_budget(weights, target)) else {
        let fewest: u64 = choices
            .iter()
            .map(|c| {
                c.iter()
                    .filter(|c| c.increase.is_finite())
                    .map(|c| c.bits)
                    .min()
                    .unwrap_or(u64::MAX)
            })
            .fold(0u64, u64::saturating_add);
        bail!(
            "no choice of the grid's points reaches a compression ratio of {target}: the \
             most the grid reaches is {:.3}x (every layer at its smallest measured storage); \
             lower --target-ratio or add larger ratios to --grid",
            ratio(weights, fewest)
        );
    };
    let bits = knapsack::total_bits(&choices, &picks);
    Ok(Proposal {
        ratios: picks
            .iter()
            .zip(&per_layer)
            .map(|(&j, ps)| (s.layers[ps[j].layer].name.clone(), ps[j].ratios))
            .collect(),
        bits,
        ratio: ratio(weights, bits),
        loss: s.base.loss + knapsack::total_increase(&choices, &picks),
    })
}

/// The proposal as a complete run configuration: `base` (the model, data and block shapes
/// the measurement used, the rest as configured) with the proposal's per-layer ratios and
/// no dense epochs (the model is trained already).
pub fn proposal_settings(base: &Settings, p: &Proposal) -> Settings {
    let mut s = base.clone();
    // In name order, as the file's `[ratios]` table reads back.
    let mut ratios = p.ratios.clone();
    ratios.sort_by(|a, b| a.0.cmp(&b.0));
    s.admm.targets = Targets::PerLayer(ratios);
    s.admm.dense_epochs = 0;
    s
}

/// `proposal.toml`: `header` as comment lines over the settings in the file schema,
/// checked to parse and resolve back to `settings` (`origin` names the file in errors).
pub fn proposal_toml(settings: &Settings, header: &[String], origin: &Path) -> Result<String> {
    let mut text = String::new();
    for line in header {
        for l in line.lines() {
            let _ = writeln!(text, "# {l}");
        }
    }
    text.push('\n');
    text.push_str(&settings.to_toml()?);
    let again = FileConfig::parse(&text, origin)?
        .resolve()
        .with_context(|| format!("checking {}", origin.display()))?;
    if again != *settings {
        bail!(
            "{} does not read back as the settings it was made from",
            origin.display()
        );
    }
    Ok(text)
}

/// The folder `train-gpu sensitivity` writes into, locked while this value lives (see
/// [`OutDir`]: earlier sensitivity outputs may be replaced, anything else is kept).
#[derive(Debug)]
pub struct OutputDir(pub OutDir);

impl std::ops::Deref for OutputDir {
    type Target = OutDir;

    fn deref(&self) -> &OutDir {
        &self.0
    }
}

impl OutputDir {
    pub fn open(path: &Path, force: bool) -> Result<Self> {
        let owned = Owned {
            who: "train-gpu sensitivity",
            earlier: "an earlier sensitivity's",
            files: &SENSITIVITY_FILES,
            subfolders: false,
        };
        Ok(Self(OutDir::open(path, force, owned)?))
    }

    /// Writes `sensitivity.csv` and `sensitivity.png` (each atomically), first removing
    /// an earlier `proposal.toml`: it was chosen from other measurements.
    pub fn write_measurements(&self, s: &Sensitivity) -> Result<()> {
        let old = self.file(PROPOSAL);
        if old.is_file() {
            std::fs::remove_file(&old)
                .with_context(|| format!("removing the earlier {}", old.display()))?;
        }
        write_atomic(&self.file(SENSITIVITY_CSV), s.csv().as_bytes())?;
        sensitivity_plot(&self.file(SENSITIVITY_PNG), &s.curves())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_hold_every_pair_that_sums_to_at_most_one() {
        let g: Grid = "0.9,0.5,0.5/0.1,0.6".parse().unwrap();
        let r = |prune, unify| Ratios { prune, unify };
        assert_eq!(g.points, [r(0.0, 0.0), r(0.5, 0.1), r(0.9, 0.1)]);
        let d = Grid::default();
        assert_eq!(d.points[0], Ratios::default());
        assert!(d.points.iter().all(|p| p.prune + p.unify <= 1.0 + 1e-9));
        assert!(d.points.contains(&r(0.9, 0.1)) && !d.points.contains(&r(0.95, 0.1)));
        for (bad, needle) in [
            ("0,0.5", "is not PRUNE"),
            ("0,1.5/0", "prune value \"1.5\""),
            ("0/x", "unify value \"x\""),
            ("0/NaN", "unify value \"NaN\""),
        ] {
            let e = bad.parse::<Grid>().unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn the_budget_is_the_largest_that_reaches_the_target() {
        for (w, t) in [(1000, 3.0), (266_200, 20.0), (7, 1.0), (5, 0.1), (3, 1e-17)] {
            let b = bit_budget(w, t);
            assert!(ratio(w, b) >= t && ratio(w, b + 1) < t, "{w} {t}: {b}");
        }
        // Past u64: every count fits.
        assert_eq!(bit_budget(1, 1e-300), u64::MAX);
    }

    fn toy(increases: &[&[(u64, f64)]]) -> Sensitivity {
        let block = crate::BlockShape::new(1, 1).unwrap();
        Sensitivity {
            task: Task::Classify,
            layers: (0..increases.len())
                .map(|i| LayerSpec::new(format!("l{i}"), &[10, 10], block).unwrap())
                .collect(),
            base: Score {
                loss: 0.5,
                value: 90.0,
            },
            points: increases
                .iter()
                .enumerate()
                .flat_map(|(layer, ps)| {
                    ps.iter()
                        .enumerate()
                        .map(move |(j, &(bits, increase))| Point {
                            layer,
                            ratios: Ratios {
                                prune: j as f64 / 10.0,
                                unify: 0.0,
                            },
                            bits,
                            loss: 0.5 + increase,
                            increase,
                            score: 0.0,
                        })
                })
                .collect(),
        }
    }

    #[test]
    fn proposals_reach_the_target_at_the_least_increase() {
        // 200 weights: 6400 dense bits.
        let s = toy(&[
            &[(3200, 0.0), (640, 0.1), (320, 0.5)],
            &[(3200, 0.0), (640, 0.3), (320, 0.35)],
        ]);
        let p = propose(&s, 5.0).unwrap();
        // 1280 bits allowed: both at 640 (0.4), not 320 + 640 (0.45 or 0.85).
        assert_eq!(p.bits, 1280);
        assert!((p.loss - 0.9).abs() < 1e-12, "{p:?}");
        assert_eq!(p.ratio, 5.0);
        assert_eq!(p.ratios[1].0, "l1");
        let p = propose(&s, 6400.0 / 960.0).unwrap();
        assert_eq!(p.bits, 960);
        assert!((p.loss - 0.5 - 0.45).abs() < 1e-12, "{p:?}");
        let e = propose(&s, 10.1).unwrap_err().to_string();
        assert!(
            e.contains("ratio of 10.1") && e.contains("most the grid reaches is 10.000x"),
            "{e}"
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(propose(&s, bad).is_err());
        }
    }

    #[test]
    fn layer_names_are_quoted_in_csv_when_needed() {
        assert_eq!(csv_field("fc1"), "fc1");
        assert_eq!(csv_field("a,\"b\""), "\"a,\"\"b\"\"\"");
    }
}
