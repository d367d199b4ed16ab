//! The ADMM pipeline of docs/METHOD.md §3, end to end: dense training → ADMM rounds (W-step in
//! tch with the ρ penalty, Z- and U-step in one batched GPU projection over all layers) →
//! hard projection → masked retraining → evaluation, with a checkpoint after every epoch
//! and round from which an interrupted run resumes to the same end.
//!
//! Weights travel to and from the GPU in their flat PyTorch order, which is exactly the
//! channel-major GEMM view of docs/METHOD.md §1 (conv `[Cout, Cin, kh, kw]` → `Cout × Cin·kh·kw`).

use crate::block::{BlockState, LayerSpec};
use crate::format::CompressedFile;
use crate::fsio::kill_point;
use crate::gpu::Gpu;
use crate::gpu::projection::{NetworkProjection, Tensor as Buf};
use crate::train::checkpoint::{Checkpoint, HostTensor, Progress};
use crate::train::config::{AdmmConfig, layer_plan};
use crate::train::data::TensorSet;
use crate::train::export::export;
use crate::train::fit::{Hooks, evaluate, train_epoch};
use crate::train::mask::Mask;
use crate::train::network::Model;
use crate::train::optim::Optimizer;
use crate::train::report::{EpochRecord, LayerResiduals, Phase, Report, RoundReport};
use crate::train::tensors::{host, set_values};
use anyhow::{Context, Result, bail};
use std::time::Instant;
use tch::{Kind, Tensor};

/// What a run tells the outside while it works (progress bars, logs, checkpoint files).
/// Every method has a do-nothing default.
pub trait Observer {
    /// A training phase starts (or resumes): `epochs` in all, `batches` per epoch.
    fn phase(&mut self, _phase: Phase, _epochs: usize, _batches: usize) {}
    /// A mini-batch is done (`done` of this epoch), with its task loss.
    fn batch(&mut self, _done: usize, _loss: f64) {}
    fn epoch(&mut self, _e: &EpochRecord) {}
    fn round(&mut self, _r: &RoundReport) {}
    /// A milestone line (accuracies after a phase, the hard projection).
    fn note(&mut self, _line: &str) {}
    /// Dense training has ended (the model is the dense model), e.g. to save it for
    /// `--init`. Only called when this process trained dense epochs.
    fn dense_trained(&mut self, _model: &Model) -> Result<()> {
        Ok(())
    }
    /// A consistent state to save. An error stops the run after it.
    fn checkpoint(&mut self, _c: &Checkpoint) -> Result<()> {
        Ok(())
    }
}

/// An [`Observer`] that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

/// What a run produces.
pub struct Outcome {
    pub report: Report,
    pub epochs: Vec<EpochRecord>,
    pub residuals: Vec<LayerResiduals>,
    /// The final weights, compressed (biases pass through as F32).
    pub file: CompressedFile,
    /// The layers and their final block states.
    pub specs: Vec<LayerSpec>,
    pub states: Vec<Vec<BlockState>>,
    /// The trained model (final weights), e.g. to save it.
    pub model: Model,
    /// The test loss of the final model.
    pub final_loss: f64,
}

/// One flat vector per layer.
type PerLayer = Vec<Vec<f32>>;

fn norm(v: impl Iterator<Item = f64>) -> f64 {
    v.map(|x| x * x).sum::<f64>().sqrt()
}

/// Everything a run holds between steps.
struct Run<'a> {
    cfg: &'a AdmmConfig,
    gpu: &'a Gpu,
    train: &'a TensorSet,
    test: &'a TensorSet,
    model: Model,
    specs: Vec<LayerSpec>,
    net: NetworkProjection,
    /// The compressible weights (shallow handles into `vs`).
    weights: Vec<Tensor>,
    opt: Optimizer,
    p: Progress,
    z: PerLayer,
    /// The host's copy of the U the GPU holds (the W-step's target is Z − U), read in the
    /// same wait as Z after each projection and written back only on a resume.
    u: PerLayer,
    states: Vec<Vec<BlockState>>,
    signs: PerLayer,
    masks: Vec<Mask>,
}

