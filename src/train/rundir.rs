//! A run folder: what `train-gpu` leaves behind, every file written atomically, and the
//! rules for what a run may do to a folder.
//!
//! | file | what |
//! | --- | --- |
//! | `config.toml` | the resolved configuration (written by the binary before any training) |
//! | `checkpoint.safetensors` | the state after the latest epoch or round; removed at the end |
//! | `report.json`, `report.md` | the report |
//! | `epochs.csv`, `rounds.csv`, `residuals.csv` | metrics per epoch, per round, per round and layer |
//! | `accuracy.png`, `residuals.png`, `block-states.png` | plots |
//! | `compressed.safetensors` | the final weights, compressed (`microunify inspect` reads it) |
//! | `compressed.pt` | the final model as TorchScript (the user's own module, or a trace of a built-in), in evaluation mode: `torch.jit.load` runs it |
//! | `final.ot` | tch checkpoint of a built-in model's final variables |
//! | `dense.ot` | tch checkpoint of a built-in model after dense training (`--init` for another run) |
//! | `dense.pt` | a TorchScript model after dense training |
//! | `finished.json` | written last: the SHA-256 of `config.toml` and of `report.json` |
//!
//! Besides these: `.microunify.lock` (see below) and, while a file is being written, its
//! temporary `.NAME.PID.RANDOM.tmp`.
//!
//! # One process at a time
//!
//! A process holds the folder's OS lock ([`FolderLock`]) from before it reads or writes
//! anything in it until it ends, and the kernel drops the lock when it dies; a second
//! process is refused, naming the folder. Holding the lock, it first removes the
//! temporary files a killed writer of ours left behind (regular files named after the
//! files above; a link or anything else stays).
//!
//! # States
//!
//! A folder's state follows from which of the files above it holds; files of other names
//! never count, and nothing ever removes or replaces them.
//!
//! - **empty**: none of the files above (a missing folder is created empty).
//! - **started**: `config.toml`, no checkpoint, not finished: the run was killed before
//!   its first checkpoint (or its checkpoint was removed). The config defines the run
//!   fully, so `--resume` starts it again from the beginning (first removing whatever
//!   else of ours the killed process left, such as `dense.ot`).
//! - **unfinished**: `config.toml` and `checkpoint.safetensors`: `--resume` continues.
//! - **finished**: `finished.json` holds the digests of `config.toml` and `report.json`
//!   as they are: the report was written by a run of this very config. A `report.json`
//!   without that evidence (left by another run, or by an older train-gpu) proves nothing.
//! - **other**: some of our file names but no `config.toml` (e.g. the user's own
//!   `report.md`).
//!
//! A new run (`--out`) starts only in an empty folder that holds no other files either.
//! Anything else is refused, saying what is there, unless `--force`: then our own files
//! are removed first — `finished.json` first and `config.toml` last, so that a crash half
//! way leaves a state of the old run, never the new config beside the old report — and
//! everything else stays. The file the new run's `--init` names is never removed. A
//! folder or link bearing one of our file names is never removed or written through: it
//! is refused, named, whatever the flags.

use crate::fsio::{FolderLock, LOCK_FILE, read_regular, remove_stale_temps, write_atomic};
use crate::plots::{self, EpochPoint, LayerStates, RoundPoint};
use crate::train::checkpoint::{self, Checkpoint, sha256_hex};
use crate::train::config::AdmmConfig;
use crate::train::network::Model;
use crate::train::pipeline::Outcome;
use crate::train::report::{self, EpochRecord, Report, RoundReport};
use crate::train::settings::{FileConfig, Settings};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::nn;

