//! The state of an unfinished run, saved after every epoch and every ADMM round as one
//! `.safetensors` file (written atomically), from which `--resume` continues exactly: the
//! model's variables, the optimizer's moments, Z and U, the hard projection's states and
//! signs, ρ, the epoch counter that seeds the batch order, and the metrics so far.
//!
//! A checkpoint is trusted only after two checks. [`Checkpoint::from_bytes`] needs nothing
//! but the bytes: a SHA-256 over everything the file holds (every tensor's name, type,
//! shape and bytes, and the progress JSON) must match the one stored in its metadata, and
//! every field must be in range for the configuration it carries (counters within their
//! phases, phases in order, the records as long as the counters say, ρ where ρ₀, γ and the
//! rounds put it, accuracies in [0, 100], no NaN or infinity anywhere). Then
//! [`Checkpoint::check_against`] compares it with the run's configuration and model: the
//! same configuration, every tensor present with its shape, block states per block, signs
//! exactly on the unified blocks.
//!
//! SHA-256 rather than CRC-32 (both were in the dependency tree): a checkpoint is a few MB
//! to a few hundred MB written once per epoch, SHA-256 hashes it in milliseconds to a
//! second, and its chance of missing a damaged file is nil where CRC-32's is 2⁻³².

use crate::block::BlockState;
use crate::fsio::{read_regular, write_atomic};
use crate::train::config::{AdmmConfig, OptimizerKind, Task, layer_plan};
use crate::train::network::{ModelInfo, ModelSource};
use crate::train::report::{EpochRecord, LayerResiduals, Phase, RoundReport, Timings};
use anyhow::{Context, Result, bail};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// File name of the checkpoint inside a run folder.
pub const FILE: &str = "checkpoint.safetensors";
/// The metadata key that marks a file as a `train-gpu` checkpoint (its progress JSON).
const KEY: &str = "microunify.train_gpu.checkpoint";
/// The metadata key of the checksum (see the module documentation).
const CHECKSUM_KEY: &str = "microunify.train_gpu.sha256";
/// Bumped when the layout changes; older checkpoints are refused by name. Version 2 added
/// the checksum.
const VERSION: u32 = 2;
/// The largest checkpoint read: 64 GiB, far above any model this trains, a bound on what
/// a damaged file can make this program allocate.
pub const MAX_BYTES: u64 = 64 << 30;

/// Where a run stands. Counters say how much of each phase is done.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub version: u32,
    pub config: AdmmConfig,
    pub dense_done: usize,
    pub rounds_done: usize,
    /// The hard projection has run (states and signs are fixed).
    pub projected: bool,
    pub retrain_done: usize,
    /// ρ of the next round.
    pub rho: f64,
    /// The optimizer's step count (Adam's bias correction), as of the checkpoint.
    pub optimizer_steps: i64,
    pub dense_accuracy: Option<f64>,
    pub hard_projection_accuracy: Option<f64>,
    /// Accuracy evaluated after the latest epoch of the current phase (so a phase's end is
    /// not evaluated twice).
    pub last_accuracy: Option<f64>,
    /// Every epoch trained so far; the next one's batch order is seeded by its number.
    pub epochs: Vec<EpochRecord>,
    pub rounds: Vec<RoundReport>,
    pub residuals: Vec<LayerResiduals>,
    pub timings: Timings,
}

impl Progress {
    pub fn new(config: &AdmmConfig) -> Self {
        Self {
            version: VERSION,
            config: config.clone(),
            dense_done: 0,
            rounds_done: 0,
            projected: false,
            retrain_done: 0,
            rho: config.rho0,
            optimizer_steps: 0,
            dense_accuracy: None,
            hard_projection_accuracy: None,
            last_accuracy: None,
            epochs: Vec::new(),
            rounds: Vec::new(),
            residuals: Vec::new(),
            timings: Timings::default(),
        }
    }

