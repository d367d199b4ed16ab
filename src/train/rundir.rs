//! A run folder: what `train-gpu` leaves behind, every file written atomically.
//!
//! | file | what |
//! | --- | --- |
//! | `config.toml` | the resolved configuration (written by the binary) |
//! | `checkpoint.safetensors` | the state after the latest epoch or round; removed at the end |
//! | `report.json`, `report.md` | the report |
//! | `epochs.csv`, `rounds.csv`, `residuals.csv` | metrics per epoch, per round, per round and layer |
//! | `accuracy.png`, `residuals.png`, `block-states.png` | plots |
//! | `compressed.safetensors` | the final weights, compressed (`microunify inspect` reads it) |
//! | `final.ot` | tch checkpoint of the final model |
//! | `dense.ot` | tch checkpoint after dense training (`--init` for another run) |

use crate::fsio::write_atomic;
use crate::plots::{self, EpochPoint, LayerStates, RoundPoint};
use crate::train::checkpoint::{self, Checkpoint};
use crate::train::config::AdmmConfig;
use crate::train::pipeline::Outcome;
use crate::train::report::{self, EpochRecord, Report, RoundReport};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use tch::nn;

pub const CONFIG: &str = "config.toml";
pub const REPORT: &str = "report.json";

#[derive(Clone, Debug)]
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    /// The run folder at `path` (nothing is checked or created).
    pub fn at(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
        }
    }

    /// The report of a finished run here (report.json and no checkpoint), if there is one.
    pub fn finished_report(&self) -> Result<Option<Report>> {
        let path = self.file(REPORT);
        if !path.is_file() || self.checkpoint_path().exists() {
            return Ok(None);
        }
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let r = serde_json::from_slice(&bytes)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(Some(r))
    }

    /// A folder for a new run. Refuses one that holds an unfinished run (its checkpoint),
    /// which only `--resume` may continue; a finished run's files are replaced.
    pub fn create(path: &Path) -> Result<Self> {
        let d = Self::at(path);
        if d.checkpoint_path().exists() {
            bail!(
                "{} holds an unfinished run: continue it with --resume {0}, or delete the folder",
                path.display()
            );
        }
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(d)
    }

    /// An existing run folder to continue: it must hold a config and a checkpoint.
    pub fn open_unfinished(path: &Path) -> Result<(Self, Checkpoint)> {
        if !path.is_dir() {
            bail!("--resume {}: no such folder", path.display());
        }
        let d = Self::at(path);
        if !d.file(CONFIG).is_file() {
            bail!(
                "--resume {}: not a train-gpu run folder (no {CONFIG})",
                path.display()
            );
        }
        if !d.checkpoint_path().is_file() {
            if d.file(REPORT).is_file() {
                bail!(
                    "--resume {}: this run has finished (report.json is there, no checkpoint)",
                    path.display()
                );
            }
            bail!(
                "--resume {}: no {} to continue from",
                path.display(),
                checkpoint::FILE
            );
        }
        let c = Checkpoint::load(&d.checkpoint_path())?;
        Ok((d, c))
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn checkpoint_path(&self) -> PathBuf {
        self.file(checkpoint::FILE)
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        write_atomic(&self.file(name), bytes)
            .with_context(|| format!("writing {}", self.file(name).display()))
    }

    /// The metrics so far (rewritten whole after every epoch, so a crash leaves them
    /// consistent with the checkpoint).
    pub fn write_metrics(&self, epochs: &[EpochRecord], rounds: &[RoundReport]) -> Result<()> {
        self.write("epochs.csv", report::epochs_csv(epochs).as_bytes())?;
        self.write("rounds.csv", report::rounds_csv(rounds).as_bytes())
    }

    /// A tch checkpoint of `vs`, written atomically like every other file.
    pub fn save_vars(&self, name: &str, vs: &nn::VarStore) -> Result<()> {
        let mut bytes = Vec::new();
        vs.save_to_stream(&mut bytes)
            .with_context(|| format!("encoding {name}"))?;
        self.write(name, &bytes)
    }

    /// Everything a finished run writes; the checkpoint goes last. Fails without writing
    /// the compressed file when the final weights break their structure.
    pub fn finish(&self, cfg: &AdmmConfig, o: &Outcome) -> Result<()> {
        let r = &o.report;
        self.write(REPORT, serde_json::to_string_pretty(r)?.as_bytes())?;
        self.write("report.md", report::markdown(cfg, r).as_bytes())?;
        self.write_metrics(&o.epochs, &r.admm)?;
        self.write(
            "residuals.csv",
            report::residuals_csv(&o.residuals).as_bytes(),
        )?;
        self.plots(r, o)?;
        if r.structure_violations > 0 {
            bail!(
                "{} blocks of the final weights break their state; the compressed file was not written",
                r.structure_violations
            );
        }
        let path = self.file("compressed.safetensors");
        o.file
            .write(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        self.save_vars("final.ot", &o.vars)?;
        let ckpt = self.checkpoint_path();
        if ckpt.exists() {
            std::fs::remove_file(&ckpt).with_context(|| format!("removing {}", ckpt.display()))?;
        }
        Ok(())
    }

    fn plots(&self, r: &report::Report, o: &Outcome) -> Result<()> {
        let points: Vec<EpochPoint> = o
            .epochs
            .iter()
            .map(|e| EpochPoint {
                epoch: e.epoch,
                phase: e.phase.name().to_string(),
                loss: e.loss,
                test_accuracy: e.test_accuracy,
            })
            .collect();
        let marks = vec![
            ("dense".to_string(), r.dense_accuracy),
            ("hard projection".to_string(), r.hard_projection_accuracy),
            ("final".to_string(), r.final_accuracy),
        ];
        plots::accuracy_plot(&self.file("accuracy.png"), &points, &marks)?;
        let rounds: Vec<RoundPoint> = r
            .admm
            .iter()
            .map(|a| RoundPoint {
                round: a.round,
                rho: a.rho,
                primal: a.primal,
                dual: a.dual,
            })
            .collect();
        let path = self.file("residuals.png");
        if rounds.is_empty() {
            // No rounds (one-shot): no plot, and none left over from an earlier run here.
            if path.exists() {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        } else {
            plots::residuals_plot(&path, &rounds)?;
        }
        let layers: Vec<LayerStates> = o
            .specs
            .iter()
            .zip(&o.states)
            .map(|(spec, states)| {
                let g = spec.grid();
                LayerStates {
                    name: spec.name.clone(),
                    grid_rows: g.block_rows(),
                    grid_cols: g.block_cols(),
                    states: states.iter().map(|&s| s as u8).collect(),
                }
            })
            .collect();
        plots::block_states_plot(&self.file("block-states.png"), &layers)
    }
}
