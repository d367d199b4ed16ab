//! What a `train-gpu` run depends on ([`AdmmConfig`]), its checks, and the plan of layers
//! to project that it implies for a model.

use crate::block::{BlockShape, LayerSpec, Ratios, SelectionMode};
use crate::train::models::ModelKind;
use crate::train::network::{LayerFilter, LayerInfo, ModelInfo, ModelSource};
use anyhow::{Result, bail};
use regex::Regex;
use serde::{Deserialize, Serialize};

/// The most epochs one phase may have (dense, ADMM rounds × epochs per round, retraining):
/// far beyond any useful run, and small enough that every count and seed derived from
/// epochs stays exact.
pub const MAX_PHASE_EPOCHS: usize = 100_000;

/// Each epoch's batch order is seeded with `seed · SEED_STRIDE + epoch` (see
/// [`AdmmConfig::epoch_seed`]).
const SEED_STRIDE: i64 = 10_000;

/// The largest seed (in magnitude) whose epoch seeds fit in an `i64`.
pub const MAX_SEED: i64 = (i64::MAX - 3 * MAX_PHASE_EPOCHS as i64) / SEED_STRIDE;

/// The optimizer of every phase (dense training, W-steps, retraining).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    Adam,
    /// SGD with (heavy-ball) momentum.
    Sgd,
}

/// How the learning rate moves within the dense and the retraining phase. W-steps run at
/// the constant `lr` (ADMM's penalty needs a steady step to pull W towards Z).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    Constant,
    /// Half a cosine from `lr` down to `lr / 100` over the phase's epochs.
    Cosine,
}