pub const CONFIG: &str = "config.toml";
pub const REPORT: &str = "report.json";
/// The evidence that the run finished (see the module documentation).
pub const FINISHED: &str = "finished.json";
pub const DENSE: &str = "dense.ot";
pub const FINAL: &str = "final.ot";
pub const COMPRESSED: &str = "compressed.safetensors";
pub const COMPRESSED_PT: &str = "compressed.pt";
pub const DENSE_PT: &str = "dense.pt";
const REPORT_MD: &str = "report.md";
const EPOCHS_CSV: &str = "epochs.csv";
const ROUNDS_CSV: &str = "rounds.csv";
const RESIDUALS_CSV: &str = "residuals.csv";
const ACCURACY_PNG: &str = "accuracy.png";
const RESIDUALS_PNG: &str = "residuals.png";
const BLOCK_STATES_PNG: &str = "block-states.png";

/// Every file a run writes into its folder, in the order a replaced run's are removed:
/// the evidence of a finished run first, the config last.
pub const FILES: [&str; 16] = [
    FINISHED,
    checkpoint::FILE,
    REPORT,
    REPORT_MD,
    EPOCHS_CSV,
    ROUNDS_CSV,
    RESIDUALS_CSV,
    ACCURACY_PNG,
    RESIDUALS_PNG,
    BLOCK_STATES_PNG,
    COMPRESSED,
    COMPRESSED_PT,
    FINAL,
    DENSE,
    DENSE_PT,
    CONFIG,
];

/// Bound on the text files read back (config, report, evidence).
const MAX_TEXT_BYTES: u64 = 256 << 20;

/// Where a folder's run stands (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Empty,
    Started,
    Unfinished,
    Finished,
    Other,
}

/// What a run folder holds.
#[derive(Clone, Debug)]
pub struct Contents {
    pub state: State,
    /// Our files present, in [`FILES`] order.
    pub ours: Vec<&'static str>,
    /// Every other entry (the lock file aside), sorted.
    pub others: Vec<String>,
}

/// The evidence that a run finished: what `config.toml` and `report.json` held.
#[derive(Serialize, Deserialize)]
struct Finished {
    config_sha256: String,
    report_sha256: String,
}

/// What a sweep (or any caller with a wanted configuration) does with a run folder.
pub enum Next {
    /// It finished this very configuration: its report.
    Reuse(Box<Report>),
    /// It holds this configuration's checkpoint: continue from it.
    Continue(Box<Checkpoint>),
    /// Start the run from the beginning (the folder is ready: none of our files but
    /// possibly this configuration's `config.toml`).
    Start,
}

/// Up to five names, then how many more.
fn list(names: &[impl AsRef<str>]) -> String {
    let mut s: Vec<&str> = names.iter().take(5).map(AsRef::as_ref).collect();
    let more;
    if names.len() > 5 {
        more = format!("and {} more", names.len() - 5);
        s.push(&more);
    }
    s.join(", ")
}

/// A run folder, locked by this process for as long as any clone of it lives.
#[derive(Clone, Debug)]
pub struct RunDir {
    pub path: PathBuf,
    _lock: Arc<FolderLock>,
}

impl RunDir {
    /// Locks the existing run folder at `path` (see the module documentation) and removes
    /// our stale temporary files.
    pub fn lock(path: &Path) -> Result<Self> {
        if !path.is_dir() {
            bail!("{}: no such folder", path.display());
        }
        let lock = FolderLock::acquire(path)?;
        let names: Vec<&str> = FILES.to_vec();
        remove_stale_temps(path, &names)?;
        Ok(Self {
            path: path.to_path_buf(),
            _lock: Arc::new(lock),
        })
    }