    /// Every counter and record in range for the progress's own configuration; the
    /// problem as text.
    fn check(&self) -> Result<(), String> {
        let c = &self.config;
        c.check()
            .map_err(|e| format!("its configuration is invalid: {e:#}"))?;
        let counter = |name: &str, done: usize, of: usize, what: &str| {
            if done > of {
                Err(format!("{name} is {done}, but the run has {of} {what}"))
            } else {
                Ok(())
            }
        };
        counter(
            "dense_done",
            self.dense_done,
            c.dense_epochs,
            "dense epochs",
        )?;
        counter("rounds_done", self.rounds_done, c.rounds, "ADMM rounds")?;
        counter(
            "retrain_done",
            self.retrain_done,
            c.retrain_epochs,
            "retraining epochs",
        )?;
        let dense_over = self.dense_done == c.dense_epochs;
        if self.rounds_done > 0 && !dense_over {
            return Err(format!(
                "ADMM rounds are done (rounds_done {}) before dense training ended (dense_done {} of {})",
                self.rounds_done, self.dense_done, c.dense_epochs
            ));
        }
        if self.projected && !(dense_over && self.rounds_done == c.rounds) {
            return Err(format!(
                "the hard projection is done before dense training and the ADMM rounds ended \
                 (dense_done {} of {}, rounds_done {} of {})",
                self.dense_done, c.dense_epochs, self.rounds_done, c.rounds
            ));
        }
        if self.retrain_done > 0 && !self.projected {
            return Err(format!(
                "retraining epochs are done (retrain_done {}) before the hard projection",
                self.retrain_done
            ));
        }
        // ρ of each round so far, and after the last: computed once (records are checked
        // against it in linear time, whatever their number).
        let rho_at: Vec<f64> = std::iter::successors(Some(c.rho0), |&r| Some(c.next_rho(r)))
            .take(self.rounds_done + 1)
            .collect();
        let admm = self.rounds_done * c.epochs_per_round;
        let expected = self.dense_done + admm + self.retrain_done;
        if self.epochs.len() != expected {
            return Err(format!(
                "it records {} epochs, but its counters make {expected}",
                self.epochs.len()
            ));
        }
        for (i, e) in self.epochs.iter().enumerate() {
            let (phase, phase_epoch, rho) = if i < self.dense_done {
                (Phase::Dense, i + 1, None)
            } else if i < self.dense_done + admm {
                let j = i - self.dense_done;
                (Phase::Admm, j + 1, Some(rho_at[j / c.epochs_per_round]))
            } else {
                (Phase::Retrain, i - self.dense_done - admm + 1, None)
            };
            if (e.epoch, e.phase, e.phase_epoch, e.rho) != (i + 1, phase, phase_epoch, rho) {
                return Err(format!(
                    "epoch record {} is {} epoch {} (ρ {:?}); the counters make it epoch {} of \
                     the run, {} epoch {phase_epoch} (ρ {rho:?})",
                    i + 1,
                    e.phase.name(),
                    e.phase_epoch,
                    e.rho,
                    i + 1,
                    phase.name()
                ));
            }
            let at = format!("epoch {}", i + 1);
            positive(&format!("the learning rate of {at}"), e.lr)?;
            non_negative(&format!("the loss of {at}"), e.loss)?;
            non_negative(&format!("the seconds of {at}"), e.seconds)?;
            accuracy(
                c.task,
                &format!("the test accuracy of {at}"),
                e.test_accuracy,
            )?;
        }
        if self.rounds.len() != self.rounds_done {
            return Err(format!(
                "it records {} ADMM rounds, but rounds_done is {}",
                self.rounds.len(),
                self.rounds_done
            ));
        }
        for (k, r) in self.rounds.iter().enumerate() {
            if r.round != k + 1 || r.rho != rho_at[k] {
                return Err(format!(
                    "round record {} says round {} at ρ {}; expected round {} at ρ {}",
                    k + 1,
                    r.round,
                    r.rho,
                    k + 1,
                    rho_at[k]
                ));
            }
            non_negative(&format!("the primal residual of round {}", k + 1), r.primal)?;
            non_negative(&format!("the dual residual of round {}", k + 1), r.dual)?;
        }
        for r in &self.residuals {
            non_negative(&format!("a primal residual of round {}", r.round), r.primal)?;
            non_negative(&format!("a dual residual of round {}", r.round), r.dual)?;
        }
        if !(self.rho.is_finite() && self.rho > 0.0 && self.rho <= c.rho_max) {
            return Err(format!(
                "rho is {}, outside (0, rho_max = {}]",
                self.rho, c.rho_max
            ));
        }
        let rho = rho_at[self.rounds_done];
        if self.rho != rho {
            return Err(format!(
                "rho is {}, but {} rounds from rho0 {} by gamma {} (at most rho_max {}) give {rho}",
                self.rho, self.rounds_done, c.rho0, c.gamma, c.rho_max
            ));
        }
        if self.optimizer_steps < 0 {
            return Err(format!(
                "optimizer_steps is {}, a negative count",
                self.optimizer_steps
            ));
        }
        accuracy(c.task, "dense_accuracy", self.dense_accuracy)?;
        accuracy(
            c.task,
            "hard_projection_accuracy",
            self.hard_projection_accuracy,
        )?;
        accuracy(c.task, "last_accuracy", self.last_accuracy)?;
        if (self.rounds_done > 0 || self.projected) && self.dense_accuracy.is_none() {
            return Err("dense_accuracy is missing after dense training ended".into());
        }
        if self.projected != self.hard_projection_accuracy.is_some() {
            return Err(format!(
                "projected is {} but hard_projection_accuracy is {:?}",
                self.projected, self.hard_projection_accuracy
            ));
        }
        let t = &self.timings;
        for (name, v) in [
            ("dense", t.dense),
            ("admm", t.admm),
            ("retrain", t.retrain),
            ("eval", t.eval),
            ("projection", t.projection),
        ] {
            non_negative(&format!("the {name} timing"), v)?;
        }
        Ok(())
    }
}

