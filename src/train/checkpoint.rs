//! The state of an unfinished run, saved after every epoch and every ADMM round as one
//! `.safetensors` file (written atomically), from which `--resume` continues exactly: the
//! model's variables, the optimizer's moments, Z and U, the hard projection's states and
//! signs, ρ, the epoch counter that seeds the batch order, and the metrics so far.

use crate::block::BlockState;
use crate::fsio::write_atomic;
use crate::train::config::AdmmConfig;
use crate::train::report::{EpochRecord, LayerResiduals, RoundReport, Timings};
use anyhow::{Context, Result, bail};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// File name of the checkpoint inside a run folder.
pub const FILE: &str = "checkpoint.safetensors";
/// The metadata key that marks a file as a `train-gpu` checkpoint.
const KEY: &str = "microunify.train_gpu.checkpoint";
/// Bumped when the layout changes; older checkpoints are refused by name.
const VERSION: u32 = 1;

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
}

impl Checkpoint {
    /// Writes the checkpoint atomically (temp file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut views = Vec::new();
        let states: Vec<(String, Vec<u8>)> = self
            .states
            .iter()
            .map(|(k, v)| (format!("states.{k}"), v.iter().map(|&s| s as u8).collect()))
            .collect();
        for (name, t) in &self.tensors {
            let view = TensorView::new(Dtype::F32, t.shape.clone(), bytemuck::cast_slice(&t.data))
                .with_context(|| format!("checkpoint tensor {name}"))?;
            views.push((name.clone(), view));
        }
        for (name, s) in &states {
            views.push((name.clone(), TensorView::new(Dtype::U8, vec![s.len()], s)?));
        }
        let meta = HashMap::from([(
            KEY.to_string(),
            serde_json::to_string(&self.progress).context("encoding the run's progress")?,
        )]);
        let bytes = safetensors::serialize(views, Some(meta)).context("encoding the checkpoint")?;
        write_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))
    }

    /// Reads a checkpoint; every problem names the file.
    pub fn load(path: &Path) -> Result<Self> {
        let ctx = || format!("reading the checkpoint {}", path.display());
        let bytes = std::fs::read(path).with_context(ctx)?;
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| anyhow::anyhow!("not a safetensors file: {e}"))
            .with_context(ctx)?;
        let Some(json) = meta.metadata().as_ref().and_then(|m| m.get(KEY)) else {
            bail!(
                "{} is not a train-gpu checkpoint (no {KEY} metadata)",
                path.display()
            );
        };
        let progress: Progress = serde_json::from_str(json)
            .context("decoding the run's progress")
            .with_context(ctx)?;
        if progress.version != VERSION {
            bail!(
                "{} is a version {} checkpoint; this train-gpu reads version {VERSION}",
                path.display(),
                progress.version
            );
        }
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(ctx)?;
        let mut tensors = BTreeMap::new();
        let mut states = BTreeMap::new();
        for (name, view) in st.tensors() {
            if let Some(layer) = name.strip_prefix("states.") {
                if view.dtype() != Dtype::U8 {
                    bail!("{}: tensor {name} is not U8", path.display());
                }
                let s = view
                    .data()
                    .iter()
                    .map(|&c| {
                        BlockState::from_code(c.into()).with_context(|| {
                            format!("{}: tensor {name} holds state code {c}", path.display())
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                states.insert(layer.to_string(), s);
                continue;
            }
            if view.dtype() != Dtype::F32 {
                bail!("{}: tensor {name} is not F32", path.display());
            }
            let data = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
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
        })
    }

    /// A tensor that must be present.
    pub fn tensor(&self, name: &str) -> Result<&HostTensor> {
        self.tensors
            .get(name)
            .with_context(|| format!("the checkpoint has no tensor {name}"))
    }
}
