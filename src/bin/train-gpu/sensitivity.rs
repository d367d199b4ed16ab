//! `train-gpu sensitivity`: each layer of a trained network compressed alone at the points
//! of a grid and scored on held-back training images, then the per-layer ratios that reach
//! `--target-ratio` at the smallest predicted loss written as a run configuration
//! (`microunify::train::sensitivity` holds the measurement and the choice).

use crate::load_data;
use crate::settings::{self, RunArgs};
use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use microunify::train::network::ModelSource;
use microunify::train::pipeline;
use microunify::train::sensitivity::{
    DEFAULT_GRID, Grid, OutputDir, PROPOSAL, Point, holdout, measure, proposal_settings,
    proposal_toml, propose,
};
use microunify::train::settings::Pair;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

/// The flags of the run settings that mean something here: which network and layers, the
/// data, the block shapes, where libtorch runs and the evaluation batch. The others set
/// training, which this command does not do (they belong to the run of the proposal).
const MEANINGFUL: [&str; 11] = [
    "--config",
    "--model",
    "--include",
    "--exclude",
    "--task",
    "--dataset",
    "--data-dir",
    "--block",
    "--layer-blocks",
    "--init",
    "--batch",
];

/// Images per forward pass of the scoring unless `--batch` is given (as the runs' own
/// evaluation).
const EVAL_BATCH: i64 = 1000;

#[derive(Args)]
pub struct SensitivityArgs {
    #[command(flatten)]
    run: RunArgs,
    /// The network compression ratio the proposal must reach: 32 bits per weight of the
    /// compressed layers over their storage (docs/METHOD.md §1).
    #[arg(long, value_name = "R")]
    target_ratio: f64,
    /// Score on the last N images of the training set [min(5000, 10% of the set)].
    #[arg(long, value_name = "N")]
    holdout: Option<i64>,
    /// The (prune, unify) pairs measured for each layer: every pair of the two lists whose
    /// sum is at most 1, and (0, 0).
    #[arg(long, value_name = "P,P,.../U,U,...", default_value = DEFAULT_GRID)]
    grid: Grid,
    /// Output folder: sensitivity.csv, sensitivity.png, proposal.toml. A missing or
    /// empty folder, or an earlier sensitivity's (see --force).
    #[arg(long, default_value = "runs/sensitivity")]
    out: PathBuf,
    /// Write into a folder that holds other files (they are kept).
    #[arg(long)]
    force: bool,
}

/// Refuses the flags that set training (and the projection's adapter), naming them.
fn refuse_training_flags(run: &RunArgs) -> Result<()> {
    let mut refused: Vec<&str> = run
        .given()
        .into_iter()
        .filter(|f| !MEANINGFUL.contains(f))
        .collect();
    if run.adapter.is_some() {
        refused.push("--adapter");
    }
    if run.backend.is_some() {
        refused.push("--backend");
    }
    if !refused.is_empty() {
        bail!(
            "train-gpu sensitivity measures a trained model and trains nothing: drop {} (give \
             training settings to the run of the proposal: train-gpu --config \
             DIR/{PROPOSAL} ...)",
            refused.join(", ")
        );
    }
    Ok(())
}

/// Progress on stderr: a bar on a terminal, and a line per layer.
struct Progress {
    bar: Option<ProgressBar>,
    names: Vec<String>,
    points_per_layer: usize,
    /// Points of the current layer so far, and their largest increase.
    done: usize,
    worst: f64,
    wall: Instant,
}