fn positive(what: &str, v: f64) -> Result<(), String> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(format!("{what} is {v}, not a positive number"))
    }
}

fn non_negative(what: &str, v: f64) -> Result<(), String> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(format!("{what} is {v}, not a finite number ≥ 0"))
    }
}

/// The per-layer residuals are `rounds_done` rounds over `layers`, in order.
fn check_residuals(p: &Progress, layers: &[&str]) -> Result<()> {
    if p.residuals.len() != p.rounds_done * layers.len() {
        bail!(
            "it records {} per-layer residuals, but {} rounds of {} layers make {}",
            p.residuals.len(),
            p.rounds_done,
            layers.len(),
            p.rounds_done * layers.len()
        );
    }
    for (i, r) in p.residuals.iter().enumerate() {
        let (round, layer) = (i / layers.len() + 1, layers[i % layers.len()]);
        if r.round != round || r.layer != layer {
            bail!(
                "residual record {} is round {} layer {:?}; expected round {round} layer {layer:?}",
                i + 1,
                r.round,
                r.layer
            );
        }
    }
    Ok(())
}

/// A score in range: an accuracy in [0, 100] percent, a PSNR finite (and below the cap
/// `fit::evaluate` puts on a perfect reconstruction).
fn accuracy(task: Task, what: &str, v: Option<f64>) -> Result<(), String> {
    match (task, v) {
        (Task::Reconstruct, Some(a)) if !(a.is_finite() && a <= 200.0) => {
            Err(format!("{what} is {a}, not a PSNR in dB"))
        }
        (Task::Reconstruct, _) => Ok(()),
        (Task::Classify, v) => classify_accuracy(what, v),
    }
}

fn classify_accuracy(what: &str, v: Option<f64>) -> Result<(), String> {
    match v {
        Some(a) if !(0.0..=100.0).contains(&a) => {
            Err(format!("{what} is {a}, outside [0, 100] percent"))
        }
        _ => Ok(()),
    }
}

/// A named f32 tensor on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Progress plus the tensors: `var.NAME` (model variables), `opt.first.NAME` /
/// `opt.second.NAME` (moments), `z.LAYER`, `u.LAYER`, `sign.LAYER` (f32) and
/// `states.LAYER` (u8 block states, 0 dense, 1 unified, 2 pruned).
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub progress: Progress,
    pub tensors: BTreeMap<String, HostTensor>,
    pub states: BTreeMap<String, Vec<BlockState>>,
    /// A TorchScript network's whole module (`torch.jit.save` bytes: its buffers, e.g.
    /// BatchNorm statistics, and any other state), stored as the U8 tensor [`MODULE`].
    pub module: Option<Vec<u8>>,
}

/// The tensor name of [`Checkpoint::module`].
const MODULE: &str = "module.torchscript";

/// The f32 tensors' name prefixes (see [`Checkpoint`]).
const F32_PREFIXES: [&str; 6] = ["var.", "opt.first.", "opt.second.", "z.", "u.", "sign."];
const STATES_PREFIX: &str = "states.";

