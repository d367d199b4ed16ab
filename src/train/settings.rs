//! The settings of a `train-gpu` run as text: the TOML schema ([`FileConfig`]: `--config`
//! files and every run's `config.toml`) and what turns it into checked [`Settings`] over the
//! defaults (the demo, [`AdmmConfig::demo`]).
//!
//! Parsing and resolving open no device, and no file but a TorchScript model (whose layer
//! names the settings are checked against); they return an error, never panic, on any text
//! (huge or negative numbers, NaN, arrays of the wrong length, absurd block shapes, unknown
//! keys or layers). What else needs the machine — the dataset, the `--init` file, CUDA — is
//! the binary's to check afterwards.

use crate::block::{BlockShape, Ratios};
use crate::data::Normalization;
use crate::gpu::{BackendChoice, GpuOptions};
use crate::train::config::{AdmmConfig, OptimizerKind, Schedule, Targets, Task, layer_plan};
use crate::train::network::ModelSource;
use anyhow::{Context, Result, bail};
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The datasets `train-gpu` knows by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Dataset {
    /// MNIST from the repository's assets/mnist.
    Mnist,
    /// Fashion-MNIST from --data-dir (default /usr/share/datasets/fashion-mnist, Debian's
    /// dataset-fashion-mnist package).
    FashionMnist,
}

/// A `[prune, unify]` pair: exactly two numbers (a third is an error, not dropped).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pair(pub [f64; 2]);

impl Serialize for Pair {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Pair {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PairVisitor;
        impl<'de> Visitor<'de> for PairVisitor {
            type Value = Pair;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("[prune, unify]: an array of two numbers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Pair, A::Error> {
                let mut v = [0.0; 2];
                let mut n = 0usize;
                while let Some(x) = seq.next_element::<f64>()? {
                    if let Some(slot) = v.get_mut(n) {
                        *slot = x;
                    }
                    n += 1;
                }
                if n != 2 {
                    return Err(de::Error::custom(format!(
                        "expected [prune, unify] (two numbers), got {n} value{}",
                        if n == 1 { "" } else { "s" }
                    )));
                }
                Ok(Pair(v))
            }
        }
        d.deserialize_seq(PairVisitor)
    }
}

/// The TOML schema (every key optional; unknown keys are errors).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `lenet5`, `lenet-300-100`, or a TorchScript file.
    pub model: Option<ModelSource>,
    /// Compress only the candidate layers matching this regular expression.
    pub include: Option<String>,
    /// Leave the candidate layers matching this regular expression dense.
    pub exclude: Option<String>,
    pub task: Option<Task>,
    pub dataset: Option<Dataset>,
    pub data_dir: Option<PathBuf>,
    /// A safetensors dataset file (instead of `dataset`/`data_dir`), see [`crate::data::safetensors`].
    pub data: Option<PathBuf>,
    /// `train` (the default), `none` or `MEAN,STD[;MEAN,STD...]` ([`Normalization`]).
    pub normalize: Option<String>,
    pub block: Option<String>,
    /// Per-layer block shapes: `[layer_blocks] conv1 = "2x8"`.
    pub layer_blocks: Option<BTreeMap<String, String>>,
    /// Per-layer targets: `[ratios] fc1 = [0.95, 0.04]` (prune, unify).
    pub ratios: Option<BTreeMap<String, Pair>>,
    /// One pair for every layer, `[prune, unify]` (or for the network with `global`).
    pub uniform: Option<Pair>,
    pub global: Option<bool>,
    pub rho0: Option<f64>,
    pub gamma: Option<f64>,
    pub rho_max: Option<f64>,
    pub rounds: Option<usize>,
    pub epochs_per_round: Option<usize>,
    pub dense_epochs: Option<usize>,
    pub retrain_epochs: Option<usize>,
    pub optimizer: Option<OptimizerKind>,
    pub lr: Option<f64>,
    pub retrain_lr: Option<f64>,
    pub rescale_dual: Option<bool>,
    /// SGD's momentum; an error with another optimizer (it would be ignored).
    pub momentum: Option<f64>,
    pub schedule: Option<Schedule>,
    pub admm_schedule: Option<Schedule>,
    pub batch: Option<i64>,
    pub seed: Option<i64>,
    pub init: Option<PathBuf>,
    pub eval_every_epoch: Option<bool>,
    pub limit_train: Option<i64>,
    pub limit_test: Option<i64>,
    pub device: Option<String>,
    pub adapter: Option<String>,
    pub backend: Option<BackendChoice>,
}