impl Run<'_> {
    fn fresh_optimizer(&mut self) {
        self.opt = Optimizer::new(
            self.cfg.optimizer,
            self.model.variables(),
            self.cfg.lr,
            self.cfg.momentum,
        );
    }

    /// The test score (accuracy or PSNR) and loss.
    fn eval(&mut self) -> Result<crate::train::fit::Score> {
        let start = Instant::now();
        let score = evaluate(&self.model, self.cfg.task, self.test, 1000)?;
        self.p.timings.eval += start.elapsed().as_secs_f64();
        Ok(score)
    }

    fn weights_host(&self) -> Result<PerLayer> {
        self.weights.iter().map(host).collect()
    }

    /// One batched GPU projection of W (+ the U held on the GPU, updated in place), then
    /// `tensors` read back, all layers at once. With `rescale`, U is multiplied by it on
    /// the GPU before the readback, so the host's copy of U is the GPU's bit for bit.
    fn project(
        &mut self,
        w: &[Vec<f32>],
        rescale: Option<f32>,
        tensors: &[Buf],
    ) -> Result<Vec<PerLayer>> {
        let start = Instant::now();
        self.net.write_all(self.gpu, Buf::W, w)?;
        self.net.run(self.gpu).context("the GPU projection")?;
        if let Some(f) = rescale {
            self.net.scale_dual(self.gpu, f)?;
        }
        let out = self.net.read_tensors(self.gpu, tensors)?;
        self.p.timings.projection += start.elapsed().as_secs_f64();
        Ok(out)
    }

    /// Trains one epoch of `phase` at learning rate `lr` and records it.
    fn epoch(
        &mut self,
        phase: Phase,
        phase_epoch: usize,
        lr: f64,
        rho: Option<f64>,
        obs: &mut dyn Observer,
    ) -> Result<EpochRecord> {
        let epoch = self.p.epochs.len() + 1;
        let seed = self.cfg.epoch_seed(epoch);
        self.opt.set_lr(lr);
        let start = Instant::now();
        // The W-step's penalty Σ ρ/2‖W − Z + U‖², with Z − U a constant of the round.
        let targets: Vec<Tensor> = match rho {
            Some(_) => self
                .weights
                .iter()
                .zip(self.z.iter().zip(&self.u))
                .map(|(w, (z, u))| {
                    let d: Vec<f32> = z.iter().zip(u).map(|(z, u)| z - u).collect();
                    Tensor::from_slice(&d)
                        .view(w.size().as_slice())
                        .to_device(w.device())
                })
                .collect(),
            None => Vec::new(),
        };
        let weights = &self.weights;
        let masks = &self.masks;
        let retrain = phase == Phase::Retrain;
        let loss = train_epoch(
            &self.model,
            self.cfg.task,
            &mut self.opt,
            self.train,
            self.cfg.batch,
            seed,
            Hooks {
                penalty: rho.map(|rho| {
                    let f: Box<dyn Fn() -> Tensor> = Box::new(move || {
                        let terms: Vec<Tensor> = weights
                            .iter()
                            .zip(&targets)
                            .map(|(w, c)| (w - c).square().sum(Kind::Float))
                            .collect();
                        Tensor::stack(&terms, 0).sum(Kind::Float) * (rho / 2.0)
                    });
                    f
                }),
                before_step: retrain.then(|| {
                    let f: Box<dyn FnMut()> = Box::new(|| {
                        masks
                            .iter()
                            .zip(weights)
                            .for_each(|(m, w)| m.project_grad(w))
                    });
                    f
                }),
                after_step: retrain.then(|| {
                    let f: Box<dyn FnMut()> =
                        Box::new(|| masks.iter().zip(weights).for_each(|(m, w)| m.reimpose(w)));
                    f
                }),
                on_batch: Some(Box::new(|i, l| obs.batch(i, l))),
            },
        )?;
        let seconds = start.elapsed().as_secs_f64();
        if !loss.is_finite() {
            bail!(
                "{} epoch {phase_epoch} diverged (loss {loss}); try a smaller --lr",
                phase.name()
            );
        }
        let test_accuracy = match self.cfg.eval_every_epoch {
            true => Some(self.eval()?.value),
            false => None,
        };
        self.p.last_accuracy = test_accuracy;
        let rec = EpochRecord {
            epoch,
            phase,
            phase_epoch,
            lr,
            rho,
            loss,
            test_accuracy,
            seconds,
        };
        match phase {
            Phase::Dense => self.p.timings.dense += seconds,
            Phase::Admm => self.p.timings.admm += seconds,
            Phase::Retrain => self.p.timings.retrain += seconds,
        }
        self.p.epochs.push(rec.clone());
        obs.epoch(&rec);
        kill_point(&format!("epoch:{}", phase.name()));
        Ok(rec)
    }

    /// Everything needed to continue from here.
    fn checkpoint(&self) -> Result<Checkpoint> {
        let mut tensors = std::collections::BTreeMap::new();
        let mut put = |name: String, t: &Tensor| -> Result<()> {
            let shape = t.size().iter().map(|&d| d as usize).collect();
            tensors.insert(
                name,
                HostTensor {
                    shape,
                    data: host(t)?,
                },
            );
            Ok(())
        };
        for (name, t) in self.model.variables() {
            put(format!("var.{name}"), &t)?;
        }
        for (name, t) in self.opt.state() {
            put(format!("opt.{name}"), &t)?;
        }
        let mut states = std::collections::BTreeMap::new();
        for (l, spec) in self.specs.iter().enumerate() {
            let flat = |v: &[f32]| HostTensor {
                shape: vec![v.len()],
                data: v.to_vec(),
            };
            if let (Some(z), Some(u)) = (self.z.get(l), self.u.get(l)) {
                tensors.insert(format!("z.{}", spec.name), flat(z));
                tensors.insert(format!("u.{}", spec.name), flat(u));
            }
            if let (Some(s), Some(sign)) = (self.states.get(l), self.signs.get(l)) {
                states.insert(spec.name.clone(), s.clone());
                tensors.insert(format!("sign.{}", spec.name), flat(sign));
            }
        }
        Ok(Checkpoint {
            progress: Progress {
                optimizer_steps: self.opt.steps(),
                ..self.p.clone()
            },
            tensors,
            states,
            module: self.model.module_bytes()?,
        })
    }

    fn save(&self, obs: &mut dyn Observer) -> Result<()> {
        obs.checkpoint(&self.checkpoint()?)
    }

    /// Puts a checkpoint's tensors back: variables, optimizer moments, Z/U (and U on the
    /// GPU), states and signs. `c` has passed [`Checkpoint::check_against`] for this run.
    fn restore(&mut self, c: &Checkpoint) -> Result<()> {
        for (name, t) in self.model.variables() {
            set_values(&t, &c.tensor(&format!("var.{name}"))?.data)?;
        }
        let get = |k: &str| {
            c.tensors.get(&format!("opt.{k}")).map(|h| {
                let shape: Vec<i64> = h.shape.iter().map(|&d| d as i64).collect();
                Tensor::from_slice(&h.data).view(shape.as_slice())
            })
        };
        self.opt.load_state(&get, c.progress.optimizer_steps)?;
        if c.progress.rounds_done > 0 && !c.progress.projected {
            for spec in &self.specs {
                self.z
                    .push(c.tensor(&format!("z.{}", spec.name))?.data.clone());
                self.u
                    .push(c.tensor(&format!("u.{}", spec.name))?.data.clone());
            }
            self.net.write_all(self.gpu, Buf::U, &self.u)?;
        }
        if c.progress.projected {
            for (l, spec) in self.specs.iter().enumerate() {
                let Some(s) = c.states.get(&spec.name) else {
                    bail!("the checkpoint has no block states for layer {}", spec.name);
                };
                let sign = c.tensor(&format!("sign.{}", spec.name))?.data.clone();
                let device = self.weights[l].device();
                self.masks.push(Mask::new(spec, s, &sign, device));
                self.states.push(s.clone());
                self.signs.push(sign);
            }
        }
        Ok(())
    }
}

