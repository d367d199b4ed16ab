//! `train-gpu sweep`: the paper's central claim made measurable. One dense model is
//! trained once (`OUT/dense/`); every sub-run starts from it with the same seed and epoch
//! budget: ADMM against one-shot projection plus the same retraining (and one-shot with
//! retraining as long as ADMM's whole budget), and prune-only / unify-only / mixed at equal
//! storage. Each sub-run is a full run folder `OUT/NAME/`; a finished one is not run
//! again and an interrupted one resumes, so re-running the same command continues a
//! sweep. `sweep.csv`, `sweep.md` and `sweep.png` are rewritten after every sub-run.

use crate::settings::{FileConfig, RunArgs, Settings};
use crate::{load_data, plan, run_into};
use anyhow::{Context, Result, bail};
use clap::Args;
use microunify::gpu::Gpu;
use microunify::train::checkpoint::Checkpoint;
use microunify::train::report::Report;
use microunify::train::rundir::{CONFIG, RunDir};
use microunify::train::sweep::{Method, SweepPlan, Training, plan_runs, write_outputs};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct SweepArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Network compression ratios to compare at, e.g. 10,20,36 (default: the configured
    /// ratios themselves).
    #[arg(long, value_delimiter = ',')]
    targets: Vec<f64>,
    /// Structures to compare at equal storage.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "mixed,prune-only,unify-only"
    )]
    methods: Vec<Method>,
    /// Trainings to compare (one-shot-long: one-shot retrained for ADMM's whole budget).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "admm,one-shot,one-shot-long"
    )]
    trainings: Vec<Training>,
    /// Sweep folder.
    #[arg(long, default_value = "runs/sweep")]
    out: PathBuf,
}

/// A finished sub-run's report, an unfinished one's checkpoint, or nothing yet.
enum Found {
    Done(Report),
    Unfinished(RunDir, Box<Checkpoint>),
    Fresh,
}

fn find(dir: &Path, s: &Settings) -> Result<Found> {
    let d = RunDir::at(dir);
    if let Some(r) = d.finished_report()? {
        // A finished run is reused only if it ran this very configuration.
        let saved = FileConfig::load(&dir.join(CONFIG))
            .and_then(|f| Settings::from_file(&f))
            .with_context(|| format!("the finished run in {}", dir.display()))?;
        if saved.admm != s.admm {
            bail!(
                "{} holds a finished run of another configuration: delete it, or sweep into another --out",
                dir.display()
            );
        }
        return Ok(Found::Done(r));
    }
    if d.checkpoint_path().is_file() {
        let (d, c) = RunDir::open_unfinished(dir)?;
        return Ok(Found::Unfinished(d, Box::new(c)));
    }
    Ok(Found::Fresh)
}

/// Runs `s` into `dir` unless it already finished there (then its report is reused).
fn run_or_reuse(
    s: &Settings,
    dir: &Path,
    data: &(
        microunify::train::data::TensorSet,
        microunify::train::data::TensorSet,
    ),
    gpu: &Gpu,
    label: &str,
) -> Result<Report> {
    match find(dir, s)? {
        Found::Done(r) => {
            microunify::errln!("{label}finished before: {}", dir.display());
            Ok(r)
        }
        Found::Unfinished(d, c) => {
            if c.progress.config != s.admm {
                bail!(
                    "{} holds an unfinished run of another configuration: delete it",
                    dir.display()
                );
            }
            Ok(run_into(s, &d, data, gpu, Some(&c), label, None)?.report)
        }
        Found::Fresh => {
            let d = RunDir::create(dir)?;
            d.write(CONFIG, s.to_toml()?.as_bytes())?;
            Ok(run_into(s, &d, data, gpu, None, label, None)?.report)
        }
    }
}

pub fn main(args: &SweepArgs) -> Result<()> {
    let base = args.run.resolve()?;
    let specs = plan(&base)?;
    if args.methods.is_empty() || args.trainings.is_empty() {
        bail!("--methods and --trainings need at least one value each");
    }
    let mut rows = plan_runs(
        &SweepPlan {
            base: base.admm.clone(),
            targets: args.targets.clone(),
            methods: args.methods.clone(),
            trainings: args.trainings.clone(),
        },
        &specs,
    )?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let data = load_data(&base)?;
    let gpu = Gpu::new(&base.gpu).context("opening the GPU for the projection")?;
    microunify::errln!(
        "adapter: {gpu:?}; {} sub-runs into {}",
        rows.len(),
        args.out.display()
    );

    // One dense model for all (unless the base starts from --init without dense epochs).
    let init = if base.admm.dense_epochs > 0 {
        let mut dense = base.clone();
        dense.admm.rounds = 0;
        dense.admm.retrain_epochs = 0;
        let dir = std::path::absolute(args.out.join("dense"))?;
        run_or_reuse(&dense, &dir, &data, &gpu, "[dense] ")?;
        Some(dir.join("dense.ot"))
    } else {
        base.admm.init.clone()
    };
    for i in 0..rows.len() {
        let mut s = base.clone();
        s.admm = rows[i].config.clone();
        if base.admm.dense_epochs > 0 {
            s.admm.dense_epochs = 0;
            s.admm.init.clone_from(&init);
        }
        let name = rows[i].name.clone();
        let label = format!("[{}/{} {name}] ", i + 1, rows.len());
        let report = run_or_reuse(&s, &args.out.join(&name), &data, &gpu, &label)?;
        rows[i].report = Some(report);
        write_outputs(&args.out, &rows)?;
    }
    microunify::outln!("{}", std::fs::read_to_string(args.out.join("sweep.md"))?);
    microunify::outln!("wrote {}", args.out.display());
    Ok(())
}