/// The 1-based line and column of byte `at` of `text`.
fn line_col(text: &str, at: usize) -> Option<(usize, usize)> {
    let before = text.get(..at)?;
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Some((line, col))
}

impl FileConfig {
    /// Parses TOML `text`; errors are one line naming `origin` (the file), the place and
    /// the problem, e.g. `run.toml, line 2, column 1: unknown field `roundz`, ...`.
    pub fn parse(text: &str, origin: &Path) -> Result<Self> {
        toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .and_then(|s| line_col(text, s.start))
                .map_or(String::new(), |(l, c)| format!(", line {l}, column {c}"));
            let msg = e.message().trim().replace('\n', " ");
            anyhow::anyhow!("{}{at}: {msg}", origin.display())
        })
    }

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).context("encoding the settings as TOML")
    }

    /// The settings these keys give over the defaults, checked: every value in range,
    /// targets and block shapes against the model's layers, no key that this combination
    /// would silently ignore.
    pub fn resolve(&self) -> Result<Settings> {
        let f = self;
        let d = AdmmConfig::demo();
        let model = f.model.clone().unwrap_or_else(|| d.model.clone());
        let filter = crate::train::network::LayerFilter {
            include: f.include.clone(),
            exclude: f.exclude.clone(),
        };
        let info = model.info(&filter)?;
        let block = match &f.block {
            Some(b) => b
                .parse::<BlockShape>()
                .map_err(|e| anyhow::anyhow!("block {b:?}: {e}"))?,
            None => d.block,
        };
        let layer_blocks = f
            .layer_blocks
            .iter()
            .flatten()
            .map(|(n, b)| {
                let shape = b
                    .parse::<BlockShape>()
                    .map_err(|e| anyhow::anyhow!("block {b:?} of layer {n}: {e}"))?;
                Ok((n.clone(), shape))
            })
            .collect::<Result<Vec<_>>>()?;
        if f.ratios.is_some() && f.uniform.is_some() {
            bail!("give either per-layer `ratios` or one `uniform` pair, not both");
        }
        if f.global == Some(true) && f.uniform.is_none() {
            bail!(
                "`global` ranks blocks across layers with one pair (--prune P --unify U, or \
                 `uniform = [P, U]`), not with per-layer ratios"
            );
        }
        let targets = if let Some(Pair([p, u])) = f.uniform {
            if f.global == Some(true) {
                Targets::Global(Ratios::new(p, u, "--global")?)
            } else {
                let r = Ratios::new(p, u, "--prune/--unify")?;
                // In name order, as a `[ratios]` table reads back from config.toml.
                let mut v: Vec<(String, Ratios)> =
                    info.layers.iter().map(|l| (l.name.clone(), r)).collect();
                v.sort_by(|a, b| a.0.cmp(&b.0));
                Targets::PerLayer(v)
            }
        } else if let Some(t) = &f.ratios {
            Targets::PerLayer(
                t.iter()
                    .map(|(n, Pair([p, u]))| {
                        Ok((n.clone(), Ratios::new(*p, *u, &format!("layer {n}"))?))
                    })
                    .collect::<Result<_>>()?,
            )
        } else if model == d.model && filter == Default::default() {
            d.targets.clone()
        } else {
            bail!("{model} needs ratios: --ratios NAME=P/U,... or --prune P --unify U")
        };
        let optimizer = f.optimizer.unwrap_or(d.optimizer);
        if f.momentum.is_some() && optimizer != OptimizerKind::Sgd {
            bail!("momentum is SGD's (--optimizer sgd); {optimizer:?} does not use it: drop it");
        }
        let admm = AdmmConfig {
            model,
            include: filter.include,
            exclude: filter.exclude,
            task: f.task.unwrap_or_default(),
            block,
            layer_blocks,
            targets,
            rho0: f.rho0.unwrap_or(d.rho0),
            gamma: f.gamma.unwrap_or(d.gamma),
            rho_max: f.rho_max.unwrap_or(d.rho_max),
            rounds: f.rounds.unwrap_or(d.rounds),
            epochs_per_round: f.epochs_per_round.unwrap_or(d.epochs_per_round),
            optimizer,
            lr: f.lr.unwrap_or(d.lr),
            retrain_lr: f.retrain_lr.or(d.retrain_lr),
            rescale_dual: f.rescale_dual.unwrap_or(d.rescale_dual),
            momentum: f.momentum.unwrap_or(d.momentum),
            schedule: f.schedule.unwrap_or(d.schedule),
            admm_schedule: f.admm_schedule.unwrap_or(d.admm_schedule),
            dense_epochs: f.dense_epochs.unwrap_or(d.dense_epochs),
            retrain_epochs: f.retrain_epochs.unwrap_or(d.retrain_epochs),
            batch: f.batch.unwrap_or(d.batch),
            seed: f.seed.unwrap_or(d.seed),
            init: f.init.clone(),
            eval_every_epoch: f.eval_every_epoch.unwrap_or(d.eval_every_epoch),
        };
        // Scalars, then names, ratios and block sizes against the model's layers.
        layer_plan(&admm, &info)?;
        for (name, n) in [("limit-train", f.limit_train), ("limit-test", f.limit_test)] {
            if let Some(n) = n
                && n < 1
            {
                bail!("{name} must be at least 1, got {n}");
            }
        }
        let device = match &f.device {
            Some(s) => s.parse()?,
            None => TorchDevice::Cpu,
        };
        if f.data.is_some() && (f.data_dir.is_some() || f.dataset.is_some()) {
            bail!(
                "give either `data` (a safetensors file) or `dataset`/`data_dir` (IDX files), \
                 not both"
            );
        }
        let normalize = match &f.normalize {
            Some(n) => n.parse()?,
            None => Normalization::default(),
        };
        Ok(Settings {
            admm,
            dataset: f.dataset.unwrap_or(Dataset::Mnist),
            data_dir: f.data_dir.clone(),
            data: f.data.clone(),
            normalize,
            limit_train: f.limit_train,
            limit_test: f.limit_test,
            device,
            gpu: GpuOptions {
                adapter: f.adapter.clone(),
                backend: f.backend,
            },
        })
    }
}

