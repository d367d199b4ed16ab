//! What a run is asked to do: command-line flags over an optional TOML file over the
//! defaults (the demo of issue 4). The resolved settings are saved with the run as
//! `config.toml`, in the same schema, so `--config RUN/config.toml` repeats a run and
//! `--resume RUN` continues one.

use anyhow::{Context, Result, bail};
use clap::Args;
use microunify::gpu::{BackendChoice, GpuOptions};
use microunify::train::config::{AdmmConfig, OptimizerKind, Schedule, Targets};
use microunify::train::models::ModelKind;
use microunify::{BlockShape, Ratios};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where Debian's `dataset-fashion-mnist` package puts the IDX files.
const FASHION_DEFAULT: &str = "/usr/share/datasets/fashion-mnist";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Dataset {
    /// MNIST from the repository's assets/mnist.
    Mnist,
    /// Fashion-MNIST from --data-dir (default /usr/share/datasets/fashion-mnist, Debian's
    /// dataset-fashion-mnist package).
    FashionMnist,
}

/// The flags that shape a run. Every one is optional: unset, the config file's value or the
/// default applies (shown in brackets).
#[derive(Args, Clone, Debug, Default)]
pub struct RunArgs {
    /// TOML file with any of the settings below (snake_case keys, e.g. `rho0 = 0.01`,
    /// `[ratios] fc1 = [0.95, 0.04]`); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Network [lenet5].
    #[arg(long, value_enum)]
    pub model: Option<ModelKind>,
    /// Dataset [mnist].
    #[arg(long, value_enum)]
    pub dataset: Option<Dataset>,
    /// Folder with the four MNIST-format IDX files (plain or .gz).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Block shape ROWSxCOLS for every layer [4x4].
    #[arg(long)]
    pub block: Option<BlockShape>,
    /// Per-layer block shapes NAME=ROWSxCOLS,... (other layers take --block).
    #[arg(long, value_name = "NAME=RxC,...")]
    pub layer_blocks: Option<String>,
    /// Per-layer targets NAME=PRUNE/UNIFY,... (every layer once)
    /// [conv1=0.2/0.4,conv2=0.7/0.2,fc1=0.95/0.04,fc2=0.5/0.3].
    #[arg(long, conflicts_with_all = ["prune", "unify"])]
    pub ratios: Option<String>,
    /// One prune ratio for every layer (with --unify), or for the network with --global.
    #[arg(long, requires = "unify")]
    pub prune: Option<f64>,
    /// One unify ratio for every layer (with --prune), or for the network with --global.
    #[arg(long, requires = "prune")]
    pub unify: Option<f64>,
    /// Rank blocks across all layers (with --prune/--unify).
    #[arg(long, requires = "prune")]
    pub global: bool,
    /// Initial ADMM penalty ρ₀ [5e-3].
    #[arg(long)]
    pub rho0: Option<f64>,
    /// ρ grows by this factor each round [1.5].
    #[arg(long)]
    pub gamma: Option<f64>,
    /// Upper bound of ρ [1].
    #[arg(long)]
    pub rho_max: Option<f64>,
    /// ADMM rounds (one Z/U-step each); 0 runs the one-shot baseline (hard projection of
    /// the dense weights, then the same retraining) [10].
    #[arg(long)]
    pub rounds: Option<usize>,
    /// W-step epochs per round [1].
    #[arg(long)]
    pub epochs_per_round: Option<usize>,
    /// Dense training epochs before ADMM [6].
    #[arg(long)]
    pub dense_epochs: Option<usize>,
    /// Masked retraining epochs after the hard projection [5].
    #[arg(long)]
    pub retrain_epochs: Option<usize>,
    /// Optimizer of every phase [adam].
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerKind>,
    /// Learning rate [1e-3].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Rescale the scaled dual U when ρ grows (keeps ρU) [false].
    #[arg(long)]
    pub rescale_dual: Option<bool>,
    /// Starting learning rate of the masked retraining [--lr].
    #[arg(long)]
    pub retrain_lr: Option<f64>,
    /// SGD's momentum [0.9].
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Learning-rate schedule of the dense and retraining phases [cosine].
    #[arg(long, value_enum)]
    pub schedule: Option<Schedule>,
    /// Learning-rate schedule over the ADMM phase's W-step epochs [cosine].
    #[arg(long, value_enum)]
    pub admm_schedule: Option<Schedule>,
    /// Mini-batch size [64].
    #[arg(long)]
    pub batch: Option<i64>,
    /// Seed of the initialisation and the batch order [1].
    #[arg(long)]
    pub seed: Option<i64>,
    /// Start from these weights (a tch .ot, e.g. another run's dense.ot or final.ot)
    /// instead of the seeded initialisation.
    #[arg(long, value_name = "FILE")]
    pub init: Option<PathBuf>,
    /// Skip the test-set evaluation after every epoch.
    #[arg(long)]
    pub no_epoch_eval: bool,
    /// Train on the first N training images only (quick runs).
    #[arg(long, value_name = "N")]
    pub limit_train: Option<i64>,
    /// Evaluate on the first N test images only.
    #[arg(long, value_name = "N")]
    pub limit_test: Option<i64>,
    /// libtorch device for training: cpu, cuda or cuda:N [cpu].
    #[arg(long)]
    pub device: Option<String>,
    /// Projection adapter: the one whose name contains this (case-insensitive); env
    /// MICROUNIFY_ADAPTER.
    #[arg(long)]
    pub adapter: Option<String>,
    /// Restrict to one wgpu backend; env MICROUNIFY_BACKEND.
    #[arg(long, value_enum)]
    pub backend: Option<BackendChoice>,
}