/// Lower-case hex of a SHA-256 digest.
fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `bytes`, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn put(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// The checksum of a checkpoint's contents: the progress JSON and every tensor (name,
/// type, shape, bytes) in name order, each field length-prefixed so that no two
/// different contents hash the same bytes.
fn checksum(progress: &str, views: &[(String, TensorView<'_>)]) -> String {
    let mut h = Sha256::new();
    put(&mut h, b"microunify train-gpu checkpoint");
    put(&mut h, progress.as_bytes());
    let mut sorted: Vec<&(String, TensorView)> = views.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, v) in sorted {
        put(&mut h, name.as_bytes());
        put(&mut h, format!("{:?}", v.dtype()).as_bytes());
        h.update((v.shape().len() as u64).to_le_bytes());
        for &d in v.shape() {
            h.update((d as u64).to_le_bytes());
        }
        put(&mut h, v.data());
    }
    hex(&h.finalize())
}

/// `bytes` with its checksum recomputed over whatever it holds (`None` when it is not a
/// safetensors file with a progress record): for fuzzing, so that mutated files reach the
/// range checks behind the checksum. A file resealed this way is not trusted any more than
/// another; only the checksum check is bypassed.
#[doc(hidden)]
pub fn reseal(bytes: &[u8]) -> Option<Vec<u8>> {
    let (_, meta) = SafeTensors::read_metadata(bytes).ok()?;
    let mut meta = meta.metadata().clone()?;
    let st = SafeTensors::deserialize(bytes).ok()?;
    let views = st.tensors();
    let sum = checksum(meta.get(KEY)?, &views);
    meta.insert(CHECKSUM_KEY.to_string(), sum);
    safetensors::serialize(views, Some(meta)).ok()
}

impl Checkpoint {
    /// The file's bytes: safetensors with the progress JSON and the checksum in its
    /// metadata.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let states: Vec<(String, Vec<u8>)> = self
            .states
            .iter()
            .map(|(k, v)| {
                (
                    format!("{STATES_PREFIX}{k}"),
                    v.iter().map(|&s| s as u8).collect(),
                )
            })
            .collect();
        let mut views = Vec::new();
        for (name, t) in &self.tensors {
            let view = TensorView::new(Dtype::F32, t.shape.clone(), bytemuck::cast_slice(&t.data))
                .with_context(|| format!("checkpoint tensor {name}"))?;
            views.push((name.clone(), view));
        }
        for (name, s) in &states {
            views.push((name.clone(), TensorView::new(Dtype::U8, vec![s.len()], s)?));
        }
        if let Some(m) = &self.module {
            views.push((
                MODULE.to_string(),
                TensorView::new(Dtype::U8, vec![m.len()], m)?,
            ));
        }
        let progress =
            serde_json::to_string(&self.progress).context("encoding the run's progress")?;
        let sum = checksum(&progress, &views);
        let meta = HashMap::from([(KEY.to_string(), progress), (CHECKSUM_KEY.to_string(), sum)]);
        safetensors::serialize(views, Some(meta)).context("encoding the checkpoint")
    }

    /// Writes the checkpoint atomically (temp file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        write_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))
    }

    /// Decodes and checks a checkpoint's bytes (see the module documentation); `origin`
    /// names the file in errors. Never panics, whatever the bytes.
    pub fn from_bytes(bytes: &[u8], origin: &Path) -> Result<Self> {
        let o = origin.display();
        let corrupt = |problem: String| anyhow::anyhow!("{o} is corrupt: {problem}");
        let (_, meta) = SafeTensors::read_metadata(bytes)
            .map_err(|e| corrupt(format!("not a complete safetensors file ({e})")))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let Some(json) = meta.get(KEY) else {
            bail!("{o} is not a train-gpu checkpoint (no {KEY} metadata)");
        };
        // The version first: an older layout would fail to decode with a vaguer message.
        let version = serde_json::from_str::<serde_json::Value>(json)
            .ok()
            .and_then(|v| v.get("version").and_then(serde_json::Value::as_u64));
        if version != Some(VERSION.into()) {
            let v = version.map_or("an unknown version".to_string(), |v| {
                format!("a version {v}")
            });
            bail!("{o} is {v} checkpoint; this train-gpu reads version {VERSION}");
        }
        let Some(stored) = meta.get(CHECKSUM_KEY) else {
            return Err(corrupt(format!("it has no checksum ({CHECKSUM_KEY})")));
        };
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| corrupt(format!("not a complete safetensors file ({e})")))?;
        let views = st.tensors();
        if checksum(json, &views) != *stored {
            return Err(corrupt(
                "its contents do not match their checksum (the file changed after it was written)"
                    .into(),
            ));
        }
        let progress: Progress = serde_json::from_str(json)
            .map_err(|e| corrupt(format!("its progress record does not decode: {e}")))?;
        progress.check().map_err(corrupt)?;
        let mut tensors = BTreeMap::new();
        let mut states = BTreeMap::new();
        let mut module = None;
        for (name, view) in views {
            if name == MODULE {
                if view.dtype() != Dtype::U8 || view.shape().len() != 1 {
                    return Err(corrupt(format!(
                        "tensor {name} is {:?} of shape {:?}, not a U8 vector",
                        view.dtype(),
                        view.shape()
                    )));
                }
                module = Some(view.data().to_vec());
                continue;
            }
            if let Some(layer) = name.strip_prefix(STATES_PREFIX) {
                if view.dtype() != Dtype::U8 || view.shape().len() != 1 {
                    return Err(corrupt(format!(
                        "tensor {name} is {:?} of shape {:?}, not a U8 vector",
                        view.dtype(),
                        view.shape()
                    )));
                }
                let s = view
                    .data()
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| {
                        BlockState::from_code(c.into()).ok_or_else(|| {
                            corrupt(format!("tensor {name} holds state code {c} at block {i}"))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                states.insert(layer.to_string(), s);
                continue;
            }
            if !F32_PREFIXES.iter().any(|p| name.starts_with(p)) {
                return Err(corrupt(format!("unexpected tensor {name}")));
            }
            if view.dtype() != Dtype::F32 {
                return Err(corrupt(format!(
                    "tensor {name} is {:?}, not F32",
                    view.dtype()
                )));
            }
            let data: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                return Err(corrupt(format!(
                    "tensor {name} holds {} at index {i}",
                    data[i]
                )));
            }
            tensors.insert(
                name,
                HostTensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        Ok(Self {
            progress,
            tensors,
            states,
            module,
        })
    }

    /// Reads a checkpoint (a regular file, bounded) and decodes it with
    /// [`Checkpoint::from_bytes`].
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = read_regular(path, MAX_BYTES, "checkpoint")?;
        Self::from_bytes(&bytes, path)
    }

    /// Checks that this checkpoint continues a run of `cfg`: made with `cfg`, and holding
    /// exactly the tensors its phase needs, with the model's shapes (variables and
    /// optimizer moments always; Z and U between rounds; block states and signs once
    /// projected, the signs ±1 on unified blocks and 0 elsewhere).
    pub fn check_against(&self, cfg: &AdmmConfig, info: &ModelInfo) -> Result<()> {
        let p = &self.progress;
        if p.config != *cfg {
            bail!("it was made with another configuration than this run's");
        }
        let (specs, _) = layer_plan(cfg, info)?;
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        check_residuals(p, &names)?;
        let script = matches!(cfg.model, ModelSource::Script(_));
        if script != self.module.is_some() {
            bail!(
                "it {} a copy of the module, which a run of {} {}",
                if script { "lacks" } else { "holds" },
                cfg.model,
                if script { "needs" } else { "does not have" }
            );
        }
        let mut expected: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (name, shape) in info.variables.clone() {
            expected.insert(format!("var.{name}"), shape.clone());
            expected.insert(format!("opt.first.{name}"), shape.clone());
            if cfg.optimizer == OptimizerKind::Adam {
                expected.insert(format!("opt.second.{name}"), shape);
            }
        }
        for spec in &specs {
            let n = vec![spec.view.len()];
            if p.rounds_done > 0 && !p.projected {
                expected.insert(format!("z.{}", spec.name), n.clone());
                expected.insert(format!("u.{}", spec.name), n.clone());
            }
            if p.projected {
                expected.insert(format!("sign.{}", spec.name), n);
            }
        }
        for (name, shape) in &expected {
            let Some(t) = self.tensors.get(name) else {
                bail!("tensor {name} is missing");
            };
            if t.shape != *shape {
                bail!(
                    "tensor {name} has shape {:?}; the model's is {shape:?}",
                    t.shape
                );
            }
        }
        if let Some(name) = self.tensors.keys().find(|n| !expected.contains_key(*n)) {
            bail!("unexpected tensor {name} at this point of the run");
        }
        let layers: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        if !p.projected && !self.states.is_empty() || self.states.len() > layers.len() {
            bail!("it holds block states that this point of the run does not have");
        }
        if let Some(l) = self.states.keys().find(|l| !layers.contains(&l.as_str())) {
            bail!("it holds block states of layer {l:?}, which the model does not have");
        }
        if p.projected {
            for spec in &specs {
                let Some(states) = self.states.get(&spec.name) else {
                    bail!("the block states of layer {} are missing", spec.name);
                };
                let grid = spec.grid();
                if states.len() != grid.num_blocks() {
                    bail!(
                        "layer {} has {} block states, but {} blocks",
                        spec.name,
                        states.len(),
                        grid.num_blocks()
                    );
                }
                let sign = &self.tensors[&format!("sign.{}", spec.name)].data;
                for (b, s) in states.iter().enumerate() {
                    let unified = *s == BlockState::Unified;
                    if let Some(i) = grid.extent(b).indices(spec.view.cols).find(|&i| {
                        let v = sign[i];
                        if unified {
                            v != 1.0 && v != -1.0
                        } else {
                            v != 0.0
                        }
                    }) {
                        bail!(
                            "sign.{} is {} at index {i}, in a {s:?} block (signs are ±1 on \
                             unified blocks, 0 elsewhere)",
                            spec.name,
                            sign[i]
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// The description of the network this checkpoint continues: from its copy of a
    /// TorchScript module, else the built-in of `cfg`.
    pub fn model_info(&self, cfg: &AdmmConfig) -> Result<ModelInfo> {
        match &self.module {
            Some(bytes) => Ok(crate::train::network::Model::from_module_bytes(
                bytes,
                &cfg.model.to_string(),
                &cfg.filter(),
                tch::Device::Cpu,
            )?
            .info),
            None => cfg.model.info(&cfg.filter()),
        }
    }

    /// A tensor that must be present.
    pub fn tensor(&self, name: &str) -> Result<&HostTensor> {
        self.tensors
            .get(name)
            .with_context(|| format!("the checkpoint has no tensor {name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(cfg: &AdmmConfig) -> ModelInfo {
        cfg.model.info(&cfg.filter()).unwrap()
    }
    use crate::block::{BlockShape, Ratios};
    use crate::train::config::Targets;
    use crate::train::models::ModelKind;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    /// A tiny configuration: LeNet-300-100 with 8×16 blocks, 2 dense epochs,
    /// 2 rounds of 1 epoch, 2 retraining epochs.
    fn config() -> AdmmConfig {
        AdmmConfig {
            model: ModelSource::Builtin(ModelKind::Lenet300100),
            block: BlockShape::new(8, 16).unwrap(),
            targets: Targets::Global(Ratios {
                prune: 0.5,
                unify: 0.3,
            }),
            rounds: 2,
            dense_epochs: 2,
            retrain_epochs: 2,
            ..AdmmConfig::demo()
        }
    }

    fn record(epoch: usize, phase: Phase, phase_epoch: usize, rho: Option<f64>) -> EpochRecord {
        EpochRecord {
            epoch,
            phase,
            phase_epoch,
            lr: 1e-3,
            rho,
            loss: 0.5,
            test_accuracy: Some(90.0),
            seconds: 1.0,
        }
    }

    /// A consistent checkpoint of `cfg` with random contents: after one ADMM round, or
    /// (`projected`) after the hard projection and one retraining epoch.
    fn checkpoint(cfg: &AdmmConfig, projected: bool, seed: u64) -> Checkpoint {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut p = Progress::new(cfg);
        p.dense_done = cfg.dense_epochs;
        p.rounds_done = if projected { cfg.rounds } else { 1 };
        p.projected = projected;
        p.retrain_done = usize::from(projected);
        p.rho = cfg.rho_after(p.rounds_done);
        p.optimizer_steps = 17;
        p.dense_accuracy = Some(91.5);
        p.hard_projection_accuracy = projected.then_some(80.0);
        for e in 0..cfg.dense_epochs {
            p.epochs.push(record(e + 1, Phase::Dense, e + 1, None));
        }
        let layers = ModelKind::Lenet300100.architecture().layers;
        for k in 0..p.rounds_done {
            let n = p.epochs.len();
            p.epochs
                .push(record(n + 1, Phase::Admm, k + 1, Some(cfg.rho_after(k))));
            p.rounds.push(RoundReport {
                round: k + 1,
                rho: cfg.rho_after(k),
                primal: 0.1,
                dual: 0.2,
            });
            for l in layers {
                p.residuals.push(LayerResiduals {
                    round: k + 1,
                    layer: l.name.to_string(),
                    primal: 0.1,
                    dual: 0.01,
                });
            }
        }
        for e in 0..p.retrain_done {
            let n = p.epochs.len();
            p.epochs.push(record(n + 1, Phase::Retrain, e + 1, None));
        }
        let mut random = |shape: Vec<usize>| HostTensor {
            data: (0..shape.iter().product::<usize>())
                .map(|_| rng.random_range(-1.0..1.0f32))
                .collect(),
            shape,
        };
        let mut tensors = BTreeMap::new();
        for (name, shape) in ModelKind::Lenet300100.architecture().variables() {
            tensors.insert(format!("var.{name}"), random(shape.clone()));
            tensors.insert(format!("opt.first.{name}"), random(shape.clone()));
            tensors.insert(format!("opt.second.{name}"), random(shape));
        }
        let mut states = BTreeMap::new();
        let (specs, _) = layer_plan(cfg, &info(cfg)).unwrap();
        for spec in &specs {
            let n = spec.view.len();
            if !projected {
                tensors.insert(format!("z.{}", spec.name), random(vec![n]));
                tensors.insert(format!("u.{}", spec.name), random(vec![n]));
                continue;
            }
            let grid = spec.grid();
            let s: Vec<BlockState> = (0..grid.num_blocks())
                .map(|b| [BlockState::Dense, BlockState::Unified, BlockState::Pruned][b % 3])
                .collect();
            let mut sign = vec![0.0f32; n];
            for (b, st) in s.iter().enumerate() {
                if *st == BlockState::Unified {
                    for (k, i) in grid.extent(b).indices(spec.view.cols).enumerate() {
                        sign[i] = if k % 2 == 0 { 1.0 } else { -1.0 };
                    }
                }
            }
            tensors.insert(
                format!("sign.{}", spec.name),
                HostTensor {
                    shape: vec![n],
                    data: sign,
                },
            );
            states.insert(spec.name.clone(), s);
        }
        Checkpoint {
            progress: p,
            tensors,
            states,
            module: None,
        }
    }

    fn origin() -> &'static Path {
        Path::new("run/checkpoint.safetensors")
    }

    fn decode(c: &Checkpoint) -> Result<Checkpoint> {
        Checkpoint::from_bytes(&c.to_bytes().unwrap(), origin())
    }

    fn problem(c: &Checkpoint) -> String {
        format!("{:#}", decode(c).unwrap_err())
    }

    #[test]
    fn a_checkpoint_round_trips_and_fits_its_run() {
        let cfg = config();
        for projected in [false, true] {
            let c = checkpoint(&cfg, projected, 1);
            let back = decode(&c).unwrap();
            assert_eq!(back, c);
            back.check_against(&cfg, &info(&cfg)).unwrap();
        }
    }

    #[test]
    fn every_damaged_byte_is_found() {
        let c = checkpoint(&config(), true, 2);
        let bytes = c.to_bytes().unwrap();
        let mut rng = SmallRng::seed_from_u64(3);
        for _ in 0..300 {
            let mut b = bytes.clone();
            let i = rng.random_range(0..b.len());
            b[i] ^= 1 << rng.random_range(0..8);
            // Never a panic, never a silently different checkpoint.
            if let Ok(back) = Checkpoint::from_bytes(&b, origin()) {
                panic!("byte {i} flipped, decoded anyway: equal {}", back == c);
            }
        }
        // One flipped bit in a weight: the checksum's message.
        let mut b = bytes.clone();
        let last = b.len() - 1;
        b[last] ^= 0x10;
        let e = format!("{:#}", Checkpoint::from_bytes(&b, origin()).unwrap_err());
        assert_eq!(
            e,
            "run/checkpoint.safetensors is corrupt: its contents do not match their checksum \
             (the file changed after it was written)"
        );
    }

    #[test]
    fn truncated_and_arbitrary_bytes_are_errors() {
        let bytes = checkpoint(&config(), false, 4).to_bytes().unwrap();
        for len in (0..bytes.len())
            .step_by(997)
            .chain([bytes.len() - 1, 7, 8, 9])
        {
            let e = format!(
                "{:#}",
                Checkpoint::from_bytes(&bytes[..len], origin()).unwrap_err()
            );
            assert!(
                e.starts_with(
                    "run/checkpoint.safetensors is corrupt: not a complete safetensors file"
                ),
                "{len}: {e}"
            );
        }
        let mut rng = SmallRng::seed_from_u64(5);
        for _ in 0..200 {
            let n = rng.random_range(0..300);
            let junk: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            assert!(Checkpoint::from_bytes(&junk, origin()).is_err());
        }
    }

    /// Valid checksums over invalid contents: the range checks themselves.
    #[test]
    fn every_field_is_range_checked() {
        let cfg = config();
        let base = checkpoint(&cfg, false, 6);
        let with = |f: &dyn Fn(&mut Checkpoint)| {
            let mut c = base.clone();
            f(&mut c);
            problem(&c)
        };
        type Edit = Box<dyn Fn(&mut Checkpoint)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|c| c.progress.rounds_done = 99),
                "rounds_done is 99, but the run has 2 ADMM rounds",
            ),
            (
                Box::new(|c| c.progress.rho = -1.0),
                "rho is -1, outside (0, rho_max = 1]",
            ),
            (
                Box::new(|c| c.progress.rho = f64::MIN_POSITIVE),
                "rounds from rho0",
            ),
            (
                Box::new(|c| c.progress.dense_done = 1),
                "ADMM rounds are done (rounds_done 1) before dense training ended",
            ),
            (
                Box::new(|c| c.progress.retrain_done = 1),
                "retraining epochs are done (retrain_done 1) before the hard projection",
            ),
            (
                Box::new(|c| {
                    c.progress.projected = true;
                }),
                "the hard projection is done before",
            ),
            (
                Box::new(|c| {
                    c.progress.epochs.pop();
                }),
                "it records 2 epochs, but its counters make 3",
            ),
            (
                Box::new(|c| c.progress.epochs[1].phase = Phase::Retrain),
                "epoch record 2 is retrain epoch 2",
            ),
            (
                Box::new(|c| c.progress.epochs[2].rho = Some(0.5)),
                "epoch record 3 is admm epoch 1",
            ),
            (
                Box::new(|c| c.progress.epochs[0].test_accuracy = Some(100.5)),
                "the test accuracy of epoch 1 is 100.5, outside [0, 100]",
            ),
            (
                Box::new(|c| c.progress.epochs[0].lr = 0.0),
                "the learning rate of epoch 1 is 0",
            ),
            (
                Box::new(|c| c.progress.dense_accuracy = Some(-3.0)),
                "dense_accuracy is -3, outside [0, 100]",
            ),
            (
                Box::new(|c| c.progress.dense_accuracy = None),
                "dense_accuracy is missing",
            ),
            (
                Box::new(|c| c.progress.optimizer_steps = -1),
                "optimizer_steps is -1",
            ),
            (
                Box::new(|c| c.progress.rounds[0].rho = 7.0),
                "round record 1 says round 1 at ρ 7",
            ),
            (
                Box::new(|c| c.progress.timings.eval = -1.0),
                "the eval timing is -1",
            ),
            (
                Box::new(|c| c.progress.config.gamma = 0.5),
                "its configuration is invalid: gamma must be at least 1",
            ),
            (
                Box::new(|c| c.tensors.get_mut("var.fc1.weight").unwrap().data[5] = f32::NAN),
                "tensor var.fc1.weight holds NaN at index 5",
            ),
            (
                Box::new(|c| c.tensors.get_mut("u.fc2").unwrap().data[0] = f32::INFINITY),
                "tensor u.fc2 holds inf at index 0",
            ),
            (
                Box::new(|c| {
                    c.tensors.insert(
                        "extra".into(),
                        HostTensor {
                            shape: vec![1],
                            data: vec![0.0],
                        },
                    );
                }),
                "unexpected tensor extra",
            ),
        ];
        for (f, needle) in cases {
            let e = with(&*f);
            assert!(
                e.starts_with("run/checkpoint.safetensors is corrupt: ") && e.contains(needle),
                "expected {needle:?} in {e}"
            );
        }
    }

    #[test]
    fn tensors_must_fit_the_model_and_the_phase() {
        let cfg = config();
        let fits = |c: &Checkpoint| {
            format!(
                "{:#}",
                decode(c)
                    .unwrap()
                    .check_against(&cfg, &info(&cfg))
                    .unwrap_err()
            )
        };
        let base = checkpoint(&cfg, false, 7);
        let mut c = base.clone();
        c.tensors.remove("opt.second.fc3.bias");
        assert_eq!(fits(&c), "tensor opt.second.fc3.bias is missing");
        // The per-layer residuals name the model's layers, in order, round by round.
        let mut c = base.clone();
        c.progress.residuals[1].layer = "fc9".into();
        assert!(fits(&c).contains("residual record 2 is round 1 layer \"fc9\""));
        let mut c = base.clone();
        c.progress.residuals.pop();
        assert!(
            fits(&c).contains("it records 2 per-layer residuals, but 1 rounds of 3 layers make 3")
        );
        let mut c = base.clone();
        c.tensors.get_mut("z.fc1").unwrap().shape = vec![10, 23520];
        assert!(fits(&c).contains("tensor z.fc1 has shape [10, 23520]; the model's is [235200]"));
        let mut c = base.clone();
        c.tensors
            .insert("sign.fc1".into(), base.tensors["z.fc1"].clone());
        assert_eq!(
            fits(&c),
            "unexpected tensor sign.fc1 at this point of the run"
        );
        let mut other = cfg.clone();
        other.lr = 0.5;
        let e = format!(
            "{:#}",
            base.check_against(&other, &info(&other)).unwrap_err()
        );
        assert_eq!(e, "it was made with another configuration than this run's");

        let base = checkpoint(&cfg, true, 8);
        let mut c = base.clone();
        c.states.get_mut("fc2").unwrap().pop();
        assert!(
            fits(&c).contains("layer fc2 has 246 block states, but 247 blocks"),
            "{}",
            fits(&c)
        );
        let mut c = base.clone();
        // Block 0 of fc1 is dense: a sign there is wrong.
        c.tensors.get_mut("sign.fc1").unwrap().data[0] = 1.0;
        assert!(
            fits(&c).contains("sign.fc1 is 1 at index 0, in a Dense block"),
            "{}",
            fits(&c)
        );
        let mut c = base.clone();
        c.states.remove("fc3");
        assert_eq!(fits(&c), "the block states of layer fc3 are missing");
    }

    #[test]
    fn older_and_foreign_files_are_named() {
        let c = checkpoint(&config(), false, 9);
        let mut p = serde_json::to_value(&c.progress).unwrap();
        p["version"] = 1.into();
        let meta = HashMap::from([(KEY.to_string(), p.to_string())]);
        let empty: Vec<(String, TensorView)> = Vec::new();
        let v1 = safetensors::serialize(empty.clone(), Some(meta)).unwrap();
        let e = format!("{:#}", Checkpoint::from_bytes(&v1, origin()).unwrap_err());
        assert_eq!(
            e,
            "run/checkpoint.safetensors is a version 1 checkpoint; this train-gpu reads version 2"
        );
        let other = safetensors::serialize(empty, None).unwrap();
        let e = format!(
            "{:#}",
            Checkpoint::from_bytes(&other, origin()).unwrap_err()
        );
        assert!(e.contains("is not a train-gpu checkpoint"), "{e}");
    }
}