    /// Like [`RunDir::lock`], creating the folder (and its parents) first when missing.
    pub fn create(path: &Path) -> Result<Self> {
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        Self::lock(path)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn checkpoint_path(&self) -> PathBuf {
        self.file(checkpoint::FILE)
    }

    fn read_text(&self, name: &str, what: &str) -> Result<Vec<u8>> {
        Ok(read_regular(&self.file(name), MAX_TEXT_BYTES, what)?)
    }

    /// Whether `finished.json` vouches for `config.toml` and `report.json` as they are.
    fn finished(&self) -> Result<bool> {
        let Ok(evidence) = self.read_text(FINISHED, "run's finished.json") else {
            return Ok(false);
        };
        let Ok(f) = serde_json::from_slice::<Finished>(&evidence) else {
            return Ok(false);
        };
        let config = self.read_text(CONFIG, "run config")?;
        let report = self.read_text(REPORT, "report")?;
        Ok(f.config_sha256 == sha256_hex(&config) && f.report_sha256 == sha256_hex(&report))
    }

    /// What the folder holds and its state. A folder or link bearing one of our file
    /// names is an error naming it.
    pub fn contents(&self) -> Result<Contents> {
        let mut present = Vec::new();
        let mut others = Vec::new();
        let d = &self.path;
        for entry in std::fs::read_dir(d).with_context(|| format!("reading {}", d.display()))? {
            let entry = entry.with_context(|| format!("reading {}", d.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == LOCK_FILE {
                continue;
            }
            let kind = entry
                .file_type()
                .with_context(|| format!("reading {}", entry.path().display()))?;
            match FILES.iter().find(|f| **f == name) {
                Some(f) if kind.is_file() => present.push(*f),
                Some(_) => {
                    let is = if kind.is_dir() {
                        "a folder"
                    } else if kind.is_symlink() {
                        "a symbolic link"
                    } else {
                        "not a regular file"
                    };
                    bail!(
                        "{} is {is}, where train-gpu keeps a file of its own: move it away",
                        entry.path().display()
                    );
                }
                None => others.push(name),
            }
        }
        others.sort();
        let ours: Vec<&'static str> = FILES
            .iter()
            .copied()
            .filter(|f| present.contains(f))
            .collect();
        let has = |f: &str| ours.contains(&f);
        let state = if has(CONFIG) && has(REPORT) && has(FINISHED) && self.finished()? {
            State::Finished
        } else if has(CONFIG) && has(checkpoint::FILE) {
            State::Unfinished
        } else if has(CONFIG) {
            State::Started
        } else if ours.is_empty() {
            State::Empty
        } else {
            State::Other
        };
        Ok(Contents {
            state,
            ours,
            others,
        })
    }

    /// Readies the folder for a new run: refuses anything but an empty folder (see the
    /// module documentation) unless `force`, and then removes our files there (never
    /// `keep`, the new run's `--init`).
    pub fn start_new(&self, force: bool, keep: Option<&Path>) -> Result<()> {
        let c = self.contents()?;
        if c.ours.is_empty() && c.others.is_empty() {
            return Ok(());
        }
        if !force {
            let d = self.path.display();
            let force_does = "--force replaces train-gpu's own files there and keeps every other";
            match c.state {
                State::Unfinished => bail!(
                    "{d} holds an unfinished run: continue it with --resume {d}, or start a new \
                     one there with --force ({force_does})"
                ),
                State::Started => bail!(
                    "{d} holds a run that stopped before its first checkpoint: start it again \
                     with --resume {d}, or start a new one there with --force ({force_does})"
                ),
                State::Finished => bail!(
                    "{d} holds a finished run: use another --out, or --force to replace it \
                     ({force_does})"
                ),
                State::Empty | State::Other => {
                    let mut all: Vec<&str> = c.ours.clone();
                    all.extend(c.others.iter().map(String::as_str));
                    all.sort();
                    let mut what = String::new();
                    if !c.ours.is_empty() {
                        what += &format!("replaces {}", list(&c.ours));
                    }
                    if !c.others.is_empty() {
                        if !what.is_empty() {
                            what += " and ";
                        }
                        what += &format!("keeps {}", list(&c.others));
                    }
                    bail!(
                        "{d} is not empty (it holds {}): a new run starts only in a missing or \
                         empty folder; use another --out, or --force to run there (it {what})",
                        list(&all)
                    );
                }
            }
        }
        self.remove(&c.ours, false, keep)
    }

    /// Removes `ours` in [`FILES`] order (all of them, or all but `config.toml`), never
    /// `keep`.
    fn remove(&self, ours: &[&str], keep_config: bool, keep: Option<&Path>) -> Result<()> {
        let keep = keep.and_then(|k| std::fs::canonicalize(k).ok());
        for name in ours {
            if keep_config && *name == CONFIG {
                continue;
            }
            let p = self.file(name);
            if keep.is_some() && std::fs::canonicalize(&p).ok() == keep {
                continue;
            }
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
        Ok(())
    }

    /// Readies a started run (config.toml and nothing to continue from) to start again:
    /// removes our other files, never `keep`.
    pub fn restart(&self, keep: Option<&Path>) -> Result<()> {
        let c = self.contents()?;
        if c.state != State::Started {
            bail!(
                "{} is not a run that stopped before its first checkpoint",
                self.path.display()
            );
        }
        self.remove(&c.ours, true, keep)
    }

    /// The folder's `config.toml`, parsed.
    pub fn read_config(&self) -> Result<FileConfig> {
        let path = self.file(CONFIG);
        let bytes = self.read_text(CONFIG, "run config")?;
        let text = String::from_utf8(bytes)
            .map_err(|e| anyhow::anyhow!("{}: not UTF-8 text ({e})", path.display()))?;
        FileConfig::parse(&text, &path)
    }

    /// The folder's `config.toml`, resolved.
    pub fn read_settings(&self) -> Result<Settings> {
        self.read_config()?
            .resolve()
            .with_context(|| format!("the config of {}", self.path.display()))
    }

    /// The checkpoint, checked for continuing a run of `cfg` (see [`Checkpoint`]). A
    /// checkpoint that fails a check is an error that says the run cannot continue from
    /// it and what to do instead.
    pub fn load_checkpoint(&self, cfg: &AdmmConfig) -> Result<Checkpoint> {
        let path = self.checkpoint_path();
        let bytes = read_regular(&path, checkpoint::MAX_BYTES, "checkpoint")?;
        Checkpoint::from_bytes(&bytes, &path)
            .and_then(|c| {
                c.model_info(cfg)
                    .and_then(|info| c.check_against(cfg, &info))
                    .map_err(|e| anyhow::anyhow!("{} is corrupt: {e:#}", path.display()))?;
                Ok(c)
            })
            .map_err(|e| {
                let dense = self.file(DENSE);
                let init = if dense.is_file() {
                    format!(
                        ", or, as dense training had finished, from its dense model: --force \
                         --init {} --dense-epochs 0",
                        dense.display()
                    )
                } else {
                    String::new()
                };
                anyhow::anyhow!(
                    "{e:#}. It was this run's only saved state (each checkpoint replaces the \
                     previous one), so the run cannot continue: start it again from the \
                     beginning with --force{init}"
                )
            })
    }

    /// The report of the finished run here.
    pub fn finished_report(&self) -> Result<Report> {
        let path = self.file(REPORT);
        let bytes = self.read_text(REPORT, "report")?;
        serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))
    }

    /// What to do here for a run of `want` (the sweep's rule for its sub-runs): reuse a
    /// finished run of it, continue its checkpoint, or start it. A run of another
    /// configuration, or other files in a folder without a run, are refused unless
    /// `force` (then our files are replaced, others kept, never `keep`).
    pub fn next_for(&self, want: &AdmmConfig, force: bool, keep: Option<&Path>) -> Result<Next> {
        let c = self.contents()?;
        let d = self.path.display();
        let same = || -> Result<bool> { Ok(self.read_settings()?.admm == *want) };
        match c.state {
            State::Finished if same()? => {
                return Ok(Next::Reuse(Box::new(self.finished_report()?)));
            }
            State::Unfinished if same()? => {
                return Ok(Next::Continue(Box::new(self.load_checkpoint(want)?)));
            }
            State::Started if same()? => {
                self.restart(keep)?;
                return Ok(Next::Start);
            }
            State::Empty if c.others.is_empty() => return Ok(Next::Start),
            _ => {}
        }
        if !force {
            let held = match c.state {
                State::Finished => "a finished run of another configuration",
                State::Unfinished => "an unfinished run of another configuration",
                State::Started => "a started run of another configuration",
                State::Empty | State::Other => "files that are not this run's",
            };
            bail!(
                "{d} holds {held}: delete it, sweep into another --out, or add --force to \
                 replace train-gpu's own files there (others are kept)"
            );
        }
        self.remove(&c.ours, false, keep)?;
        Ok(Next::Start)
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        write_atomic(&self.file(name), bytes)
            .with_context(|| format!("writing {}", self.file(name).display()))
    }

    /// The metrics so far (rewritten whole after every epoch, so a crash leaves them
    /// consistent with the checkpoint).
    pub fn write_metrics(&self, epochs: &[EpochRecord], rounds: &[RoundReport]) -> Result<()> {
        self.write(EPOCHS_CSV, report::epochs_csv(epochs).as_bytes())?;
        self.write(ROUNDS_CSV, report::rounds_csv(rounds).as_bytes())
    }

    /// The model after dense training: a built-in's variables (`dense.ot`, for `--init`),
    /// a TorchScript module as itself (`dense.pt`).
    pub fn save_dense(&self, model: &Model) -> Result<()> {
        match model.var_store() {
            Some(vs) => self.save_vars(DENSE, vs),
            None => self.write(DENSE_PT, &model.torchscript()?),
        }
    }

    /// A tch checkpoint of `vs`, written atomically like every other file.
    pub fn save_vars(&self, name: &str, vs: &nn::VarStore) -> Result<()> {
        let mut bytes = Vec::new();
        vs.save_to_stream(&mut bytes)
            .with_context(|| format!("encoding {name}"))?;
        self.write(name, &bytes)
    }

    /// Everything a finished run writes; then the evidence that it finished, then the
    /// checkpoint goes. Fails without writing the compressed file when the final weights
    /// break their structure.
    pub fn finish(&self, cfg: &AdmmConfig, o: &Outcome) -> Result<()> {
        let r = &o.report;
        let report = r.to_json()?;
        self.write(REPORT, report.as_bytes())?;
        self.write(REPORT_MD, report::markdown(cfg, r).as_bytes())?;
        self.write_metrics(&o.epochs, &r.admm)?;
        self.write(
            RESIDUALS_CSV,
            report::residuals_csv(&o.residuals).as_bytes(),
        )?;
        self.plots(r, o)?;
        if r.structure_violations > 0 {
            bail!(
                "{} blocks of the final weights break their state; the compressed file was not written",
                r.structure_violations
            );
        }
        let path = self.file(COMPRESSED);
        o.file
            .write(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        self.write(COMPRESSED_PT, &o.model.torchscript()?)?;
        if let Some(vs) = o.model.var_store() {
            self.save_vars(FINAL, vs)?;
        }
        let config = self.read_text(CONFIG, "run config")?;
        let evidence = Finished {
            config_sha256: sha256_hex(&config),
            report_sha256: sha256_hex(report.as_bytes()),
        };
        self.write(
            FINISHED,
            serde_json::to_string_pretty(&evidence)?.as_bytes(),
        )?;
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
        plots::accuracy_plot(&self.file(ACCURACY_PNG), &points, &marks)?;
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
        let path = self.file(RESIDUALS_PNG);
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
        plots::block_states_plot(&self.file(BLOCK_STATES_PNG), &layers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(d: &Path, names: &[&str]) {
        for n in names {
            std::fs::write(d.join(n), n.as_bytes()).unwrap();
        }
    }

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn states_follow_the_files_and_the_evidence() {
        let t = tempfile::tempdir().unwrap();
        let d = RunDir::create(&t.path().join("run")).unwrap();
        let state = || d.contents().unwrap().state;
        assert_eq!(state(), State::Empty);
        touch(&d.path, &[REPORT_MD]);
        assert_eq!(state(), State::Other);
        touch(&d.path, &[CONFIG]);
        assert_eq!(state(), State::Started);
        // A report.json that nothing ties to this config: still started.
        touch(&d.path, &[REPORT]);
        assert_eq!(state(), State::Started);
        touch(&d.path, &[checkpoint::FILE]);
        assert_eq!(state(), State::Unfinished);
        let evidence = Finished {
            config_sha256: sha256_hex(CONFIG.as_bytes()),
            report_sha256: sha256_hex(REPORT.as_bytes()),
        };
        d.write(FINISHED, &serde_json::to_vec(&evidence).unwrap())
            .unwrap();
        assert_eq!(state(), State::Finished);
        // A new config beside the old report: the evidence no longer holds.
        d.write(CONFIG, b"rounds = 1\n").unwrap();
        assert_eq!(state(), State::Unfinished);
        std::fs::remove_file(d.checkpoint_path()).unwrap();
        assert_eq!(state(), State::Started);
    }

    #[test]
    fn a_new_run_needs_an_empty_folder_or_force_and_force_keeps_other_files() {
        let t = tempfile::tempdir().unwrap();
        let d = RunDir::create(t.path()).unwrap();
        d.start_new(false, None).unwrap();
        touch(t.path(), &["notes.txt", REPORT_MD, ".notes.txt.1.tmp"]);
        let e = format!("{:#}", d.start_new(false, None).unwrap_err());
        assert!(
            e.contains("is not empty (it holds .notes.txt.1.tmp, notes.txt, report.md)")
                && e.contains("(it replaces report.md and keeps .notes.txt.1.tmp, notes.txt)"),
            "{e}"
        );
        touch(t.path(), &[CONFIG, checkpoint::FILE, DENSE]);
        let e = format!("{:#}", d.start_new(false, None).unwrap_err());
        assert!(
            e.contains("holds an unfinished run: continue it with --resume"),
            "{e}"
        );
        // --force keeps other files and the new run's --init.
        d.start_new(true, Some(&t.path().join(DENSE))).unwrap();
        assert_eq!(
            names(t.path()),
            [".microunify.lock", ".notes.txt.1.tmp", DENSE, "notes.txt"]
        );
    }

    #[test]
    fn folders_and_links_with_our_names_are_refused_and_kept() {
        let t = tempfile::tempdir().unwrap();
        let d = RunDir::create(t.path()).unwrap();
        std::fs::create_dir(t.path().join(REPORT)).unwrap();
        let e = format!("{:#}", d.start_new(true, None).unwrap_err());
        assert!(
            e.ends_with(
                "report.json is a folder, where train-gpu keeps a file of its own: move it away"
            ),
            "{e}"
        );
        assert!(t.path().join(REPORT).is_dir());
    }

    #[test]
    fn a_second_holder_is_refused_and_stale_temps_go() {
        let t = tempfile::tempdir().unwrap();
        touch(
            t.path(),
            &[
                ".checkpoint.safetensors.4242.tmp",
                ".compressed.safetensors.4243.tmp",
                ".final.ot.17.Ab12Cd.tmp",
                ".notes.txt.1.tmp",
                "notes.txt",
            ],
        );
        let d = RunDir::lock(t.path()).unwrap();
        assert_eq!(
            names(t.path()),
            [".microunify.lock", ".notes.txt.1.tmp", "notes.txt"]
        );
        let e = RunDir::lock(t.path()).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "{} is in use by another process",
                t.path().display()
            )),
            "{e}"
        );
        let clone = d.clone();
        drop(d);
        assert!(RunDir::lock(t.path()).is_err(), "a clone still holds it");
        drop(clone);
        RunDir::lock(t.path()).unwrap();
    }
}
