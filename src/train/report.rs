//! What a run reports: `report.json` (a fixed set of keys), `report.md`, and the metrics
//! per epoch and per round as CSV.

use crate::train::config::{AdmmConfig, Task};
use serde::{Deserialize, Serialize};
use std::fmt::Write;

/// Block counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocks {
    pub dense: usize,
    pub unified: usize,
    pub pruned: usize,
}

/// One compressed layer in the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerReport {
    pub name: String,
    pub shape: Vec<usize>,
    pub block: String,
    pub dense: usize,
    pub unified: usize,
    pub pruned: usize,
    /// Storage as docs/METHOD.md §1 counts it.
    pub bits: u64,
    /// Compression ratio (32 bits per dense weight over `bits`).
    pub ratio: f64,
}

/// One ADMM round: ρ used in its W-step, and network-wide residuals after its Z-step:
/// primal `‖W − Z‖ / ‖W‖`, dual `ρ‖Z_k − Z_{k−1}‖` (all layers taken as one vector).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundReport {
    pub round: usize,
    pub rho: f64,
    pub primal: f64,
    pub dual: f64,
}

/// Wall seconds per phase. `dense`, `admm` and `retrain` exclude evaluation (`eval`);
/// `projection` is the GPU projection inside the ADMM phase (upload of W, the batched run,
/// read-back of Z and U), so `projection / admm` is its share of the ADMM phase.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub dense: f64,
    pub admm: f64,
    pub retrain: f64,
    pub eval: f64,
    pub projection: f64,
}

/// `report.json`: exactly these keys (accuracies in percent). For a reconstruction the three
/// scores are PSNRs in dB, and [`Report::to_json`] names them `*_psnr` instead.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub task: Task,
    /// Per-channel `[mean, std]` the images were normalised with (what the compressed
    /// model expects of its input).
    pub normalization: Vec<[f64; 2]>,
    /// The final model's mean task loss on the test set.
    pub final_loss: f64,
    pub dense_accuracy: f64,
    pub hard_projection_accuracy: f64,
    pub final_accuracy: f64,
    pub compression_ratio: f64,
    pub blocks: Blocks,
    pub layers: Vec<LayerReport>,
    pub admm: Vec<RoundReport>,
    pub structure_violations: usize,
    pub timings: Timings,
}

impl Report {
    /// `report.json`'s text.
    pub fn to_json(&self) -> serde_json::Result<String> {
        if self.task == Task::Classify {
            return serde_json::to_string_pretty(self);
        }
        let mut v = serde_json::to_value(self)?;
        if let Some(o) = v.as_object_mut() {
            for k in ["dense", "hard_projection", "final"] {
                if let Some(x) = o.remove(&format!("{k}_accuracy")) {
                    o.insert(format!("{k}_psnr"), x);
                }
            }
        }
        serde_json::to_string_pretty(&v)
    }
}

/// Per-layer residuals of one round (same definitions as [`RoundReport`], per layer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerResiduals {
    pub round: usize,
    pub layer: String,
    pub primal: f64,
    pub dual: f64,
}

/// The phases of docs/METHOD.md §3 that train.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Dense,
    Admm,
    Retrain,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Dense => "dense",
            Phase::Admm => "admm",
            Phase::Retrain => "retrain",
        }
    }
}

/// One training epoch (W-step epochs of ADMM included).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based, counted across the run.
    pub epoch: usize,
    pub phase: Phase,
    /// 1-based within the phase.
    pub phase_epoch: usize,
    pub lr: f64,
    /// ρ of the W-step (ADMM epochs only).
    pub rho: Option<f64>,
    /// Mean task loss (without the ρ penalty).
    pub loss: f64,
    /// Test accuracy in percent, when evaluated after the epoch.
    pub test_accuracy: Option<f64>,
    /// Training wall seconds (evaluation excluded).
    pub seconds: f64,
}

fn opt(v: Option<f64>) -> String {
    v.map_or(String::new(), |v| format!("{v}"))
}

/// `epochs.csv`: one row per epoch.
pub fn epochs_csv(epochs: &[EpochRecord]) -> String {
    let mut s = String::from("epoch,phase,phase_epoch,lr,rho,loss,test_accuracy,seconds\n");
    for e in epochs {
        let _ = writeln!(
            s,
            "{},{},{},{:e},{},{},{},{:.3}",
            e.epoch,
            e.phase.name(),
            e.phase_epoch,
            e.lr,
            opt(e.rho),
            e.loss,
            opt(e.test_accuracy),
            e.seconds
        );
    }
    s
}

/// `rounds.csv`: one row per ADMM round (network-wide residuals).
pub fn rounds_csv(rounds: &[RoundReport]) -> String {
    let mut s = String::from("round,rho,primal,dual\n");
    for r in rounds {
        let _ = writeln!(s, "{},{:e},{:e},{:e}", r.round, r.rho, r.primal, r.dual);
    }
    s
}

/// `residuals.csv`: per round and layer.
pub fn residuals_csv(residuals: &[LayerResiduals]) -> String {
    let mut s = String::from("round,layer,primal,dual\n");
    for x in residuals {
        let _ = writeln!(s, "{},{},{:e},{:e}", x.round, x.layer, x.primal, x.dual);
    }
    s
}

/// "P pruned, U unified, D dense (x% pruned or unified)", for the console and report.md.
pub fn blocks_summary(b: &Blocks) -> String {
    let total = (b.dense + b.unified + b.pruned).max(1) as f64;
    format!(
        "{} pruned, {} unified, {} dense ({:.1}% pruned or unified)",
        b.pruned,
        b.unified,
        b.dense,
        100.0 * (b.pruned + b.unified) as f64 / total
    )
}

/// A human-readable summary of the run (`report.md`).
pub fn markdown(cfg: &AdmmConfig, r: &Report) -> String {
    let t = &r.timings;
    let mut s = format!(
        "# train-gpu run\n\n{:?}, block {}, {} ADMM rounds of {} epoch(s) (ρ₀ {}, γ {}, ρ_max {}), \
         {} dense and {} retraining epochs, {:?} lr {} ({:?} in the dense and retraining phases, \
         {:?} over ADMM), batch {}, seed {}{}.\n\n\
         | | accuracy (%) |\n| --- | --- |\n| dense | {:.2} |\n| hard projection | {:.2} |\n\
         | final | {:.2} |\n\n\
         Compression {:.1}× (docs/METHOD.md §1 bits); blocks {}; structure violations {}.\n\n\
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
        cfg.optimizer,
        cfg.lr,
        cfg.schedule,
        cfg.admm_schedule,
        cfg.batch,
        cfg.seed,
        cfg.init.as_ref().map_or(String::new(), |p| format!(
            ", starting from {}",
            p.display()
        )),
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
