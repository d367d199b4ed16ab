//! What a run is asked to do on the command line: flags over an optional TOML file
//! (`--config`) over the defaults (`AdmmConfig::demo`). The schema, the defaults and
//! every check of the values are the library's ([`microunify::train::settings`]); this
//! module holds the flags, reads the files, and checks what needs this machine (the
//! dataset folder or file, the `--init` file, the libtorch device). The resolved settings are
//! saved with the run as `config.toml`, in the same schema, so `--config RUN/config.toml`
//! repeats a run and `--resume RUN` continues one.

use anyhow::{Context, Result, bail};
use clap::Args;
use microunify::data::DataSource;
use microunify::fsio::read_regular;
use microunify::gpu::BackendChoice;
use microunify::train::config::{AdmmConfig, OptimizerKind, Schedule, Task};
use microunify::train::network::ModelSource;
use microunify::train::settings::{Dataset, FileConfig, Pair, Settings};
use microunify::{BlockShape, Ratios};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where Debian's `dataset-fashion-mnist` package puts the IDX files.
const FASHION_DEFAULT: &str = "/usr/share/datasets/fashion-mnist";

/// The most bytes a `--config` file may have.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// The flags that shape a run. Every one is optional: unset, the config file's value or the
/// default applies (shown in brackets).
#[derive(Args, Clone, Debug, Default)]
pub struct RunArgs {
    /// TOML file with any of the settings below (snake_case keys, e.g. `rho0 = 0.01`,
    /// `[ratios] fc1 = [0.95, 0.04]`); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Network: lenet5, lenet-300-100, or a TorchScript file (torch.jit.script or
    /// torch.jit.trace output, input N×C×H×W) [lenet5].
    #[arg(long, value_name = "NAME|FILE.pt")]
    pub model: Option<ModelSource>,
    /// Compress only the layers (2-D and 4-D float parameters, named as in
    /// named_parameters()) whose names match this regular expression [all].
    #[arg(long, value_name = "REGEX")]
    pub include: Option<String>,
    /// Leave the layers whose names match this regular expression dense [none].
    #[arg(long, value_name = "REGEX")]
    pub exclude: Option<String>,
    /// classify (cross-entropy, accuracy) or reconstruct (the input as target: mean
    /// squared error, PSNR) [classify].
    #[arg(long, value_enum)]
    pub task: Option<Task>,
    /// Dataset [mnist].
    #[arg(long, value_enum)]
    pub dataset: Option<Dataset>,
    /// Folder with the four MNIST-format IDX files (plain or .gz; images N×H×W or
    /// N×C×H×W).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// A safetensors dataset instead: tensors train.x, test.x (N×C×H×W, U8 or F32) and
    /// train.y, test.y (N, integers).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["data_dir", "dataset"])]
    pub data: Option<PathBuf>,
    /// Per-channel normalisation (x − MEAN) / STD: train (each channel's mean and std over
    /// the training images), none, or MEAN,STD[;MEAN,STD...] (one pair for all channels or
    /// one per channel) [train].
    #[arg(long, value_name = "SPEC")]
    pub normalize: Option<String>,
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
    #[arg(long, requires = "prune", conflicts_with = "ratios")]
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
    /// SGD's momentum (with --optimizer sgd) [0.9].
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

/// Reads and parses a TOML settings file.
pub fn read_config(path: &Path) -> Result<FileConfig> {
    let bytes = read_regular(path, MAX_CONFIG_BYTES, "config file")?;
    let text = String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("{}: not UTF-8 text ({e})", path.display()))?;
    FileConfig::parse(&text, path)
}

/// `--ratios NAME=PRUNE/UNIFY,...`: each layer once.
fn parse_ratios(s: &str) -> Result<BTreeMap<String, Pair>> {
    let mut v = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let bad = || format!("--ratios entry {part:?} is not NAME=PRUNE/UNIFY (e.g. fc1=0.9/0.05)");
        let (name, pair) = part.split_once('=').with_context(bad)?;
        let (p, u) = pair.split_once('/').with_context(bad)?;
        let p: f64 = p.trim().parse().with_context(bad)?;
        let u: f64 = u.trim().parse().with_context(bad)?;
        let name = name.trim().to_string();
        Ratios::new(p, u, &format!("layer {name}"))?;
        if v.insert(name.clone(), Pair([p, u])).is_some() {
            bail!("--ratios names layer {name:?} twice");
        }
    }
    if v.is_empty() {
        bail!("--ratios is empty");
    }
    Ok(v)
}