impl Schedule {
    /// The learning rate of epoch `e` (0-based) of a phase of `n` epochs.
    pub fn lr(self, lr: f64, e: usize, n: usize) -> f64 {
        match self {
            Schedule::Constant => lr,
            Schedule::Cosine if n <= 1 => lr,
            Schedule::Cosine => {
                let floor = lr / 100.0;
                let t = e as f64 / (n - 1) as f64;
                floor + (lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

fn constant() -> Schedule {
    Schedule::Constant
}

/// Which blocks to prune and unify: per layer (every compressible layer named once), or one
/// pair ranked across the network (docs/METHOD.md §2, global mode).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Targets {
    PerLayer(Vec<(String, Ratios)>),
    Global(Ratios),
}

/// What the network is trained to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Logits `[N, classes]` against integer labels (cross-entropy; accuracy).
    #[default]
    Classify,
    /// An output of the input's shape against the input (mean squared error; PSNR).
    Reconstruct,
}

impl Task {
    /// A score of this task as text: `99.12% accuracy` or `31.20 dB PSNR`.
    pub fn show(self, v: f64) -> String {
        match self {
            Task::Classify => format!("accuracy {v:.2}%"),
            Task::Reconstruct => format!("PSNR {v:.2} dB"),
        }
    }
}

/// Everything a run depends on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdmmConfig {
    /// A built-in network's name or a TorchScript file.
    pub model: ModelSource,
    /// Compress only the candidate layers whose names match this (regular expression).
    #[serde(default)]
    pub include: Option<String>,
    /// Leave the candidate layers whose names match this dense (regular expression).
    #[serde(default)]
    pub exclude: Option<String>,
    #[serde(default)]
    pub task: Task,
    /// The block shape of every layer not named in `layer_blocks`.
    pub block: BlockShape,
    /// Per-layer block shapes (docs/METHOD.md §1: block shape is a per-layer setting).
    #[serde(default)]
    pub layer_blocks: Vec<(String, BlockShape)>,
    pub targets: Targets,
    /// Initial penalty ρ₀.
    pub rho0: f64,
    /// Growth per round: ρ ← min(ρ·γ, ρ_max).
    pub gamma: f64,
    pub rho_max: f64,
    /// ADMM rounds; 0 is the one-shot baseline (hard projection of the dense weights, then
    /// the same retraining).
    pub rounds: usize,
    pub epochs_per_round: usize,
    pub optimizer: OptimizerKind,
    /// The learning rate: the start of the dense and retraining schedules, and the W-steps'.
    pub lr: f64,
    /// SGD's momentum (unused by Adam).
    pub momentum: f64,
    pub schedule: Schedule,
    /// Rescale the scaled dual U by ρ_old/ρ_new whenever ρ grows, keeping the unscaled
    /// dual ρU (docs/METHOD.md §3 leaves this open; Boyd et al. 2011 §3.4.1 rescale).
    #[serde(default)]
    pub rescale_dual: bool,
    /// The retraining phase's starting learning rate (default: `lr`). Fine-tuning a model
    /// that already fits its structure wants a smaller step than training from scratch.
    #[serde(default)]
    pub retrain_lr: Option<f64>,
    /// The learning-rate schedule over all W-step epochs of the ADMM phase.
    #[serde(default = "constant")]
    pub admm_schedule: Schedule,
    pub dense_epochs: usize,
    pub retrain_epochs: usize,
    pub batch: i64,
    pub seed: i64,
    /// Start from these weights (a tch `.ot` or `.safetensors` of the model's variables)
    /// instead of the seeded initialisation; `dense_epochs` may then be 0.
    #[serde(default)]
    pub init: Option<std::path::PathBuf>,
    /// Evaluate on the test set after every epoch (progress only; costs eval time).
    pub eval_every_epoch: bool,
}

impl AdmmConfig {
    /// The demo: LeNet-5, 4×4 blocks, per-layer targets conv1 0.2/0.4, conv2
    /// 0.7/0.2, fc1 0.95/0.04, fc2 0.5/0.3, 6 dense epochs, 10 rounds of 1 epoch with
    /// ρ₀ 5e-3 and γ 1.5, 5 retraining epochs, Adam 1e-3 (cosine-annealed within each
    /// phase), batch 64, seed 1. Measured choices (LeNet-5, seed 1, one run each): cosine
    /// dense training 99.3% against 98.8% at a constant rate; cosine over ADMM 99.20% final
    /// against 99.12% constant; 5 retraining epochs 99.22% against 99.20% with 3.
    pub fn demo() -> Self {
        let r = |p, u| Ratios { prune: p, unify: u };
        Self {
            model: ModelSource::Builtin(ModelKind::Lenet5),
            include: None,
            exclude: None,
            task: Task::Classify,
            block: BlockShape::default(),
            layer_blocks: Vec::new(),
            targets: Targets::PerLayer(vec![
                ("conv1".into(), r(0.2, 0.4)),
                ("conv2".into(), r(0.7, 0.2)),
                ("fc1".into(), r(0.95, 0.04)),
                ("fc2".into(), r(0.5, 0.3)),
            ]),
            rho0: 5e-3,
            gamma: 1.5,
            rho_max: 1.0,
            rounds: 10,
            epochs_per_round: 1,
            optimizer: OptimizerKind::Adam,
            lr: 1e-3,
            momentum: 0.9,
            schedule: Schedule::Cosine,
            admm_schedule: Schedule::Cosine,
            retrain_lr: None,
            rescale_dual: false,
            dense_epochs: 6,
            retrain_epochs: 5,
            batch: 64,
            seed: 1,
            init: None,
            eval_every_epoch: true,
        }
    }

    /// Which candidate layers are compressed.
    pub fn filter(&self) -> LayerFilter {
        LayerFilter {
            include: self.include.clone(),
            exclude: self.exclude.clone(),
        }
    }

    /// ρ of the round after one at `rho`: `min(ρ·γ, ρ_max)`.
    pub fn next_rho(&self, rho: f64) -> f64 {
        (rho * self.gamma).min(self.rho_max)
    }

    /// ρ after `rounds` rounds, starting at ρ₀.
    pub fn rho_after(&self, rounds: usize) -> f64 {
        (0..rounds).fold(self.rho0, |rho, _| self.next_rho(rho))
    }

    /// The seed of the batch order of epoch `epoch` (1-based, counted over the whole run).
    pub fn epoch_seed(&self, epoch: usize) -> i64 {
        self.seed * SEED_STRIDE + epoch as i64
    }

    /// Epochs of the ADMM phase (`rounds · epochs_per_round`; bounded by [`Self::check`]).
    pub fn admm_epochs(&self) -> usize {
        self.rounds.saturating_mul(self.epochs_per_round)
    }

    /// Every epoch of the run.
    pub fn total_epochs(&self) -> usize {
        self.dense_epochs
            .saturating_add(self.admm_epochs())
            .saturating_add(self.retrain_epochs)
    }

    /// Checks the scalar settings (ratios are checked against the model in [`layer_plan`]).
    pub fn check(&self) -> Result<()> {
        let pos = |name: &str, v: f64| -> Result<()> {
            if !(v.is_finite() && v > 0.0) {
                bail!("{name} must be a positive number, got {v}");
            }
            Ok(())
        };
        pos("rho0", self.rho0)?;
        pos("rho-max", self.rho_max)?;
        pos("lr", self.lr)?;
        if let Some(lr) = self.retrain_lr {
            pos("retrain-lr", lr)?;
        }
        if !(0.0..1.0).contains(&self.momentum) {
            bail!("momentum must be in [0, 1), got {}", self.momentum);
        }
        if self.rho0 > self.rho_max {
            bail!(
                "rho0 {} exceeds rho-max {}: ρ starts at ρ₀ and only grows",
                self.rho0,
                self.rho_max
            );
        }
        if !(self.gamma.is_finite() && self.gamma >= 1.0) {
            bail!("gamma must be at least 1, got {}", self.gamma);
        }
        if self.batch < 1 {
            bail!("batch must be at least 1, got {}", self.batch);
        }
        if self.rounds > 0 && self.epochs_per_round == 0 {
            bail!("ADMM rounds need at least one epoch each");
        }
        for (name, n) in [
            ("dense-epochs", self.dense_epochs),
            ("rounds", self.rounds),
            ("rounds × epochs-per-round", self.admm_epochs()),
            ("retrain-epochs", self.retrain_epochs),
        ] {
            if n > MAX_PHASE_EPOCHS {
                bail!("{name} is {n}; at most {MAX_PHASE_EPOCHS} epochs per phase");
            }
        }
        if self.seed.unsigned_abs() > MAX_SEED.unsigned_abs() {
            bail!(
                "seed {} is out of range: at most {MAX_SEED} in magnitude",
                self.seed
            );
        }
        match &self.targets {
            Targets::Global(r) => {
                Ratios::new(r.prune, r.unify, "--global")?;
            }
            Targets::PerLayer(v) => {
                for (name, r) in v {
                    Ratios::new(r.prune, r.unify, &format!("layer {name}"))?;
                }
            }
        }
        Ok(())
    }
}

/// For each layer, the value given for it: under its exact name, else under the one
/// pattern (a regular expression matching the whole name) that matches it. Every key must
/// name or match some layer, no exact name may be given twice, and no layer may match two
/// patterns.
fn assign<T: Copy>(
    (what, one): (&str, &str),
    given: &[(String, T)],
    layers: &[LayerInfo],
    info: &ModelInfo,
) -> Result<Vec<Option<T>>> {
    let names: Vec<&str> = layers.iter().map(|l| l.name.as_str()).collect();
    let list = names.join(", ");
    let mut exact: Vec<(&str, T)> = Vec::new();
    let mut patterns: Vec<(&str, Regex, T)> = Vec::new();
    for (key, v) in given {
        if names.contains(&key.as_str()) {
            if exact.iter().any(|(k, _)| k == key) {
                bail!("layer {key:?} is given {one} twice");
            }
            exact.push((key, *v));
            continue;
        }
        let re = Regex::new(&format!("^(?:{key})$")).ok();
        match re {
            Some(re) if names.iter().any(|n| re.is_match(n)) => patterns.push((key, re, *v)),
            _ => bail!(
                "{what} name layer {key:?}, which {} does not have (layers: {list})",
                info.label
            ),
        }
    }
    names
        .iter()
        .map(|n| {
            if let Some((_, v)) = exact.iter().find(|(k, _)| k == n) {
                return Ok(Some(*v));
            }
            let mut m = patterns.iter().filter(|(_, re, _)| re.is_match(n));
            match (m.next(), m.next()) {
                (Some((a, ..)), Some((b, ..))) => bail!(
                    "layer {n:?} matches both {a:?} and {b:?} in the {what}; give it by its exact name"
                ),
                (first, _) => Ok(first.map(|(_, _, v)| *v)),
            }
        })
        .collect()
}

/// The layers to project and their selection mode, checked against the model: every
/// layer given ratios once in per-layer mode (by name or pattern), no unknown names, ratios
/// in range, and a block no larger than any layer's GEMM view.
pub fn layer_plan(cfg: &AdmmConfig, info: &ModelInfo) -> Result<(Vec<LayerSpec>, SelectionMode)> {
    cfg.check()?;
    let layers = &info.layers;
    let names: Vec<&str> = layers.iter().map(|l| l.name.as_str()).collect();
    let blocks = assign(
        ("block shapes", "a block shape"),
        &cfg.layer_blocks,
        layers,
        info,
    )?;
    let mut specs = Vec::new();
    for (l, b) in layers.iter().zip(blocks) {
        let b = b.unwrap_or(cfg.block);
        let name = &l.name;
        let spec = LayerSpec::new(name.clone(), &l.shape, b)?;
        let v = spec.view;
        if b.rows > v.rows || b.cols > v.cols {
            bail!(
                "block {b} is larger than layer {name} allows: its GEMM view is {}x{}",
                v.rows,
                v.cols
            );
        }
        specs.push(spec);
    }
    let mode = match &cfg.targets {
        Targets::Global(r) => SelectionMode::Global(*r),
        Targets::PerLayer(given) => {
            let found = assign(("ratios", "ratios"), given, layers, info)?;
            let mut ratios = Vec::new();
            for (n, r) in names.iter().zip(found) {
                let Some(r) = r else {
                    bail!(
                        "no ratios for layer {n:?} (give every layer: {})",
                        names.join(", ")
                    );
                };
                ratios.push(r);
            }
            SelectionMode::PerLayer(ratios)
        }
    };
    Ok((specs, mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(c: &AdmmConfig) -> Result<(Vec<LayerSpec>, SelectionMode)> {
        layer_plan(c, &c.model.info(&c.filter())?)
    }

    /// Ratios and block shapes by pattern: exact names first, then the one pattern that
    /// matches the whole name; a pattern that matches nothing, or two that match one
    /// layer, are errors.
    #[test]
    fn patterns_assign_ratios_and_blocks() {
        let r = |p, u| Ratios { prune: p, unify: u };
        let mut c = AdmmConfig::demo();
        c.targets = Targets::PerLayer(vec![
            ("conv.*".into(), r(0.1, 0.1)),
            ("fc1".into(), r(0.9, 0.05)),
            ("fc\\d".into(), r(0.5, 0.2)),
        ]);
        let b28 = BlockShape::new(2, 8).unwrap();
        c.layer_blocks = vec![("fc.".into(), b28)];
        let (specs, mode) = plan(&c).unwrap();
        let SelectionMode::PerLayer(got) = mode else {
            panic!()
        };
        assert_eq!(got, [r(0.1, 0.1), r(0.1, 0.1), r(0.9, 0.05), r(0.5, 0.2)]);
        let blocks: Vec<BlockShape> = specs.iter().map(|s| s.block).collect();
        assert_eq!(blocks, [c.block, c.block, b28, b28]);
        // "conv" alone matches no whole name.
        c.layer_blocks = vec![("conv".into(), b28)];
        let e = plan(&c).unwrap_err().to_string();
        assert!(e.contains("block shapes name layer \"conv\""), "{e}");
        c.layer_blocks = vec![];
        c.targets = Targets::PerLayer(vec![
            (".*".into(), r(0.1, 0.1)),
            ("fc.".into(), r(0.5, 0.2)),
        ]);
        let e = plan(&c).unwrap_err().to_string();
        assert!(e.contains("\"fc1\" matches both"), "{e}");
    }

    #[test]
    fn the_plan_checks_names_ratios_and_block_size() {
        let cfg = AdmmConfig::demo();
        let (specs, mode) = plan(&cfg).unwrap();
        assert_eq!(specs.len(), 4);
        assert!(matches!(mode, SelectionMode::PerLayer(ref r) if r.len() == 4));

        let mut c = cfg.clone();
        let Targets::PerLayer(v) = &mut c.targets else {
            unreachable!()
        };
        v[0].0 = "conv9".into();
        let e = plan(&c).unwrap_err().to_string();
        assert!(e.contains("conv9"), "{e}");

        let mut c = cfg.clone();
        let Targets::PerLayer(v) = &mut c.targets else {
            unreachable!()
        };
        v.pop();
        let e = plan(&c).unwrap_err().to_string();
        assert!(e.contains("no ratios for layer \"fc2\""), "{e}");

        let mut c = cfg.clone();
        c.block = BlockShape::new(16, 16).unwrap();
        let e = plan(&c).unwrap_err().to_string();
        assert!(e.contains("larger than layer fc2"), "{e}");

        let mut c = cfg.clone();
        c.targets = Targets::Global(Ratios {
            prune: 0.9,
            unify: 0.2,
        });
        let e = plan(&c).unwrap_err().to_string();
        assert!(e.contains("must not exceed 1"), "{e}");

        let mut c = cfg.clone();
        c.rho0 = 2.0;
        assert!(c.check().unwrap_err().to_string().contains("rho-max"));

        // Per-layer block shapes override the network's.
        let mut c = cfg.clone();
        let b28 = BlockShape::new(2, 8).unwrap();
        c.layer_blocks = vec![("fc1".into(), b28)];
        let (specs, _) = plan(&c).unwrap();
        let blocks: Vec<BlockShape> = specs.iter().map(|s| s.block).collect();
        assert_eq!(blocks, [c.block, c.block, b28, c.block]);
        c.layer_blocks.push(("fc1".into(), b28));
        let e = plan(&c).unwrap_err().to_string();
        assert!(e.contains("\"fc1\" is given a block shape twice"), "{e}");
        c.layer_blocks = vec![("fc7".into(), b28)];
        let e = plan(&c).unwrap_err().to_string();
        assert!(e.contains("layer \"fc7\""), "{e}");
        let e = BlockShape::new(8, 64).unwrap_err().to_string();
        assert!(e.contains("at most 32 per side"), "{e}");
    }

    #[test]
    fn counts_and_seeds_are_bounded() {
        let cfg = AdmmConfig::demo();
        let mut c = cfg.clone();
        c.rounds = usize::MAX;
        let e = c.check().unwrap_err().to_string();
        assert!(e.contains("at most 100000 epochs per phase"), "{e}");
        let mut c = cfg.clone();
        c.rounds = 1000;
        c.epochs_per_round = 1000;
        let e = c.check().unwrap_err().to_string();
        assert!(e.contains("rounds × epochs-per-round is 1000000"), "{e}");
        for seed in [i64::MAX, i64::MIN, MAX_SEED + 1] {
            let mut c = cfg.clone();
            c.seed = seed;
            assert!(
                c.check().unwrap_err().to_string().contains("seed"),
                "{seed}"
            );
        }
        let mut c = cfg.clone();
        c.seed = -MAX_SEED;
        c.check().unwrap();
        c.seed = MAX_SEED;
        c.check().unwrap();
        let last = c.total_epochs().max(3 * MAX_PHASE_EPOCHS);
        assert!(c.epoch_seed(last) > 0);
    }

    #[test]
    fn rho_grows_to_its_bound() {
        let c = AdmmConfig::demo();
        assert_eq!(c.rho_after(0), c.rho0);
        assert_eq!(c.rho_after(1), c.rho0 * c.gamma);
        assert_eq!(c.rho_after(1000), c.rho_max);
        assert_eq!(c.next_rho(c.rho_max), c.rho_max);
    }
}