/// Where libtorch trains (the W-step): `cpu`, `cuda` (= `cuda:0`), `cuda:N` or `mps`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TorchDevice {
    Cpu,
    Cuda(usize),
    /// Apple's Metal Performance Shaders.
    Mps,
}

impl std::str::FromStr for TorchDevice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            "mps" => Ok(Self::Mps),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(i)) => Ok(Self::Cuda(i)),
                _ => bail!("--device {s:?}: expected cpu, cuda, cuda:N or mps"),
            },
        }
    }
}

impl fmt::Display for TorchDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
            Self::Mps => f.write_str("mps"),
        }
    }
}

/// What libtorch itself says when it cannot put a tensor on `device` (its first line).
fn libtorch_refusal(device: tch::Device) -> String {
    match tch::Tensor::f_zeros([1], (tch::Kind::Float, device)) {
        Ok(_) => "it can allocate there, but reports no such device".into(),
        Err(e) => {
            let m = crate::train::script::torch_message(&e);
            // Its first sentence; the rest is advice for PyTorch's own developers.
            match m.find(". ") {
                Some(i) => m[..=i].to_string(),
                None => m,
            }
        }
    }
}

impl TorchDevice {
    /// The tch device, once libtorch says it can use it; else libtorch's own reason.
    pub fn open(self) -> Result<tch::Device> {
        match self {
            Self::Cpu => Ok(tch::Device::Cpu),
            Self::Cuda(i) => {
                if !tch::Cuda::is_available() {
                    let why = libtorch_refusal(tch::Device::Cuda(i));
                    let hint = if why.contains("'CUDA' backend") {
                        "this build does not link libtorch_cuda: run scripts/setup --cuda, then \
                         rebuild"
                    } else {
                        "no usable NVIDIA GPU here"
                    };
                    bail!("--device {self}: libtorch cannot use CUDA ({hint}): {why}");
                }
                let n = tch::Cuda::device_count().max(0) as usize;
                if i >= n {
                    bail!("--device {self}: only {n} CUDA device(s)");
                }
                Ok(tch::Device::Cuda(i))
            }
            Self::Mps => {
                if !tch::utils::has_mps() {
                    let why = libtorch_refusal(tch::Device::Mps);
                    bail!("--device mps: libtorch cannot use Metal (MPS) here: {why}");
                }
                Ok(tch::Device::Mps)
            }
        }
    }
}