/// `--layer-blocks NAME=RxC,...`: each layer once.
fn parse_layer_blocks(s: &str) -> Result<BTreeMap<String, String>> {
    let mut t = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let Some((n, b)) = part.split_once('=') else {
            bail!("--layer-blocks entry {part:?} is not NAME=ROWSxCOLS (e.g. fc1=8x8)");
        };
        let n = n.trim().to_string();
        if t.insert(n.clone(), b.trim().to_string()).is_some() {
            bail!("--layer-blocks names layer {n:?} twice");
        }
    }
    if t.is_empty() {
        bail!("--layer-blocks is empty");
    }
    Ok(t)
}

/// `p` made absolute against the working directory (it need not exist).
fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving the path {}", p.display()))
}

/// Settings checked against this machine, ready to run.
#[derive(Clone, Debug)]
pub struct Ready {
    /// With the dataset folder or file and `--init` made absolute (so that the run's
    /// config.toml works from any directory).
    pub settings: Settings,
    pub data: DataSource,
    pub device: tch::Device,
}

impl Ready {
    pub fn admm(&self) -> &AdmmConfig {
        &self.settings.admm
    }

    pub fn to_toml(&self) -> Result<String> {
        self.settings.to_toml()
    }
}

/// Checks what `s` needs of this machine: the dataset file or folder (the dataset's usual
/// place when none is given), the `--init` file, the libtorch device.
pub fn prepare(mut s: Settings) -> Result<Ready> {
    let data = match &s.data {
        Some(file) => {
            let file = absolute(file)?;
            s.data = Some(file.clone());
            DataSource::Safetensors(file)
        }
        None => {
            let dir = absolute(&idx_dir(&s)?)?;
            s.data_dir = Some(dir.clone());
            DataSource::IdxDir(dir)
        }
    };
    if let ModelSource::Script(p) = &s.admm.model {
        s.admm.model = ModelSource::Script(absolute(p)?);
    }
    if let Some(init) = &s.admm.init {
        let init = absolute(init)?;
        microunify::train::pipeline::check_init(&init)?;
        s.admm.init = Some(init);
    }
    let device = s.device.open()?;
    Ok(Ready {
        settings: s,
        data,
        device,
    })
}

/// The IDX folder of `s`: the one given, or the dataset's usual place.
fn idx_dir(s: &Settings) -> Result<PathBuf> {
    Ok(match (&s.data_dir, s.dataset) {
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
    })
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
        f(self.include.is_some(), "--include");
        f(self.exclude.is_some(), "--exclude");
        f(self.task.is_some(), "--task");
        f(self.dataset.is_some(), "--dataset");
        f(self.data_dir.is_some(), "--data-dir");
        f(self.data.is_some(), "--data");
        f(self.normalize.is_some(), "--normalize");
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

    /// The file config (if any) with these flags over it, key by key.
    pub fn file(&self) -> Result<FileConfig> {
        let mut f = match &self.config {
            Some(p) => read_config(p)?,
            None => FileConfig::default(),
        };
        macro_rules! over {
            ($($k:ident),*) => { $( if let Some(v) = &self.$k { f.$k = Some(v.clone()); } )* };
        }
        // A data source given on the command line replaces the file's.
        if self.data.is_some() {
            (f.dataset, f.data_dir) = (None, None);
        } else if self.dataset.is_some() || self.data_dir.is_some() {
            f.data = None;
        }
        over!(
            model,
            include,
            exclude,
            task,
            dataset,
            data_dir,
            data,
            normalize,
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
            f.layer_blocks = Some(parse_layer_blocks(v)?);
        }
        if self.no_epoch_eval {
            f.eval_every_epoch = Some(false);
        }
        // Targets given on the command line replace the file's wholesale.
        if let Some(r) = &self.ratios {
            f.ratios = Some(parse_ratios(r)?);
            f.uniform = None;
            f.global = None;
        }
        if let (Some(p), Some(u)) = (self.prune, self.unify) {
            f.uniform = Some(Pair([p, u]));
            f.ratios = None;
            f.global = Some(self.global);
        }
        Ok(f)
    }

    /// Defaults ← the config file (if any) ← these flags, checked, then readied for this
    /// machine.
    pub fn resolve(&self) -> Result<Ready> {
        let s = self.file()?.resolve();
        let s = match &self.config {
            Some(p) => {
                s.with_context(|| format!("the settings of {} and the command line", p.display()))?
            }
            None => s?,
        };
        prepare(s)
    }
}
