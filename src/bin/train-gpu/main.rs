//! `train-gpu`: ADMM compression of a real network, end to end (METHOD.md §3): dense
//! training → ADMM rounds (W-step in tch, Z/U-step as one batched GPU projection) → hard
//! projection → masked retraining → report and compressed `.safetensors`.
//!
//! The defaults are the demo of issue 4 (LeNet-5 on MNIST, 4×4 blocks, per-layer targets).

use anyhow::{Context, Result, bail};
use clap::Parser;
use microunify::data::load_mnist_dir;
use microunify::format::write_atomic;
use microunify::gpu::{BackendChoice, Gpu, GpuOptions};
use microunify::train::admm::{self, AdmmConfig, Targets};
use microunify::train::data::TensorSet;
use microunify::train::denormals::flush_denormals;
use microunify::train::models::ModelKind;
use microunify::{BlockShape, Ratios};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Dataset {
    /// MNIST from the repository's assets/mnist.
    Mnist,
}

#[derive(Parser)]
#[command(
    version,
    about = "ADMM micro-structured unification and pruning of a network"
)]
struct Cli {
    /// Network to train and compress.
    #[arg(long, value_enum, default_value = "lenet5")]
    model: ModelKind,
    /// Built-in dataset (IDX files in assets/).
    #[arg(long, value_enum, default_value = "mnist")]
    dataset: Dataset,
    /// Folder with MNIST-format IDX files (e.g. Fashion-MNIST); overrides --dataset.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Block shape ROWSxCOLS for every layer.
    #[arg(long, default_value = "4x4")]
    block: BlockShape,
    /// Per-layer targets NAME=PRUNE/UNIFY,... (every layer once).
    #[arg(
        long,
        conflicts_with_all = ["prune", "unify"],
        default_value = "conv1=0.2/0.4,conv2=0.7/0.2,fc1=0.95/0.04,fc2=0.5/0.3"
    )]
    ratios: String,
    /// One prune ratio for every layer (with --unify), or for the network with --global.
    #[arg(long, requires = "unify")]
    prune: Option<f64>,
    /// One unify ratio for every layer (with --prune), or for the network with --global.
    #[arg(long, requires = "prune")]
    unify: Option<f64>,
    /// Rank blocks across all layers (with --prune/--unify).
    #[arg(long, requires = "prune")]
    global: bool,
    /// Initial ADMM penalty ρ₀.
    #[arg(long, default_value_t = 5e-3)]
    rho0: f64,
    /// ρ grows by this factor each round.
    #[arg(long, default_value_t = 1.5)]
    gamma: f64,
    /// Upper bound of ρ.
    #[arg(long, default_value_t = 1.0)]
    rho_max: f64,
    /// ADMM rounds (one Z/U-step each); 0 runs the one-shot baseline (hard projection of
    /// the dense weights, then the same retraining).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// W-step epochs per round.
    #[arg(long, default_value_t = 1)]
    epochs_per_round: usize,
    /// Dense training epochs before ADMM.
    #[arg(long, default_value_t = 6)]
    dense_epochs: usize,
    /// Masked retraining epochs after the hard projection.
    #[arg(long, default_value_t = 3)]
    retrain_epochs: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Mini-batch size.
    #[arg(long, default_value_t = 64)]
    batch: i64,
    /// Seed of the initialisation and the batch order.
    #[arg(long, default_value_t = 1)]
    seed: i64,
    /// Train on the first N training images only (quick runs).
    #[arg(long)]
    limit_train: Option<i64>,
    /// Evaluate on the first N test images only.
    #[arg(long)]
    limit_test: Option<i64>,
    /// Skip the test-set evaluation after every epoch (progress lines get no accuracy).
    #[arg(long)]
    no_epoch_eval: bool,
    /// Use the adapter whose name contains this (case-insensitive); env MICROUNIFY_ADAPTER.
    #[arg(long)]
    adapter: Option<String>,
    /// Restrict to one wgpu backend; env MICROUNIFY_BACKEND.
    #[arg(long, value_enum)]
    backend: Option<BackendChoice>,
    /// Run folder: config.json, report.json, report.md, residuals.csv,
    /// compressed.safetensors, final.ot (tch checkpoint).
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
}

