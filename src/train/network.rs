//! The network a run trains: a built-in one (by name) or the user's own TorchScript module
//! (by path), behind one interface for the pipeline — a forward pass in training or
//! evaluation mode, the variables by name, the compressible layers, and saving.
//!
//! [`ModelInfo`] is the plain-data description (variables, compressible layers, and what a
//! built-in declares of its input and classes) that settings, checkpoints and the layer
//! plan are checked against.

use crate::train::config::Task;
use crate::train::data::TensorSet;
use crate::train::models::{Builtin, ModelKind};
use crate::train::script::Script;
use anyhow::{Context, Result, anyhow, bail};
use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor, nn};

/// Which network: a built-in name (`lenet5`, `lenet-300-100`) or a TorchScript file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    Builtin(ModelKind),
    Script(PathBuf),
}

impl std::str::FromStr for ModelSource {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        use clap::ValueEnum;
        if let Ok(k) = ModelKind::from_str(s, false) {
            return Ok(Self::Builtin(k));
        }
        if s.trim().is_empty() {
            bail!("the model is empty: give lenet5, lenet-300-100 or a TorchScript file");
        }
        Ok(Self::Script(PathBuf::from(s)))
    }
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Builtin(k) => write!(f, "{k}"),
            Self::Script(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Serialize for ModelSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ModelSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Default for ModelSource {
    fn default() -> Self {
        Self::Builtin(ModelKind::Lenet5)
    }
}

/// A compressible layer: the name settings and files use, the parameter it is, its shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    pub name: String,
    pub param: String,
    pub shape: Vec<usize>,
}

/// What a network has, as plain data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelInfo {
    /// How messages name it.
    pub label: String,
    /// Every parameter, `(name, shape)` sorted by name (the optimizer's and the
    /// checkpoint's order).
    pub variables: Vec<(String, Vec<usize>)>,
    /// The layers to compress, in the model's order.
    pub layers: Vec<LayerInfo>,
    /// Input `[C, H, W]` and classes, when the network declares them (built-ins).
    pub input: Option<[usize; 3]>,
    pub classes: Option<usize>,
}

/// Which of a model's candidate layers to compress: `include` (if any) must match the
/// name, `exclude` must not (both unanchored regular expressions, `regex` crate syntax).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<String>,
}

fn regex(what: &str, re: &str) -> Result<Regex> {
    Regex::new(re).map_err(|e| anyhow!("--{what} {re:?} is not a regular expression: {e}"))
}