/// Per-layer ratios in the file: `[ratios] fc1 = [0.95, 0.04]` (prune, unify).
type RatioTable = BTreeMap<String, [f64; 2]>;

/// The TOML schema (every key optional; unknown keys are errors).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub model: Option<ModelKind>,
    pub dataset: Option<Dataset>,
    pub data_dir: Option<PathBuf>,
    pub block: Option<String>,
    /// Per-layer block shapes: `[layer_blocks] conv1 = "2x8"`.
    pub layer_blocks: Option<BTreeMap<String, String>>,
    pub ratios: Option<RatioTable>,
    /// One pair for every layer, `[prune, unify]` (or for the network with `global`).
    pub uniform: Option<[f64; 2]>,
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

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }
}

/// Everything a run needs, resolved.
#[derive(Clone, Debug)]
pub struct Settings {
    pub admm: AdmmConfig,
    pub dataset: Dataset,
    pub data_dir: PathBuf,
    pub limit_train: Option<i64>,
    pub limit_test: Option<i64>,
    pub device: tch::Device,
    device_name: String,
    pub gpu: GpuOptions,
}

fn parse_ratios(s: &str) -> Result<Vec<(String, Ratios)>> {
    let v = s
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|part| {
            let bad =
                || format!("--ratios entry {part:?} is not NAME=PRUNE/UNIFY (e.g. fc1=0.9/0.05)");
            let (name, pair) = part.split_once('=').with_context(bad)?;
            let (p, u) = pair.split_once('/').with_context(bad)?;
            let p: f64 = p.trim().parse().with_context(bad)?;
            let u: f64 = u.trim().parse().with_context(bad)?;
            let name = name.trim().to_string();
            let r = Ratios::new(p, u, &format!("layer {name}"))?;
            Ok((name, r))
        })
        .collect::<Result<Vec<_>>>()?;
    if v.is_empty() {
        bail!("--ratios is empty");
    }
    Ok(v)
}

/// `p` made absolute against the working directory (it need not exist).
fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving the path {}", p.display()))
}

fn layer_names(model: ModelKind) -> &'static [&'static str] {
    match model {
        ModelKind::Lenet5 => &["conv1", "conv2", "fc1", "fc2"],
        ModelKind::Lenet300100 => &["fc1", "fc2", "fc3"],
    }
}

fn parse_device(s: &str) -> Result<tch::Device> {
    let cuda = |i: usize| -> Result<tch::Device> {
        if !tch::Cuda::is_available() {
            bail!(
                "--device {s}: CUDA is not available to libtorch here (no NVIDIA GPU, or a \
                 build without CUDA support); use --device cpu"
            );
        }
        let n = tch::Cuda::device_count() as usize;
        if i >= n {
            bail!("--device {s}: only {n} CUDA device(s)");
        }
        Ok(tch::Device::Cuda(i))
    };
    match s {
        "cpu" => Ok(tch::Device::Cpu),
        "cuda" => cuda(0),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda(i),
            _ => bail!("--device {s:?}: expected cpu, cuda or cuda:N"),
        },
    }
}