/// Everything a run is asked to do, resolved and checked (see [`FileConfig::resolve`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub admm: AdmmConfig,
    pub dataset: Dataset,
    /// The dataset folder as given; `None`: the dataset's usual place.
    pub data_dir: Option<PathBuf>,
    /// A safetensors dataset file, used instead of `dataset` and `data_dir`.
    pub data: Option<PathBuf>,
    pub normalize: Normalization,
    pub limit_train: Option<i64>,
    pub limit_test: Option<i64>,
    pub device: TorchDevice,
    pub gpu: GpuOptions,
}

impl Settings {
    /// The settings in the file schema, every value explicit (what `config.toml` holds, so
    /// that it defines the run alone).
    pub fn to_file(&self) -> FileConfig {
        let a = &self.admm;
        let (ratios, uniform, global) = match &a.targets {
            Targets::PerLayer(v) => (
                Some(
                    v.iter()
                        .map(|(n, r)| (n.clone(), Pair([r.prune, r.unify])))
                        .collect(),
                ),
                None,
                None,
            ),
            Targets::Global(r) => (None, Some(Pair([r.prune, r.unify])), Some(true)),
        };
        FileConfig {
            model: Some(a.model.clone()),
            include: a.include.clone(),
            exclude: a.exclude.clone(),
            task: Some(a.task),
            dataset: self.data.is_none().then_some(self.dataset),
            data_dir: self.data_dir.clone(),
            data: self.data.clone(),
            normalize: Some(self.normalize.to_string()),
            block: Some(a.block.to_string()),
            layer_blocks: (!a.layer_blocks.is_empty()).then(|| {
                a.layer_blocks
                    .iter()
                    .map(|(n, b)| (n.clone(), b.to_string()))
                    .collect()
            }),
            ratios,
            uniform,
            global,
            rho0: Some(a.rho0),
            gamma: Some(a.gamma),
            rho_max: Some(a.rho_max),
            rounds: Some(a.rounds),
            epochs_per_round: Some(a.epochs_per_round),
            dense_epochs: Some(a.dense_epochs),
            retrain_epochs: Some(a.retrain_epochs),
            optimizer: Some(a.optimizer),
            lr: Some(a.lr),
            retrain_lr: a.retrain_lr,
            rescale_dual: Some(a.rescale_dual),
            momentum: (a.optimizer == OptimizerKind::Sgd).then_some(a.momentum),
            schedule: Some(a.schedule),
            admm_schedule: Some(a.admm_schedule),
            batch: Some(a.batch),
            seed: Some(a.seed),
            init: a.init.clone(),
            eval_every_epoch: Some(a.eval_every_epoch),
            limit_train: self.limit_train,
            limit_test: self.limit_test,
            device: Some(self.device.to_string()),
            adapter: self.gpu.adapter.clone(),
            backend: self.gpu.backend,
        }
    }

