//! What the user sees while a run works, and what it saves as it goes: indicatif bars (the
//! run's epochs, the current epoch's batches with the loss) on a terminal, plain timestamped
//! lines otherwise; the checkpoint and the metrics CSVs after every epoch and round.

use anyhow::{Result, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use microunify::train::checkpoint::Checkpoint;
use microunify::train::network::Model;
use microunify::train::pipeline::Observer;
use microunify::train::report::{EpochRecord, Phase, RoundReport};
use microunify::train::rundir::RunDir;
use std::io::IsTerminal;
use std::time::Instant;

pub struct Progress {
    dir: RunDir,
    /// A prefix for every line (the sweep names its sub-runs).
    label: String,
    wall: Instant,
    bars: Option<(MultiProgress, ProgressBar, ProgressBar)>,
    /// Stop (with an error) after this many checkpoints: `--stop-after`, to test resuming.
    stop_after: Option<usize>,
    saved: usize,
    phase: Option<Phase>,
}

impl Progress {
    pub fn new(dir: RunDir, label: &str, total_epochs: usize, stop_after: Option<usize>) -> Self {
        let bars = std::io::stderr().is_terminal().then(|| {
            let mp = MultiProgress::new();
            let run = mp.add(ProgressBar::new(total_epochs as u64));
            run.set_style(
                ProgressStyle::with_template(
                    "{prefix:>8} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} epochs (eta {eta}) {msg}",
                )
                .expect("valid template"),
            );
            run.set_prefix("run");
            let epoch = mp.add(ProgressBar::new(0));
            epoch.set_style(
                ProgressStyle::with_template(
                    "{prefix:>8} {bar:30.green/white} {pos}/{len} batches {per_sec} {msg}",
                )
                .expect("valid template"),
            );
            (mp, run, epoch)
        });
        Self {
            dir,
            label: label.to_string(),
            wall: Instant::now(),
            bars,
            stop_after,
            saved: 0,
            phase: None,
        }
    }

    fn line(&self, s: &str) {
        let s = format!(
            "[{:7.1}s] {}{s}",
            self.wall.elapsed().as_secs_f64(),
            self.label
        );
        match &self.bars {
            Some((mp, ..)) => {
                let _ = mp.println(s);
            }
            None => microunify::errln!("{s}"),
        }
    }

    /// Epochs already done before this process (on `--resume`) count as done.
    pub fn skip(&self, epochs: usize) {
        if let Some((_, run, _)) = &self.bars {
            run.set_position(epochs as u64);
            run.reset_eta();
        }
    }

    pub fn finish(&self) {
        if let Some((_, run, epoch)) = &self.bars {
            epoch.finish_and_clear();
            run.finish();
        }
    }
}

impl Observer for Progress {
    fn phase(&mut self, phase: Phase, epochs: usize, batches: usize) {
        self.phase = Some(phase);
        self.line(&format!("{} phase: {epochs} epochs", phase.name()));
        if let Some((_, _, epoch)) = &self.bars {
            epoch.set_length(batches as u64);
            epoch.set_position(0);
            epoch.set_prefix(phase.name());
        }
    }

    fn batch(&mut self, done: usize, loss: f64) {
        if let Some((_, _, epoch)) = &self.bars {
            epoch.set_position(done as u64);
            if done.is_multiple_of(20) {
                epoch.set_message(format!("loss {loss:.4}"));
            }
        }
    }

    fn epoch(&mut self, e: &EpochRecord) {
        let acc = e
            .test_accuracy
            .map_or(String::new(), |a| format!(", test {a:.2}%"));
        let rho = e.rho.map_or(String::new(), |r| format!(", rho {r:.3e}"));
        self.line(&format!(
            "{} epoch {}: lr {:.2e}{rho}, loss {:.4}{acc} ({:.1}s)",
            e.phase.name(),
            e.phase_epoch,
            e.lr,
            e.loss,
            e.seconds
        ));
        if let Some((_, run, epoch)) = &self.bars {
            run.inc(1);
            run.set_message(format!("{}{acc}", e.phase.name()));
            epoch.set_position(0);
        }
    }

    fn round(&mut self, r: &RoundReport) {
        self.line(&format!(
            "ADMM round {}: rho {:.3e}, primal {:.4e}, dual {:.4e}",
            r.round, r.rho, r.primal, r.dual
        ));
    }

    fn note(&mut self, line: &str) {
        self.line(line);
    }

    fn dense_trained(&mut self, model: &Model) -> Result<()> {
        self.dir.save_dense(model)
    }

    fn checkpoint(&mut self, c: &Checkpoint) -> Result<()> {
        c.save(&self.dir.checkpoint_path())?;
        self.dir
            .write_metrics(&c.progress.epochs, &c.progress.rounds)?;
        self.saved += 1;
        if let Some(n) = self.stop_after
            && self.saved >= n
        {
            self.finish();
            bail!(
                "stopped after {n} checkpoint(s) as --stop-after asked; continue with --resume {}",
                self.dir.path.display()
            );
        }
        Ok(())
    }
}