/// Parses `NAME=PRUNE/UNIFY,...`.
fn parse_ratios(s: &str) -> Result<Vec<(String, Ratios)>> {
    s.split(',')
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
        .collect()
}

impl Cli {
    fn config(&self) -> Result<AdmmConfig> {
        let targets = match (self.prune, self.unify) {
            (Some(p), Some(u)) => {
                let scope = if self.global {
                    "--global"
                } else {
                    "--prune/--unify"
                };
                let r = Ratios::new(p, u, scope)?;
                if self.global {
                    Targets::Global(r)
                } else {
                    let names: &[&str] = match self.model {
                        ModelKind::Lenet5 => &["conv1", "conv2", "fc1", "fc2"],
                        ModelKind::Lenet300100 => &["fc1", "fc2", "fc3"],
                    };
                    Targets::PerLayer(names.iter().map(|n| (n.to_string(), r)).collect())
                }
            }
            _ => {
                let given = parse_ratios(&self.ratios)?;
                if given.is_empty() {
                    bail!("--ratios is empty");
                }
                Targets::PerLayer(given)
            }
        };
        let cfg = AdmmConfig {
            model: self.model,
            block: self.block,
            targets,
            rho0: self.rho0,
            gamma: self.gamma,
            rho_max: self.rho_max,
            rounds: self.rounds,
            epochs_per_round: self.epochs_per_round,
            lr: self.lr,
            dense_epochs: self.dense_epochs,
            retrain_epochs: self.retrain_epochs,
            batch: self.batch,
            seed: self.seed,
            eval_every_epoch: !self.no_epoch_eval,
        };
        cfg.check()?;
        Ok(cfg)
    }

    fn data_dir(&self) -> PathBuf {
        if let Some(d) = &self.data_dir {
            return d.clone();
        }
        match self.dataset {
            Dataset::Mnist => {
                let local = Path::new("assets/mnist");
                if local.is_dir() {
                    local.to_path_buf()
                } else {
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/mnist")
                }
            }
        }
    }
}

/// "P pruned, U unified, D dense (x% pruned or unified)", for the console and report.md.
fn blocks_summary(b: &admm::Blocks) -> String {
    let total = (b.dense + b.unified + b.pruned).max(1) as f64;
    format!(
        "{} pruned, {} unified, {} dense ({:.1}% pruned or unified)",
        b.pruned,
        b.unified,
        b.dense,
        100.0 * (b.pruned + b.unified) as f64 / total
    )
}

/// A human-readable summary of the run.
fn markdown(cfg: &AdmmConfig, r: &admm::Report) -> String {
    let t = &r.timings;
    let mut s = format!(
        "# train-gpu run\n\n{:?}, block {}, {} ADMM rounds of {} epoch(s) (ρ₀ {}, γ {}, ρ_max {}), \
         {} dense and {} retraining epochs, Adam {}, batch {}, seed {}.\n\n\
         | | accuracy (%) |\n| --- | --- |\n| dense | {:.2} |\n| hard projection | {:.2} |\n\
         | final | {:.2} |\n\n\
         Compression {:.1}× (METHOD.md §1 bits); blocks {}; structure violations {}.\n\n\
         | layer | shape | block | dense | unified | pruned | bits | ratio |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        cfg.model,
        cfg.block,
        cfg.rounds,
        cfg.epochs_per_round,
        cfg.rho0,
        cfg.gamma,
        cfg.rho_max,
        cfg.dense_epochs,
        cfg.retrain_epochs,
        cfg.lr,
        cfg.batch,
        cfg.seed,
        r.dense_accuracy,
        r.hard_projection_accuracy,
        r.final_accuracy,
        r.compression_ratio,
        blocks_summary(&r.blocks),
        r.structure_violations
    );
    for l in &r.layers {
        s += &format!(
            "| {} | {:?} | {} | {} | {} | {} | {} | {:.2} |\n",
            l.name, l.shape, l.block, l.dense, l.unified, l.pruned, l.bits, l.ratio
        );
    }
    s += "\n| round | ρ | primal ‖W−Z‖/‖W‖ | dual ρ‖ΔZ‖ |\n| --- | --- | --- | --- |\n";
    for a in &r.admm {
        s += &format!(
            "| {} | {:.3e} | {:.3e} | {:.3e} |\n",
            a.round, a.rho, a.primal, a.dual
        );
    }
    s += &format!(
        "\nTimings (s): dense {:.1}, ADMM {:.1} (GPU projection {:.2}), retraining {:.1}, \
         evaluation {:.1}.\n",
        t.dense, t.admm, t.projection, t.retrain, t.eval
    );
    s
}

