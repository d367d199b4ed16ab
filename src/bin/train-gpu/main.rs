//! `train-gpu`: ADMM compression of a real network, end to end (docs/METHOD.md §3): dense
//! training → ADMM rounds (W-step in tch, Z/U-step as one batched GPU projection) → hard
//! projection → masked retraining → report, plots and compressed `.safetensors`, with a
//! checkpoint after every epoch and round (`--resume`). `train-gpu sweep` compares ADMM
//! with one-shot projection, and prune-only / unify-only / mixed at equal storage.
//! `train-gpu sensitivity` scores each layer of a trained model compressed alone and
//! proposes per-layer ratios for a target compression ratio.
//!
//! The defaults are the demo (LeNet-5 on MNIST, 4×4 blocks, per-layer targets).

mod progress;
mod sensitivity;
mod settings;
mod sweep;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use microunify::LayerSpec;
use microunify::gpu::Gpu;
use microunify::train::checkpoint::Checkpoint;
use microunify::train::config::layer_plan;
use microunify::train::data::{self, Loaded};
use microunify::train::denormals::flush_denormals;
use microunify::train::network::ModelSource;
use microunify::train::pipeline::{self, Outcome};
use microunify::train::report;
use microunify::train::rundir::{CONFIG, RunDir, State};
use settings::{Ready, RunArgs};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(
    version,
    about = "ADMM micro-structured unification and pruning of a network",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
    /// Run folder: config.toml, checkpoint.safetensors (while running), report.json,
    /// report.md, epochs.csv, rounds.csv, residuals.csv, accuracy.png, residuals.png,
    /// block-states.png, compressed.safetensors, final.ot, dense.ot, finished.json. A new
    /// run needs a missing or empty folder (see --force).
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// Start the new run in a folder that is not empty (an earlier run, other files):
    /// train-gpu's own files there are replaced, every other file is kept.
    #[arg(long, conflicts_with = "resume")]
    force: bool,
    /// Continue the run in this folder with its own config.toml: from its checkpoint, or
    /// from the beginning if it stopped before its first one (only --adapter, --backend
    /// and --device may be given with it).
    #[arg(long, value_name = "DIR", conflicts_with = "out")]
    resume: Option<PathBuf>,
    /// Stop with an error after N checkpoints (to test --resume).
    #[arg(long, hide = true, value_name = "N")]
    stop_after: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Compare ADMM with one-shot projection, and prune-only / unify-only / mixed at equal
    /// storage, for a list of compression targets; writes sweep.csv, sweep.md, sweep.png.
    Sweep(sweep::SweepArgs),
    /// Score each layer of a trained model compressed alone on held-back training images,
    /// and propose per-layer ratios reaching --target-ratio at the least predicted loss;
    /// writes sensitivity.csv, sensitivity.png, proposal.toml.
    Sensitivity(sensitivity::SensitivityArgs),
}

/// The train and test sets of `s`, checked against its model, on its device, normalised
/// as it says (by default with the training set's per-channel statistics, all of them),
/// then limited.
fn load_data(s: &Ready) -> Result<Loaded> {
    let mut d = data::load(&s.data, s.device, &s.settings.normalize)
        .with_context(|| format!("loading the dataset {}", s.data))?;
    if let ModelSource::Builtin(kind) = &s.admm().model {
        d.check_fits(&(*kind).into())?;
    }
    d.limit(s.settings.limit_train, s.settings.limit_test);
    Ok(d)
}

/// The layers a run of `s` compresses.
fn plan(s: &Ready) -> Result<Vec<LayerSpec>> {
    let a = s.admm();
    Ok(layer_plan(a, &a.model.info(&a.filter())?)?.0)
}

/// The run's network accepts the data (checked before the run folder is touched).
fn check_data(s: &Ready, data: &Loaded) -> Result<()> {
    let a = s.admm();
    let model = pipeline::load_model(a, s.device, None)?;
    model.check_data(a.task, &data.train, "training")?;
    model.check_data(a.task, &data.test, "test")
}

/// The projection's GPU, named on stderr with the data.
fn open_gpu(s: &Ready, data: &Loaded) -> Result<Gpu> {
    let gpu = Gpu::new(&s.settings.gpu).context("opening the GPU for the projection")?;
    microunify::errln!(
        "adapter: {gpu:?}; torch device {:?}; {} train / {} test images from {}",
        s.device,
        data.train.len(),
        data.test.len(),
        data.origin
    );
    Ok(gpu)
}