impl LayerFilter {
    /// The candidates it keeps, in order; an error when it keeps none.
    pub(crate) fn apply(&self, label: &str, candidates: Vec<LayerInfo>) -> Result<Vec<LayerInfo>> {
        let names = |v: &[LayerInfo]| {
            v.iter()
                .map(|l| l.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if candidates.is_empty() {
            bail!(
                "model {label} has no compressible parameter (a float parameter of 2 dimensions, \
                 linear [out, in], or 4, conv [Cout, Cin, kh, kw])"
            );
        }
        let all = names(&candidates);
        let mut kept = candidates;
        if let Some(re) = &self.include {
            let r = regex("include", re)?;
            kept.retain(|l| r.is_match(&l.name));
            if kept.is_empty() {
                bail!(
                    "--include {re:?} matches none of model {label}'s compressible layers ({all})"
                );
            }
        }
        if let Some(re) = &self.exclude {
            let r = regex("exclude", re)?;
            kept.retain(|l| !r.is_match(&l.name));
            if kept.is_empty() {
                bail!(
                    "--exclude {re:?} leaves none of model {label}'s compressible layers ({all}) \
                     to compress"
                );
            }
        }
        Ok(kept)
    }
}

fn dims(t: &Tensor) -> Vec<usize> {
    t.size().iter().map(|&d| d as usize).collect()
}

fn is_float(k: Kind) -> bool {
    matches!(k, Kind::Float | Kind::Half | Kind::Double | Kind::BFloat16)
}

/// The running network.
pub struct Model {
    pub info: ModelInfo,
    net: Net,
    /// Every parameter, sorted by name (shallow handles sharing the network's storage).
    vars: Vec<(String, Tensor)>,
    /// The compressible weights, one per `info.layers`.
    weights: Vec<Tensor>,
}

enum Net {
    Builtin(Builtin),
    Script(Script),
}

impl ModelSource {
    /// The description of the network `filter` selects from (loads a TorchScript file on
    /// the CPU to read it, once per process for the same file as it is on disk and the
    /// same filter: the settings, the layer plan and the run folder each ask, and a large
    /// model takes seconds to load).
    pub fn info(&self, filter: &LayerFilter) -> Result<ModelInfo> {
        type Key = (PathBuf, u64, Option<std::time::SystemTime>, LayerFilter);
        static SEEN: std::sync::Mutex<Vec<(Key, ModelInfo)>> = std::sync::Mutex::new(Vec::new());
        match self {
            Self::Builtin(k) => k.info(filter),
            Self::Script(path) => {
                let meta = std::fs::metadata(path).ok();
                let key: Key = (
                    path.clone(),
                    meta.as_ref().map_or(0, |m| m.len()),
                    meta.and_then(|m| m.modified().ok()),
                    filter.clone(),
                );
                let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((_, info)) = seen.iter().find(|(k, _)| *k == key) {
                    return Ok(info.clone());
                }
                let info = Model::load(self, filter, Device::Cpu, 0)?.info;
                seen.push((key, info.clone()));
                Ok(info)
            }
        }
    }
}

impl Model {
    /// The network of `source`, seeded (`seed` initialises a built-in and nothing else).
    pub fn load(
        source: &ModelSource,
        filter: &LayerFilter,
        device: Device,
        seed: i64,
    ) -> Result<Self> {
        match source {
            ModelSource::Builtin(k) => {
                let b = Builtin::new(*k, device, seed);
                let info = k.info(filter)?;
                let vars = b.variables();
                Self::assemble(info, Net::Builtin(b), vars)
            }
            ModelSource::Script(path) => {
                if !path.exists() {
                    bail!(
                        "model {:?} is neither a built-in network (lenet5, lenet-300-100) nor a \
                         file",
                        path.display().to_string()
                    );
                }
                let s = Script::load(path, device)?;
                Self::from_script(s, path.display().to_string(), filter)
            }
        }
    }

    /// A TorchScript network from a checkpoint's copy of the module (`label` names it).
    pub fn from_module_bytes(
        bytes: &[u8],
        label: &str,
        filter: &LayerFilter,
        device: Device,
    ) -> Result<Self> {
        let s = Script::from_bytes(bytes, device)
            .map_err(|e| anyhow!("the checkpoint's copy of {label}: {e}"))?;
        Self::from_script(s, label.to_string(), filter)
    }

    fn from_script(s: Script, label: String, filter: &LayerFilter) -> Result<Self> {
        let candidates = s
            .params()
            .iter()
            .filter(|(_, t)| is_float(t.kind()) && matches!(t.dim(), 2 | 4))
            .map(|(n, t)| LayerInfo {
                name: n.clone(),
                param: n.clone(),
                shape: dims(t),
            })
            .collect();
        let layers = filter.apply(&label, candidates)?;
        let mut vars: Vec<(String, Tensor)> = s
            .params()
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let info = ModelInfo {
            label,
            variables: vars.iter().map(|(n, t)| (n.clone(), dims(t))).collect(),
            layers,
            input: None,
            classes: None,
        };
        Self::assemble(info, Net::Script(s), vars)
    }

    fn assemble(info: ModelInfo, net: Net, vars: Vec<(String, Tensor)>) -> Result<Self> {
        let weights = info
            .layers
            .iter()
            .map(|l| {
                vars.iter()
                    .find(|(n, _)| *n == l.param)
                    .map(|(_, t)| t.shallow_clone())
                    .with_context(|| format!("the model has no parameter {}", l.param))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            info,
            net,
            vars,
            weights,
        })
    }

    /// The output for a batch `[N, C, H, W]`, in training mode (BatchNorm batch statistics,
    /// dropout) or evaluation mode.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match &self.net {
            Net::Builtin(b) => Ok(b.forward(x)),
            Net::Script(s) => s
                .forward_t(x, train)
                .map_err(|e| anyhow!("model {}: {e}", self.info.label)),
        }
    }