impl RunArgs {
    /// Names of the given flags that change what a run computes (a resumed run takes its
    /// own config.toml, so these are refused with `--resume`).
    pub fn given(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let mut f = |set: bool, name| {
            if set {
                v.push(name)
            }
        };
        f(self.config.is_some(), "--config");
        f(self.model.is_some(), "--model");
        f(self.dataset.is_some(), "--dataset");
        f(self.data_dir.is_some(), "--data-dir");
        f(self.block.is_some(), "--block");
        f(self.layer_blocks.is_some(), "--layer-blocks");
        f(self.ratios.is_some(), "--ratios");
        f(self.prune.is_some(), "--prune");
        f(self.unify.is_some(), "--unify");
        f(self.global, "--global");
        f(self.rho0.is_some(), "--rho0");
        f(self.gamma.is_some(), "--gamma");
        f(self.rho_max.is_some(), "--rho-max");
        f(self.rounds.is_some(), "--rounds");
        f(self.epochs_per_round.is_some(), "--epochs-per-round");
        f(self.dense_epochs.is_some(), "--dense-epochs");
        f(self.retrain_epochs.is_some(), "--retrain-epochs");
        f(self.optimizer.is_some(), "--optimizer");
        f(self.lr.is_some(), "--lr");
        f(self.retrain_lr.is_some(), "--retrain-lr");
        f(self.rescale_dual.is_some(), "--rescale-dual");
        f(self.momentum.is_some(), "--momentum");
        f(self.schedule.is_some(), "--schedule");
        f(self.admm_schedule.is_some(), "--admm-schedule");
        f(self.batch.is_some(), "--batch");
        f(self.seed.is_some(), "--seed");
        f(self.init.is_some(), "--init");
        f(self.no_epoch_eval, "--no-epoch-eval");
        f(self.limit_train.is_some(), "--limit-train");
        f(self.limit_test.is_some(), "--limit-test");
        v
    }

    /// Defaults ← the config file (if any) ← these flags.
    pub fn resolve(&self) -> Result<Settings> {
        let file = match &self.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let mut f = file.clone();
        // Flags over the file, key by key.
        macro_rules! over {
            ($($k:ident),*) => { $( if let Some(v) = &self.$k { f.$k = Some(v.clone()); } )* };
        }
        over!(
            model,
            dataset,
            data_dir,
            rho0,
            gamma,
            rho_max,
            rounds,
            epochs_per_round,
            dense_epochs,
            retrain_epochs,
            optimizer,
            lr,
            retrain_lr,
            rescale_dual,
            momentum,
            schedule,
            admm_schedule,
            batch,
            seed,
            init,
            limit_train,
            limit_test,
            device,
            adapter,
            backend
        );
        if let Some(b) = self.block {
            f.block = Some(b.to_string());
        }
        if let Some(v) = &self.layer_blocks {
            let mut t = BTreeMap::new();
            for part in v.split(',').filter(|p| !p.trim().is_empty()) {
                let Some((n, b)) = part.split_once('=') else {
                    bail!("--layer-blocks entry {part:?} is not NAME=ROWSxCOLS (e.g. fc1=8x8)");
                };
                t.insert(n.trim().to_string(), b.trim().to_string());
            }
            f.layer_blocks = Some(t);
        }
        if self.no_epoch_eval {
            f.eval_every_epoch = Some(false);
        }
        // Targets given on the command line replace the file's wholesale.
        if let Some(r) = &self.ratios {
            f.ratios = Some(
                parse_ratios(r)?
                    .into_iter()
                    .map(|(n, r)| (n, [r.prune, r.unify]))
                    .collect(),
            );
            f.uniform = None;
            f.global = None;
        }
        if let (Some(p), Some(u)) = (self.prune, self.unify) {
            f.uniform = Some([p, u]);
            f.ratios = None;
            f.global = Some(self.global);
        }
        Settings::from_file(&f)
    }
}