/// Runs (or continues) one configuration into `dir`, data and GPU given.
fn run_into(
    s: &Ready,
    dir: &RunDir,
    data: &Loaded,
    gpu: &Gpu,
    resume: Option<&Checkpoint>,
    label: &str,
    stop_after: Option<usize>,
) -> Result<Outcome> {
    let mut obs = progress::Progress::new(dir.clone(), label, s.admm().total_epochs(), stop_after);
    if let Some(c) = resume {
        obs.skip(c.progress.epochs.len());
    }
    let out = pipeline::run(s.admm(), gpu, &data.train, &data.test, resume, &mut obs)?;
    obs.finish();
    dir.finish(s.admm(), &out)?;
    Ok(out)
}

fn main() {
    microunify::cli::main(run)
}

/// `--resume DIR`: the folder's run with its own config (where it runs may change), from
/// its checkpoint or, if it stopped before its first one, from the beginning.
fn resume(cli: &Cli, path: &std::path::Path) -> Result<(Ready, RunDir, Option<Checkpoint>)> {
    let given = cli.run.given();
    if !given.is_empty() {
        bail!(
            "--resume continues with the run's own {CONFIG}; drop {}",
            given.join(", ")
        );
    }
    let d = path.display();
    if !path.is_dir() {
        bail!("--resume {d}: no such folder");
    }
    let dir = RunDir::lock(path)?;
    let state = dir.contents()?.state;
    match state {
        State::Empty | State::Other => {
            bail!("--resume {d}: not a train-gpu run folder (no {CONFIG})")
        }
        State::Finished => {
            bail!("--resume {d}: this run has finished (its finished.json vouches for report.json)")
        }
        State::Started | State::Unfinished => {}
    }
    let mut file = dir.read_config()?;
    // Where the work runs may change; what it computes may not.
    for (v, given) in [
        (&mut file.adapter, &cli.run.adapter),
        (&mut file.device, &cli.run.device),
    ] {
        if given.is_some() {
            v.clone_from(given);
        }
    }
    if cli.run.backend.is_some() {
        file.backend = cli.run.backend;
    }
    let s = file
        .resolve()
        .and_then(settings::prepare)
        .with_context(|| format!("the config of {d}"))?;
    let ckpt = match state {
        State::Unfinished => Some(dir.load_checkpoint(s.admm())?),
        _ => {
            microunify::errln!(
                "{d} stopped before its first checkpoint: starting the run from the beginning"
            );
            None
        }
    };
    Ok((s, dir, ckpt))
}

fn run() -> Result<()> {
    flush_denormals();
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Sweep(args)) => return sweep::main(args),
        Some(Command::Sensitivity(args)) => return sensitivity::main(args),
        None => {}
    }
    let wall = Instant::now();
    let (settings, dir, ckpt) = match &cli.resume {
        Some(path) => resume(&cli, path)?,
        None => {
            let s = cli.run.resolve()?;
            let dir = RunDir::create(&cli.out)?;
            // Refused before any work; nothing is removed until the data and GPU are ready.
            if cli.force {
                dir.contents()?;
            } else {
                dir.start_new(false, None)?;
            }
            (s, dir, None)
        }
    };
    let data = load_data(&settings)?;
    check_data(&settings, &data)?;
    let gpu = open_gpu(&settings, &data)?;
    let init = settings.admm().init.as_deref();
    if cli.resume.is_none() {
        dir.start_new(cli.force, init)?;
        dir.write(CONFIG, settings.to_toml()?.as_bytes())?;
    } else if ckpt.is_none() {
        dir.restart(init)?;
    }
    let out = run_into(
        &settings,
        &dir,
        &data,
        &gpu,
        ckpt.as_ref(),
        "",
        cli.stop_after,
    )?;
    let r = &out.report;
    let t = &r.timings;
    microunify::outln!(
        "dense {:.2}% → hard projection {:.2}% → final {:.2}%; compression {:.1}x; blocks: {}; structure violations {}",
        r.dense_accuracy,
        r.hard_projection_accuracy,
        r.final_accuracy,
        r.compression_ratio,
        report::blocks_summary(&r.blocks),
        r.structure_violations
    );
    microunify::outln!(
        "timings (s): dense {:.1}, admm {:.1} (GPU projection {:.2}, {:.1}%), retrain {:.1}, eval {:.1}; wall {:.1}",
        t.dense,
        t.admm,
        t.projection,
        100.0 * t.projection / t.admm.max(1e-9),
        t.retrain,
        t.eval,
        wall.elapsed().as_secs_f64()
    );
    microunify::outln!("wrote {}", dir.path.display());
    Ok(())
}