    /// Checks, before any training, that `set` (`what` names it) suits the network and the
    /// task: images `[N, C, H, W]` of a built-in's declared input, a forward pass that
    /// libtorch accepts (its error explained, never a panic), an output of one logit per
    /// class with every label a class, or of the input's shape for a reconstruction.
    pub fn check_data(&self, task: Task, set: &TensorSet, what: &str) -> Result<()> {
        let label = &self.info.label;
        let size = set.images.size();
        let n = set.len();
        if n == 0 {
            bail!("the {what} set holds no images");
        }
        let [count, c, h, w] = size[..] else {
            bail!("the {what} images are a tensor of shape {size:?}, not [N, C, H, W]");
        };
        if count != n {
            bail!("the {what} set has {count} images but {n} labels");
        }
        let got = format!("{c}×{h}×{w}");
        if let Some([ec, eh, ew]) = self.info.input
            && [c, h, w] != [ec as i64, eh as i64, ew as i64]
        {
            bail!("the {what} images are {got}, but model {label} takes {ec}×{eh}×{ew}");
        }
        let x = set.images.narrow(0, 0, n.min(2));
        let out = tch::no_grad(|| self.forward_t(&x, false))
            .map_err(|e| anyhow!("model {label} does not take the {what} images ({got}): {e}"))?;
        let out_size = out.size();
        match task {
            Task::Reconstruct => {
                if out_size != x.size() {
                    bail!(
                        "model {label} maps {what} images of shape {:?} to {out_size:?}; a reconstruction must have the input's shape",
                        x.size()
                    );
                }
            }
            Task::Classify => {
                let [_, classes] = out_size[..] else {
                    bail!(
                        "model {label} gives an output of shape {out_size:?} for {what} images of shape {:?}; a classifier gives [N, classes] logits",
                        x.size()
                    );
                };
                let labels = set.labels.to_kind(Kind::Int64);
                let lo = i64::try_from(labels.min()).unwrap_or(-1);
                let hi = i64::try_from(labels.max()).unwrap_or(-1);
                if lo < 0 || hi >= classes {
                    let bad = if lo < 0 { lo } else { hi };
                    let index = i64::try_from(labels.eq(bad).to_kind(Kind::Int64).argmax(0, false))
                        .unwrap_or(0);
                    bail!(
                        "label {bad} at index {index} of the {what} set is not a class of model                          {label}: it gives {classes} logits (labels 0 to {})",
                        classes - 1
                    );
                }
            }
        }
        Ok(())
    }

    /// Every parameter by name, sorted (shallow handles sharing the network's storage).
    pub fn variables(&self) -> Vec<(String, Tensor)> {
        self.vars
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect()
    }

    /// The layer list of a built-in network (None for a TorchScript one, whose forward
    /// pass is code the list cannot describe).
    pub fn network_def(&self) -> Option<crate::infer::network::NetworkDef> {
        match &self.net {
            Net::Builtin(b) => Some(b.kind().network()),
            Net::Script(_) => None,
        }
    }

    /// The buffers (e.g. BatchNorm's running statistics) by name: what a state dict holds
    /// beside the parameters. A built-in network has none.
    pub fn buffers(&self) -> Result<Vec<(String, Tensor)>> {
        match &self.net {
            Net::Builtin(_) => Ok(Vec::new()),
            Net::Script(s) => s.buffers(),
        }
    }

    /// The compressible weights, one per `info.layers`.
    pub fn weights(&self) -> &[Tensor] {
        &self.weights
    }

    /// Loads `--init` weights into a built-in network.
    pub fn load_init(&mut self, path: &Path) -> Result<()> {
        match &mut self.net {
            Net::Builtin(b) => b.load(path),
            Net::Script(_) => bail!(
                "--init loads weights into a built-in model; a TorchScript model starts from its \
                 own weights (give the trained module to --model)"
            ),
        }
    }

    /// The whole module as `torch.jit.save` writes it (parameters and buffers, in its
    /// current mode), for a checkpoint; `None` for a built-in (its variables are all).
    pub fn module_bytes(&self) -> Result<Option<Vec<u8>>> {
        match &self.net {
            Net::Builtin(_) => Ok(None),
            Net::Script(s) => s.to_bytes(false).map(Some),
        }
    }

    /// The network as a TorchScript file's bytes in evaluation mode, what a user runs: the
    /// user's own module with the current weights, or a trace of a built-in.
    pub fn torchscript(&self) -> Result<Vec<u8>> {
        match &self.net {
            Net::Builtin(b) => b.traced(),
            Net::Script(s) => s.to_bytes(true),
        }
    }

    /// A built-in network's variables in tch's format (`.ot`); `None` for TorchScript.
    pub fn var_store(&self) -> Option<&nn::VarStore> {
        match &self.net {
            Net::Builtin(b) => Some(b.var_store()),
            Net::Script(_) => None,
        }
    }
}
