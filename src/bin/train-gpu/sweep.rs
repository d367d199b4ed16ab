//! `train-gpu sweep`: the paper's central claim made measurable. One dense model is
//! trained once (`OUT/dense/`); every sub-run starts from it with the same seed and epoch
//! budget: ADMM against one-shot projection plus the same retraining (and one-shot with
//! retraining as long as ADMM's whole budget), and prune-only / unify-only / mixed at equal
//! storage. Each sub-run is a full run folder `OUT/NAME/`; a finished one is not run
//! again and an interrupted one resumes, so re-running the same command continues a
//! sweep. `sweep.csv`, `sweep.md` and `sweep.png` are rewritten after every sub-run.

use crate::settings::{Ready, RunArgs};
use crate::{load_data, open_gpu, plan, run_into};
use anyhow::{Context, Result, bail};
use clap::Args;
use microunify::gpu::Gpu;
use microunify::train::data::Loaded;
use microunify::train::report::Report;
use microunify::train::rundir::{CONFIG, DENSE, Next, RunDir};
use microunify::train::sweep::{
    Method, SWEEP_MD, SweepDir, SweepPlan, Training, plan_runs, write_outputs,
};
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
    /// Sweep into a folder with other files (they are kept), and replace sub-run folders
    /// that hold another configuration's run or other files (train-gpu's own files there
    /// are replaced, others kept). Finished sub-runs of this sweep are still reused.
    #[arg(long)]
    force: bool,
}

/// Runs `s` into `dir` (locked for the while) unless it already finished there (then its
/// report is reused); an unfinished one continues. See [`RunDir::next_for`].
fn run_or_reuse(
    s: &Ready,
    dir: &Path,
    data: &Loaded,
    gpu: &Gpu,
    label: &str,
    force: bool,
) -> Result<Report> {
    let d = RunDir::create(dir)?;
    match d.next_for(s.admm(), force, s.admm().init.as_deref())? {
        Next::Reuse(r) => {
            microunify::errln!("{label}finished before: {}", dir.display());
            Ok(*r)
        }
        Next::Continue(c) => Ok(run_into(s, &d, data, gpu, Some(&c), label, None)?.report),
        Next::Start => {
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
            base: base.admm().clone(),
            targets: args.targets.clone(),
            methods: args.methods.clone(),
            trainings: args.trainings.clone(),
        },
        &specs,
    )?;
    let out = SweepDir::open(&args.out, args.force)?;
    let data = load_data(&base)?;
    let gpu = open_gpu(&base, &data)?;
    microunify::errln!("{} sub-runs into {}", rows.len(), out.path.display());

    // One dense model for all (unless the base starts from --init without dense epochs).
    let init = if base.admm().dense_epochs > 0 {
        let mut dense = base.clone();
        dense.settings.admm.rounds = 0;
        dense.settings.admm.retrain_epochs = 0;
        let dir = std::path::absolute(out.path.join("dense"))?;
        run_or_reuse(&dense, &dir, &data, &gpu, "[dense] ", args.force)?;
        Some(dir.join(DENSE))
    } else {
        base.admm().init.clone()
    };
    for i in 0..rows.len() {
        let mut s = base.clone();
        s.settings.admm = rows[i].config.clone();
        if base.admm().dense_epochs > 0 {
            s.settings.admm.dense_epochs = 0;
            s.settings.admm.init.clone_from(&init);
        }
        let name = rows[i].name.clone();
        let label = format!("[{}/{} {name}] ", i + 1, rows.len());
        let report = run_or_reuse(&s, &out.path.join(&name), &data, &gpu, &label, args.force)?;
        rows[i].report = Some(report);
        write_outputs(&out.path, &rows)?;
    }
    let md = out.path.join(SWEEP_MD);
    let text = std::fs::read_to_string(&md).with_context(|| format!("reading {}", md.display()))?;
    microunify::outln!("{text}");
    microunify::outln!("wrote {}", out.path.display());
    Ok(())
}