fn main() -> Result<()> {
    flush_denormals();
    let cli = Cli::parse();
    let wall = Instant::now();
    let cfg = cli.config()?;
    // The ratios against the model (names, block size) before any data or GPU work.
    {
        let (_vs, model) = microunify::train::models::build(cfg.model, tch::Device::Cpu, 0);
        admm::layer_plan(&cfg, &model)?;
    }
    let dir = cli.data_dir();
    let (train, test) = load_mnist_dir(&dir)
        .with_context(|| format!("loading the dataset from {}", dir.display()))?;
    let device = tch::Device::Cpu;
    let mut train = TensorSet::new(&train, device);
    let mut test = TensorSet::new(&test, device);
    if let Some(n) = cli.limit_train {
        train = train.take(n.max(1));
    }
    if let Some(n) = cli.limit_test {
        test = test.take(n.max(1));
    }
    let gpu = Gpu::new(&GpuOptions {
        adapter: cli.adapter.clone(),
        backend: cli.backend,
    })
    .context("opening the GPU for the projection")?;
    eprintln!(
        "adapter: {gpu:?}; {} train / {} test images from {}",
        train.len(),
        test.len(),
        dir.display()
    );
    std::fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;
    write_atomic(
        &cli.out.join("config.json"),
        serde_json::to_string_pretty(&cfg)?.as_bytes(),
    )?;

    let outcome = admm::run(&cfg, &gpu, &train, &test, &mut |line| {
        eprintln!("[{:7.1}s] {line}", wall.elapsed().as_secs_f64())
    })?;
    let r = &outcome.report;
    write_atomic(
        &cli.out.join("report.json"),
        serde_json::to_string_pretty(r)?.as_bytes(),
    )?;
    let mut csv = String::from("round,layer,primal,dual\n");
    for x in &outcome.residuals {
        csv += &format!("{},{},{:e},{:e}\n", x.round, x.layer, x.primal, x.dual);
    }
    write_atomic(&cli.out.join("residuals.csv"), csv.as_bytes())?;
    if r.structure_violations > 0 {
        bail!(
            "{} blocks of the final weights break their state; the compressed file was not written",
            r.structure_violations
        );
    }
    let path = cli.out.join("compressed.safetensors");
    outcome
        .file
        .write(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    // The tch checkpoint of the final model, written beside and renamed into place.
    let ckpt = cli.out.join("final.ot");
    let tmp = cli.out.join("final.ot.tmp");
    outcome
        .vars
        .save(&tmp)
        .and_then(|()| Ok(std::fs::rename(&tmp, &ckpt)?))
        .with_context(|| format!("writing {}", ckpt.display()))?;
    write_atomic(&cli.out.join("report.md"), markdown(&cfg, r).as_bytes())?;

    let t = &r.timings;
    println!(
        "dense {:.2}% → hard projection {:.2}% → final {:.2}%; compression {:.1}x; blocks: {}; structure violations {}",
        r.dense_accuracy,
        r.hard_projection_accuracy,
        r.final_accuracy,
        r.compression_ratio,
        blocks_summary(&r.blocks),
        r.structure_violations
    );
    println!(
        "timings (s): dense {:.1}, admm {:.1} (GPU projection {:.2}, {:.1}%), retrain {:.1}, eval {:.1}; wall {:.1}",
        t.dense,
        t.admm,
        t.projection,
        100.0 * t.projection / t.admm.max(1e-9),
        t.retrain,
        t.eval,
        wall.elapsed().as_secs_f64()
    );
    println!("wrote {}", cli.out.display());
    Ok(())
}