impl Settings {
    /// Resolves a (merged) file config over the defaults and checks it.
    pub fn from_file(f: &FileConfig) -> Result<Self> {
        let d = AdmmConfig::demo();
        let model = f.model.unwrap_or(d.model);
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
            bail!("`global` ranks blocks across layers: it needs one pair (--prune/--unify)");
        }
        let targets = if let Some([p, u]) = f.uniform {
            if f.global == Some(true) {
                Targets::Global(Ratios::new(p, u, "--global")?)
            } else {
                let r = Ratios::new(p, u, "--prune/--unify")?;
                Targets::PerLayer(
                    layer_names(model)
                        .iter()
                        .map(|n| (n.to_string(), r))
                        .collect(),
                )
            }
        } else if let Some(t) = &f.ratios {
            Targets::PerLayer(
                t.iter()
                    .map(|(n, [p, u])| Ok((n.clone(), Ratios::new(*p, *u, &format!("layer {n}"))?)))
                    .collect::<Result<_>>()?,
            )
        } else if model == d.model {
            d.targets.clone()
        } else {
            bail!("{model:?} needs ratios: --ratios NAME=P/U,... or --prune P --unify U")
        };
        let admm = AdmmConfig {
            model,
            block,
            layer_blocks,
            targets,
            rho0: f.rho0.unwrap_or(d.rho0),
            gamma: f.gamma.unwrap_or(d.gamma),
            rho_max: f.rho_max.unwrap_or(d.rho_max),
            rounds: f.rounds.unwrap_or(d.rounds),
            epochs_per_round: f.epochs_per_round.unwrap_or(d.epochs_per_round),
            optimizer: f.optimizer.unwrap_or(d.optimizer),
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
            init: f.init.as_deref().map(absolute).transpose()?,
            eval_every_epoch: f.eval_every_epoch.unwrap_or(d.eval_every_epoch),
        };
        admm.check()?;
        if let Some(init) = &admm.init {
            microunify::train::pipeline::check_init(init)?;
        }
        let dataset = f.dataset.unwrap_or(Dataset::Mnist);
        let data_dir = match (&f.data_dir, dataset) {
            (Some(d), _) => d.clone(),
            (None, Dataset::Mnist) => {
                let local = Path::new("assets/mnist");
                if local.is_dir() {
                    local.to_path_buf()
                } else {
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/mnist")
                }
            }
            (None, Dataset::FashionMnist) => {
                let p = PathBuf::from(FASHION_DEFAULT);
                if !p.is_dir() {
                    bail!(
                        "Fashion-MNIST is not in {FASHION_DEFAULT}: install Debian's \
                         dataset-fashion-mnist package, or pass --data-dir with the four IDX files"
                    );
                }
                p
            }
        };
        // Saved absolute, so the run's config.toml works from any directory (--resume).
        let data_dir = absolute(&data_dir)?;
        for (name, n) in [("limit-train", f.limit_train), ("limit-test", f.limit_test)] {
            if let Some(n) = n
                && n < 1
            {
                bail!("{name} must be at least 1, got {n}");
            }
        }
        let device_name = f.device.clone().unwrap_or_else(|| "cpu".into());
        Ok(Self {
            admm,
            dataset,
            data_dir,
            limit_train: f.limit_train,
            limit_test: f.limit_test,
            device: parse_device(&device_name)?,
            device_name,
            gpu: GpuOptions {
                adapter: f.adapter.clone(),
                backend: f.backend,
            },
        })
    }

    /// The resolved settings in the file schema (what `config.toml` of a run holds).
    pub fn to_file(&self) -> FileConfig {
        let a = &self.admm;
        let (ratios, uniform, global) = match &a.targets {
            Targets::PerLayer(v) => (
                Some(
                    v.iter()
                        .map(|(n, r)| (n.clone(), [r.prune, r.unify]))
                        .collect(),
                ),
                None,
                None,
            ),
            Targets::Global(r) => (None, Some([r.prune, r.unify]), Some(true)),
        };
        FileConfig {
            model: Some(a.model),
            dataset: Some(self.dataset),
            data_dir: Some(self.data_dir.clone()),
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
            momentum: Some(a.momentum),
            schedule: Some(a.schedule),
            admm_schedule: Some(a.admm_schedule),
            batch: Some(a.batch),
            seed: Some(a.seed),
            init: a.init.clone(),
            eval_every_epoch: Some(a.eval_every_epoch),
            limit_train: self.limit_train,
            limit_test: self.limit_test,
            device: Some(self.device_name.clone()),
            adapter: self.gpu.adapter.clone(),
            backend: self.gpu.backend,
        }
    }

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(&self.to_file()).context("encoding config.toml")
    }
}