/// `--init` must name a file (checked before a run starts any work).
pub fn check_init(path: &std::path::Path) -> Result<()> {
    if !path.is_file() {
        bail!("--init {}: no such file", path.display());
    }
    Ok(())
}

/// The network of a run: from the checkpoint's copy of a TorchScript module when resuming
/// (it carries the buffers, e.g. BatchNorm statistics), else from the config's source, with
/// `--init` weights when given.
pub fn load_model(
    cfg: &AdmmConfig,
    device: tch::Device,
    resume: Option<&Checkpoint>,
) -> Result<Model> {
    let filter = cfg.filter();
    if let Some(bytes) = resume.and_then(|c| c.module.as_deref()) {
        return Model::from_module_bytes(bytes, &cfg.model.to_string(), &filter, device);
    }
    let mut model = Model::load(&cfg.model, &filter, device, cfg.seed)?;
    if let (Some(init), None) = (&cfg.init, resume) {
        check_init(init)?;
        model.load_init(init)?;
    }
    Ok(model)
}

/// Runs (or, given a checkpoint of the same config, continues) the pipeline of docs/METHOD.md
/// §3 on `train`/`test` (on their device), with the projection on `gpu`.
pub fn run(
    cfg: &AdmmConfig,
    gpu: &Gpu,
    train: &TensorSet,
    test: &TensorSet,
    resume: Option<&Checkpoint>,
    obs: &mut dyn Observer,
) -> Result<Outcome> {
    let device = train.images.device();
    let model = load_model(cfg, device, resume)?;
    model.check_data(cfg.task, train, "training")?;
    model.check_data(cfg.task, test, "test")?;
    if let Some(c) = resume {
        c.check_against(cfg, &model.info)
            .context("the checkpoint to resume from")?;
    }
    let (specs, mode) = layer_plan(cfg, &model.info)?;
    let net = NetworkProjection::new(gpu, specs.clone(), mode)
        .context("setting up the GPU projection")?;
    let weights = model.weights().iter().map(|w| w.shallow_clone()).collect();
    let opt = Optimizer::new(cfg.optimizer, model.variables(), cfg.lr, cfg.momentum);
    let mut r = Run {
        cfg,
        gpu,
        train,
        test,
        model,
        specs,
        net,
        weights,
        opt,
        p: Progress::new(cfg),
        z: Vec::new(),
        u: Vec::new(),
        states: Vec::new(),
        signs: Vec::new(),
        masks: Vec::new(),
    };
    if let Some(c) = resume {
        r.p = c.progress.clone();
        r.restore(c)?;
        obs.note(&format!(
            "resumed after {} epochs ({} dense, {} ADMM rounds, {} retraining)",
            r.p.epochs.len(),
            r.p.dense_done,
            r.p.rounds_done,
            r.p.retrain_done
        ));
    }
    let batches = (train.len() as usize).div_ceil(cfg.batch as usize);

    // 1. Dense training.
    if r.p.dense_done < cfg.dense_epochs {
        obs.phase(Phase::Dense, cfg.dense_epochs - r.p.dense_done, batches);
        while r.p.dense_done < cfg.dense_epochs {
            let e = r.p.dense_done;
            let lr = cfg.schedule.lr(cfg.lr, e, cfg.dense_epochs);
            r.epoch(Phase::Dense, e + 1, lr, None, obs)?;
            r.p.dense_done += 1;
            if r.p.dense_done == cfg.dense_epochs {
                obs.dense_trained(&r.model)?;
            }
            r.save(obs)?;
        }
    }
    if r.p.dense_accuracy.is_none() {
        let acc = match r.p.last_accuracy.take() {
            Some(a) => a,
            None => r.eval()?.value,
        };
        r.p.dense_accuracy = Some(acc);
        obs.note(&format!("dense {}", cfg.task.show(acc)));
    }

    // 2. ADMM. Z₀ = Π(W), U₀ = 0, a fresh optimizer. (Redone on a resume before round 1:
    // it depends on W alone.)
    if cfg.rounds > 0 && r.p.rounds_done == 0 && !r.p.projected {
        r.fresh_optimizer();
        r.net.zero_dual(gpu)?;
        let w = r.weights_host()?;
        r.z = r.project(&w, None, &[Buf::Z])?.remove(0);
        r.net.zero_dual(gpu)?;
        r.u = r.z.iter().map(|z| vec![0.0; z.len()]).collect();
    }
    if r.p.rounds_done < cfg.rounds && !r.p.projected {
        obs.phase(
            Phase::Admm,
            (cfg.rounds - r.p.rounds_done) * cfg.epochs_per_round,
            batches,
        );
    }
    while r.p.rounds_done < cfg.rounds && !r.p.projected {
        let k = r.p.rounds_done;
        let rho = r.p.rho;
        let n = cfg.rounds * cfg.epochs_per_round;
        for e in 0..cfg.epochs_per_round {
            let i = k * cfg.epochs_per_round + e;
            let lr = cfg.admm_schedule.lr(cfg.lr, i, n);
            r.epoch(Phase::Admm, i + 1, lr, Some(rho), obs)?;
        }
        // Z-step and U-step: one batched projection of W + U for all layers. U is the
        // scaled dual y/ρ: when ρ changes, y is kept and U rescaled (Boyd et al. 2011,
        // §3.4.1), on the GPU where U lives, before the host's copy is read.
        let next_rho = cfg.next_rho(rho);
        let rescale = (cfg.rescale_dual && next_rho != rho).then_some((rho / next_rho) as f32);
        let w = r.weights_host()?;
        let mut zu = r.project(&w, rescale, &[Buf::Z, Buf::U])?.into_iter();
        let (Some(z_new), Some(u_new)) = (zu.next(), zu.next()) else {
            bail!("the GPU projection returned fewer tensors than asked for");
        };
        kill_point("round");
        let (mut dwz, mut dw, mut dz) = (0.0, 0.0, 0.0);
        for (l, spec) in r.specs.iter().enumerate() {
            let a = norm(w[l].iter().zip(&z_new[l]).map(|(w, z)| f64::from(w - z)));
            let b = norm(w[l].iter().map(|&w| f64::from(w)));
            let c = norm(z_new[l].iter().zip(&r.z[l]).map(|(n, o)| f64::from(n - o)));
            r.p.residuals.push(LayerResiduals {
                round: k + 1,
                layer: spec.name.clone(),
                primal: a / b.max(f64::MIN_POSITIVE),
                dual: rho * c,
            });
            dwz += a * a;
            dw += b * b;
            dz += c * c;
        }
        let round = RoundReport {
            round: k + 1,
            rho,
            primal: dwz.sqrt() / dw.sqrt().max(f64::MIN_POSITIVE),
            dual: rho * dz.sqrt(),
        };
        obs.round(&round);
        r.p.rounds.push(round);
        (r.z, r.u) = (z_new, u_new);
        r.p.rho = next_rho;
        r.p.rounds_done += 1;
        r.save(obs)?;
    }
    // The projection's own time counts in the ADMM phase.
    if !r.p.projected {
        r.p.timings.admm += r.p.timings.projection;
    }

    // 3. Hard projection W = Π(W) (U = 0), then a fresh optimizer for the retraining.
    if !r.p.projected {
        r.net.zero_dual(gpu)?;
        r.net.write_all(gpu, Buf::W, &r.weights_host()?)?;
        r.net.run(gpu).context("the hard projection on the GPU")?;
        let projected = r.net.read_outputs(gpu)?;
        for (l, p) in projected.into_iter().enumerate() {
            set_values(&r.weights[l], &p.z)?;
            let mask = Mask::new(&r.specs[l], &p.states, &p.z, device);
            r.signs.push(host(&mask.sign)?);
            r.masks.push(mask);
            r.states.push(p.states);
        }
        (r.z, r.u) = (Vec::new(), Vec::new());
        let acc = r.eval()?.value;
        r.p.hard_projection_accuracy = Some(acc);
        r.p.last_accuracy = None;
        r.p.projected = true;
        r.fresh_optimizer();
        obs.note(&format!("hard projection {}", cfg.task.show(acc)));
        r.save(obs)?;
    }

    // 4. Masked retraining. Our choice: projected gradients rather than a re-parametrised
    // model. The unified block b is W_b = s ⊙ a_b, so ∂L/∂a_b = Σ s_i g_i; giving every
    // weight of the block the gradient s_i·Σ_j s_j g_j makes SGD on W exactly SGD on a_b,
    // and with a fresh Adam (moments start at 0) each weight's moments are s_i·m and v of
    // that same scalar gradient, so Adam on W is Adam on a_b too: all |w_i| of the block
    // move together and keep their signs. Pruned weights get zero gradients (Adam moves them
    // by 0); dense ones train freely. After each step `reimpose` clamps a_b ≥ 0 and removes
    // float rounding noise. This keeps the model's own layers (no custom forward).
    if r.p.retrain_done < cfg.retrain_epochs {
        obs.phase(
            Phase::Retrain,
            cfg.retrain_epochs - r.p.retrain_done,
            batches,
        );
    }
    while r.p.retrain_done < cfg.retrain_epochs {
        let e = r.p.retrain_done;
        let lr = cfg
            .schedule
            .lr(cfg.retrain_lr.unwrap_or(cfg.lr), e, cfg.retrain_epochs);
        r.epoch(Phase::Retrain, e + 1, lr, None, obs)?;
        r.p.retrain_done += 1;
        r.save(obs)?;
    }
    let last = r.p.last_accuracy.take();
    let score = r.eval()?;
    let final_accuracy = last.unwrap_or(score.value);
    obs.note(&format!("final {}", cfg.task.show(final_accuracy)));

    // 5. Structure check, report and the compressed file.
    let mut ex = export(cfg, &r.model, &r.specs, &r.weights, &r.states, &r.signs)?;
    // What `microunify infer` needs to run the file: the inputs' normalisation, and the
    // layer list where the network is one it can describe.
    ex.file.set_normalization(&train.normalization);
    if let Some(def) = r.model.network_def() {
        ex.file.set_network(&def);
    }
    let p = r.p;
    let report = Report {
        task: cfg.task,
        normalization: train.normalization.clone(),
        final_loss: score.loss,
        dense_accuracy: p.dense_accuracy.unwrap_or(f64::NAN),
        hard_projection_accuracy: p.hard_projection_accuracy.unwrap_or(f64::NAN),
        final_accuracy,
        compression_ratio: ex.compression_ratio,
        blocks: ex.blocks,
        layers: ex.layers,
        admm: p.rounds,
        structure_violations: ex.violations,
        timings: p.timings,
    };
    Ok(Outcome {
        report,
        epochs: p.epochs,
        residuals: p.residuals,
        file: ex.file,
        specs: r.specs,
        states: r.states,
        model: r.model,
        final_loss: score.loss,
    })
}