impl Progress {
    fn new(names: Vec<String>, points_per_layer: usize) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new((names.len() * points_per_layer) as u64);
            b.set_style(
                ProgressStyle::with_template(
                    "[{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} points (eta {eta}) {msg}",
                )
                .expect("valid template"),
            );
            b
        });
        Self {
            bar,
            names,
            points_per_layer,
            done: 0,
            worst: f64::NEG_INFINITY,
            wall: Instant::now(),
        }
    }

    fn point(&mut self, p: &Point) {
        let name = &self.names[p.layer];
        if let Some(b) = &self.bar {
            b.set_message(name.clone());
            b.inc(1);
        }
        self.done += 1;
        self.worst = self.worst.max(p.increase);
        if self.done < self.points_per_layer {
            return;
        }
        let line = format!(
            "[{:7.1}s] layer {}/{} {name}: {} points, largest loss increase {:.4}",
            self.wall.elapsed().as_secs_f64(),
            p.layer + 1,
            self.names.len(),
            self.done,
            self.worst
        );
        match &self.bar {
            Some(b) => b.println(line),
            None => microunify::errln!("{line}"),
        }
        self.done = 0;
        self.worst = f64::NEG_INFINITY;
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

pub fn main(args: &SensitivityArgs) -> Result<()> {
    refuse_training_flags(&args.run)?;
    if !(args.target_ratio.is_finite() && args.target_ratio > 0.0) {
        bail!(
            "--target-ratio must be a positive number, got {}",
            args.target_ratio
        );
    }
    // The ratios are the proposal's to choose; a placeholder lets any model resolve. The
    // evaluation batch is not the proposal's training batch.
    let mut run = args.run.clone();
    run.batch = None;
    let mut file = run.file()?;
    file.ratios = None;
    file.global = None;
    file.uniform = Some(Pair([0.0, 0.0]));
    let resolved = file.resolve();
    let resolved = match &run.config {
        Some(p) => resolved
            .with_context(|| format!("the settings of {} and the command line", p.display()))?,
        None => resolved?,
    };
    let base = settings::prepare(resolved)?;
    let a = base.admm();
    if let (ModelSource::Builtin(k), None) = (&a.model, &a.init) {
        bail!(
            "{k} is a built-in network: give its trained weights with --init (e.g. a run's \
             dense.ot or final.ot); without them there is nothing trained to measure"
        );
    }
    let specs = crate::plan(&base)?;
    let out = OutputDir::open(&args.out, args.force)?;

    // The holdout is taken from the whole training set, whatever a config's limits.
    let mut loading = base.clone();
    loading.settings.limit_train = None;
    loading.settings.limit_test = None;
    let train = load_data(&loading)?.train;
    let (slice, which) = holdout(&train, args.holdout)?;
    drop(train);
    let model = pipeline::load_model(a, base.device, None)?;
    model.check_data(a.task, &slice, "held-back training")?;
    let batch = args.run.batch.unwrap_or(EVAL_BATCH);
    if batch < 1 {
        bail!("--batch must be at least 1, got {batch}");
    }
    microunify::errln!(
        "model {}: {} layers × {} grid points, scored on {which} from {}; torch device {:?}",
        model.info.label,
        specs.len(),
        args.grid.points.len(),
        base.data,
        base.device
    );

    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let mut progress = Progress::new(names, args.grid.points.len());
    let s = measure(
        &model,
        &specs,
        a.task,
        &slice,
        &args.grid,
        batch,
        &mut |p| progress.point(p),
    )?;
    progress.finish();
    out.write_measurements(&s)?;

    let p = propose(&s, args.target_ratio)
        .map_err(|e| anyhow::anyhow!("{e:#} (the measurements are in {})", out.path.display()))?;
    let proposal = proposal_settings(&base.settings, &p);
    let path = out.file(PROPOSAL);
    let header = vec![
        format!(
            "train-gpu sensitivity: per-layer ratios reaching a compression ratio of {} \
             (docs/METHOD.md §1) at the smallest predicted loss.",
            args.target_ratio
        ),
        format!(
            "Measured: {}, every compressible layer alone projected one-shot at {} grid \
             points, the model scored in evaluation mode on {which}.",
            model.info.label,
            args.grid.points.len()
        ),
        format!(
            "Base loss {:.6} ({}). Predicted: ratio {:.3}x, loss {:.6} (the base plus the \
             sum of the chosen layers' increases; layers compressed together interact).",
            s.base.loss,
            a.task.show(s.base.value),
            p.ratio,
            p.loss
        ),
        format!("Run: train-gpu --config {} --out RUN", path.display()),
    ];
    let text = proposal_toml(&proposal, &header, &path)?;
    microunify::fsio::write_atomic(&path, text.as_bytes())?;

    for (name, r) in &p.ratios {
        microunify::outln!("{name}: prune {} unify {}", r.prune, r.unify);
    }
    microunify::outln!(
        "predicted: compression {:.3}x (target {}), loss {:.6} (base {:.6}, {})",
        p.ratio,
        args.target_ratio,
        p.loss,
        s.base.loss,
        a.task.show(s.base.value)
    );
    microunify::outln!("wrote {}", out.path.display());
    microunify::outln!("run it: train-gpu --config {} --out RUN", path.display());
    Ok(())
}