    pub fn to_toml(&self) -> Result<String> {
        self.to_file().to_toml()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> Result<Settings> {
        FileConfig::parse(text, Path::new("t.toml"))?.resolve()
    }

    fn err(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    #[test]
    fn defaults_round_trip_through_the_file_schema() {
        let s = parse("").unwrap();
        assert_eq!(s.admm, AdmmConfig::demo());
        let again = parse(&s.to_toml().unwrap()).unwrap();
        assert_eq!(again, s);
        let sgd = parse("optimizer = \"sgd\"\nmomentum = 0.5\n").unwrap();
        assert_eq!(sgd.admm.momentum, 0.5);
        assert_eq!(parse(&sgd.to_toml().unwrap()).unwrap(), sgd);
        let st = parse("data = \"d.safetensors\"\nnormalize = \"0.5,0.25;1,2\"\n").unwrap();
        assert_eq!(
            st.normalize,
            Normalization::Given(vec![[0.5, 0.25], [1.0, 2.0]])
        );
        assert_eq!(parse(&st.to_toml().unwrap()).unwrap(), st);
        assert_eq!(s.normalize, Normalization::Training);
    }

    #[test]
    fn errors_name_the_file_the_place_and_the_key() {
        let e = err("rounds = 1\nroundz = 2\n");
        assert!(
            e.starts_with("t.toml, line 2, column 1: unknown field `roundz`"),
            "{e}"
        );
        assert!(!e.contains('\n'), "one line: {e}");
        let e = err("rounds = -1\n");
        assert!(e.starts_with("t.toml, line 1, column 10:"), "{e}");
        let e = err("rounds = \"two\"\n");
        assert!(e.contains("invalid type: string \"two\""), "{e}");
    }

    #[test]
    fn pairs_have_exactly_two_numbers() {
        let three = "[ratios]\nconv1 = [0.2, 0.4, 0.1]\nconv2 = [0.7, 0.2]\nfc1 = [0.9, 0.0]\nfc2 = [0.5, 0.3]\n";
        let e = err(three);
        assert!(
            e.contains("line 2")
                && e.contains("expected [prune, unify] (two numbers), got 3 values"),
            "{e}"
        );
        let e = err("uniform = [0.5]\n");
        assert!(e.contains("got 1 value"), "{e}");
        let e = err("uniform = []\n");
        assert!(e.contains("got 0 values"), "{e}");
        let e = err("uniform = [0.5, \"a\"]\n");
        assert!(e.contains("invalid type: string \"a\""), "{e}");
        // Integers are numbers too.
        let s = parse("uniform = [0, 1]\n").unwrap();
        assert!(matches!(s.admm.targets, Targets::PerLayer(ref v) if v[0].1.unify == 1.0));
    }

    #[test]
    fn combinations_that_would_be_ignored_are_errors() {
        let e = err("global = true\n[ratios]\nconv1 = [0.2, 0.4]\n");
        assert!(
            e.contains("`global` ranks blocks across layers with one pair"),
            "{e}"
        );
        let e = err("uniform = [0.5, 0.3]\n[ratios]\nconv1 = [0.2, 0.4]\n");
        assert!(e.contains("not both"), "{e}");
        let e = err("momentum = 0.5\n");
        assert!(e.contains("momentum is SGD's"), "{e}");
        let e = err(
            "[ratios]\nconv1 = [0.2, 0.4]\nconv2 = [0.7, 0.2]\nfc1 = [0.9, 0.0]\nfc2 = [0.5, 0.3]\nfc9 = [0.1, 0.1]\n",
        );
        assert!(
            e.contains("ratios name layer \"fc9\", which lenet5 does not have"),
            "{e}"
        );
        let e = err("[layer_blocks]\nfc9 = \"2x8\"\n");
        assert!(
            e.contains("layer \"fc9\", which lenet5 does not have"),
            "{e}"
        );
    }

    #[test]
    fn absurd_values_are_errors() {
        for (text, needle) in [
            (
                "rounds = 9223372036854775807\n",
                "at most 100000 epochs per phase",
            ),
            ("dense_epochs = -3\n", "invalid value: integer `-3`"),
            ("rho0 = nan\n", "rho0 must be a positive number, got NaN"),
            ("gamma = inf\n", "gamma must be at least 1"),
            ("lr = -inf\n", "lr must be a positive number"),
            ("uniform = [nan, 0.1]\n", "prune must lie in [0, 1]"),
            (
                "momentum = nan\noptimizer = \"sgd\"\n",
                "momentum must be in [0, 1)",
            ),
            ("block = \"99999999999999999999x4\"\n", "expected ROWSxCOLS"),
            ("block = \"0x4\"\n", "at least 1"),
            ("block = \"33x1\"\n", "at most 32 per side"),
            ("seed = -9223372036854775808\n", "seed"),
            ("batch = 0\n", "batch must be at least 1"),
            ("limit_train = 0\n", "limit-train must be at least 1"),
            ("device = \"cuda:x\"\n", "expected cpu, cuda, cuda:N or mps"),
            ("model = \"resnet\"\n", "neither a built-in network"),
            ("normalize = \"0.5,0\"\n", "std a positive finite number"),
            ("normalize = \"0.5\"\n", "is not MEAN,STD"),
            (
                "data = \"d.st\"\ndata_dir = \"x\"\n",
                "or `dataset`/`data_dir`",
            ),
            ("data = \"d.st\"\ndataset = \"mnist\"\n", "not both"),
        ] {
            let e = err(text);
            assert!(e.contains(needle), "{text:?}: expected {needle:?} in {e}");
        }
    }

    /// A TOML value of any type, odd ones included.
    fn value() -> impl Strategy<Value = toml::Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(toml::Value::Integer),
            prop_oneof![
                any::<f64>(),
                Just(f64::NAN),
                Just(f64::INFINITY),
                Just(-0.0),
                0.0..1.0f64
            ]
            .prop_map(toml::Value::Float),
            any::<bool>().prop_map(toml::Value::Boolean),
            prop_oneof![
                "[a-z0-9:x×]{0,12}",
                Just("4x4".to_string()),
                Just("cuda:3".to_string()),
                Just("lenet-300-100".to_string()),
                Just("sgd".to_string()),
                Just("0.5,0.25;0.1,2".to_string()),
                Just("none".to_string()),
            ]
            .prop_map(toml::Value::String),
        ];
        leaf.prop_recursive(2, 12, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("conv1".to_string()),
                        Just("fc1".to_string()),
                        Just("fc3".to_string()),
                        "[a-z]{1,5}",
                    ],
                    inner,
                    0..4
                )
                .prop_map(|m| toml::Value::Table(m.into_iter().collect())),
            ]
        })
    }

    const KEYS: &[&str] = &[
        "model",
        "dataset",
        "data_dir",
        "data",
        "normalize",
        "block",
        "layer_blocks",
        "ratios",
        "uniform",
        "global",
        "rho0",
        "gamma",
        "rho_max",
        "rounds",
        "epochs_per_round",
        "dense_epochs",
        "retrain_epochs",
        "optimizer",
        "lr",
        "retrain_lr",
        "rescale_dual",
        "momentum",
        "schedule",
        "admm_schedule",
        "batch",
        "seed",
        "init",
        "eval_every_epoch",
        "limit_train",
        "limit_test",
        "device",
        "adapter",
        "backend",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any document over the schema's keys, with values of any type: an error or
        /// checked settings, never a panic; and settings that resolve survive their own
        /// file form unchanged.
        #[test]
        fn any_document_resolves_or_errs(
            doc in prop::collection::btree_map(prop::sample::select(KEYS), value(), 0..8)
        ) {
            let table: toml::Table = doc.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            let Ok(text) = toml::to_string(&table) else { return Ok(()) };
            if let Ok(s) = parse(&text) {
                let again = parse(&s.to_toml().unwrap()).unwrap();
                prop_assert_eq!(again, s);
            }
        }

        /// Arbitrary text: never a panic.
        #[test]
        fn any_text_resolves_or_errs(text in "\\PC{0,200}") {
            let _ = parse(&text);
        }
    }
}
