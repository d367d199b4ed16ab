//! The ADMM pipeline of METHOD.md §3, end to end: dense training → ADMM rounds (W-step in
//! tch with the ρ penalty, Z- and U-step in one batched GPU projection over all layers) →
//! hard projection → masked retraining → evaluation, with the report of the `train-gpu`
//! binary and the compressed file of the final weights.
//!
//! Weights travel to and from the GPU in their flat PyTorch order, which is exactly the
//! channel-major GEMM view of METHOD.md §1 (conv `[Cout, Cin, kh, kw]` → `Cout × Cin·kh·kw`).

use crate::block::{BlockShape, BlockState, ConvLayout, LayerSpec, Ratios, SelectionMode};
use crate::compressed::CompressedMatrix;
use crate::format::{CompressedFile, CompressedLayer, RawTensor};
use crate::gpu::Gpu;
use crate::gpu::projection::{NetworkProjection, Tensor as Buf};
use crate::train::data::TensorSet;
use crate::train::fit::{evaluate, train_epoch, train_epoch_hooked};
use crate::train::models::{Model, ModelKind, build};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tch::nn::OptimizerConfig;
use tch::{Device, Kind, Tensor, nn};

/// The largest block side: the sparse GEMM that runs the exported file is specialised up to
/// 32×32 blocks.
pub const MAX_BLOCK_SIDE: usize = 32;

/// Which blocks to prune and unify: per layer (every compressible layer named once), or one
/// pair ranked across the network (METHOD.md §2, global mode).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Targets {
    PerLayer(Vec<(String, Ratios)>),
    Global(Ratios),
}

/// Everything a run depends on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdmmConfig {
    pub model: ModelKind,
    pub block: BlockShape,
    pub targets: Targets,
    /// Initial penalty ρ₀.
    pub rho0: f64,
    /// Growth per round: ρ ← min(ρ·γ, ρ_max).
    pub gamma: f64,
    pub rho_max: f64,
    /// ADMM rounds; 0 is the one-shot baseline (hard projection of the dense weights, then
    /// the same retraining).
    pub rounds: usize,
    pub epochs_per_round: usize,
    /// Adam's learning rate (dense training, W-steps and retraining).
    pub lr: f64,
    pub dense_epochs: usize,
    pub retrain_epochs: usize,
    pub batch: i64,
    pub seed: i64,
    /// Evaluate on the test set after every epoch (progress only; costs eval time).
    pub eval_every_epoch: bool,
}

impl AdmmConfig {
    /// The demo of issue 4: LeNet-5, 4×4 blocks, per-layer targets conv1 0.2/0.4, conv2
    /// 0.7/0.2, fc1 0.95/0.04, fc2 0.5/0.3, 6 dense epochs, 10 rounds of 1 epoch with
    /// ρ₀ 5e-3 and γ 1.5, 3 retraining epochs, Adam 1e-3, batch 64, seed 1.
    pub fn demo() -> Self {
        let r = |p, u| Ratios { prune: p, unify: u };
        Self {
            model: ModelKind::Lenet5,
            block: BlockShape::default(),
            targets: Targets::PerLayer(vec![
                ("conv1".into(), r(0.2, 0.4)),
                ("conv2".into(), r(0.7, 0.2)),
                ("fc1".into(), r(0.95, 0.04)),
                ("fc2".into(), r(0.5, 0.3)),
            ]),
            rho0: 5e-3,
            gamma: 1.5,
            rho_max: 1.0,
            rounds: 10,
            epochs_per_round: 1,
            lr: 1e-3,
            dense_epochs: 6,
            retrain_epochs: 3,
            batch: 64,
            seed: 1,
            eval_every_epoch: true,
        }
    }

    /// Checks the scalar settings (ratios are checked against the model in [`layer_plan`]).
    pub fn check(&self) -> Result<()> {
        let pos = |name: &str, v: f64| -> Result<()> {
            if !(v.is_finite() && v > 0.0) {
                bail!("{name} must be a positive number, got {v}");
            }
            Ok(())
        };
        pos("rho0", self.rho0)?;
        pos("rho-max", self.rho_max)?;
        pos("lr", self.lr)?;
        if self.rho0 > self.rho_max {
            bail!(
                "rho0 {} exceeds rho-max {}: ρ starts at ρ₀ and only grows",
                self.rho0,
                self.rho_max
            );
        }
        if !(self.gamma.is_finite() && self.gamma >= 1.0) {
            bail!("gamma must be at least 1, got {}", self.gamma);
        }
        if self.batch < 1 {
            bail!("batch must be at least 1, got {}", self.batch);
        }
        if self.rounds > 0 && self.epochs_per_round == 0 {
            bail!("ADMM rounds need at least one epoch each");
        }
        let b = self.block;
        if b.rows > MAX_BLOCK_SIDE || b.cols > MAX_BLOCK_SIDE {
            bail!("block {b} is larger than allowed: at most {MAX_BLOCK_SIDE} per side");
        }
        match &self.targets {
            Targets::Global(r) => {
                Ratios::new(r.prune, r.unify, "--global")?;
            }
            Targets::PerLayer(v) => {
                for (name, r) in v {
                    Ratios::new(r.prune, r.unify, &format!("layer {name}"))?;
                }
            }
        }
        Ok(())
    }
}

/// The layers to project and their selection mode, checked against the model: every layer
/// named once in per-layer mode, no unknown names, ratios in range, and a block no larger
/// than any layer's GEMM view.
pub fn layer_plan(cfg: &AdmmConfig, model: &Model) -> Result<(Vec<LayerSpec>, SelectionMode)> {
    cfg.check()?;
    let mut specs = Vec::new();
    for (name, w) in model.weights() {
        let shape: Vec<usize> = w.size().iter().map(|&d| d as usize).collect();
        let spec = LayerSpec::new(name.clone(), &shape, cfg.block)?;
        let (v, b) = (spec.view, cfg.block);
        if b.rows > v.rows || b.cols > v.cols {
            bail!(
                "block {b} is larger than layer {name} allows: its GEMM view is {}x{}",
                v.rows,
                v.cols
            );
        }
        specs.push(spec);
    }
    let mode = match &cfg.targets {
        Targets::Global(r) => SelectionMode::Global(*r),
        Targets::PerLayer(given) => {
            let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            if let Some((n, _)) = given.iter().find(|(n, _)| !names.contains(&n.as_str())) {
                bail!(
                    "ratios name layer {n:?}, which {:?} does not have (layers: {})",
                    cfg.model,
                    names.join(", ")
                );
            }
            let mut ratios = Vec::new();
            for s in &specs {
                let mut found = given.iter().filter(|(n, _)| *n == s.name);
                let Some((_, r)) = found.next() else {
                    bail!(
                        "no ratios for layer {:?} (give every layer: {})",
                        s.name,
                        names.join(", ")
                    );
                };
                if found.next().is_some() {
                    bail!("layer {:?} is given ratios twice", s.name);
                }
                ratios.push(*r);
            }
            SelectionMode::PerLayer(ratios)
        }
    };
    Ok((specs, mode))
}

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
    /// Storage as METHOD.md §1 counts it.
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

/// `report.json` of issue 4 (accuracies in percent).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
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

/// Per-layer residuals of one round (same definitions as [`RoundReport`], per layer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerResiduals {
    pub round: usize,
    pub layer: String,
    pub primal: f64,
    pub dual: f64,
}

/// What a run produces.
pub struct Outcome {
    pub report: Report,
    pub residuals: Vec<LayerResiduals>,
    /// The final weights, compressed (biases pass through as F32).
    pub file: CompressedFile,
    /// The final block states per layer.
    pub states: Vec<Vec<BlockState>>,
    /// The trained model's variables (final weights and biases), e.g. for a tch checkpoint.
    pub vars: nn::VarStore,
}

/// One flat vector per layer.
type PerLayer = Vec<Vec<f32>>;

/// A weight tensor's values in flat (PyTorch) order.
fn host(t: &Tensor) -> Result<Vec<f32>> {
    Vec::<f32>::try_from(&t.detach().to_device(Device::Cpu).flatten(0, -1))
        .context("reading a weight tensor")
}

/// Overwrites a weight tensor in place (flat PyTorch order).
fn set_weights(w: &Tensor, v: &[f32]) -> Result<()> {
    let src = Tensor::from_slice(v).view(w.size().as_slice());
    tch::no_grad(|| w.shallow_clone().f_copy_(&src.to_device(w.device())))
        .context("writing a weight tensor")
}

fn norm(v: impl Iterator<Item = f64>) -> f64 {
    v.map(|x| x * x).sum::<f64>().sqrt()
}

/// The fixed structure of one layer during masked retraining, as tensors over its flat
/// weights: `free` is 1 on dense blocks, `sign` is ±1 on unified blocks (0 elsewhere),
/// `index` gives each weight its unified block's ordinal (`slots − 1`, a dump slot, for the
/// others) and `count` each unified block's size.
struct Mask {
    free: Tensor,
    sign: Tensor,
    index: Tensor,
    count: Tensor,
    slots: i64,
}

impl Mask {
    fn new(spec: &LayerSpec, states: &[BlockState], z: &[f32], device: Device) -> Self {
        let grid = spec.grid();
        let n = z.len();
        let unified = states.iter().filter(|s| **s == BlockState::Unified).count();
        let mut free = vec![0f32; n];
        let mut sign = vec![0f32; n];
        let mut index = vec![unified as i64; n];
        let mut count = vec![1f32; unified + 1];
        let mut u = 0;
        for (b, s) in states.iter().enumerate() {
            let ext = grid.extent(b);
            match s {
                BlockState::Dense => ext.indices(spec.view.cols).for_each(|i| free[i] = 1.0),
                BlockState::Pruned => {}
                BlockState::Unified => {
                    count[u] = ext.len() as f32;
                    for i in ext.indices(spec.view.cols) {
                        // Sign of 0 is +1 (METHOD.md §2), as in the projection.
                        sign[i] = if z[i] < 0.0 { -1.0 } else { 1.0 };
                        index[i] = u as i64;
                    }
                    u += 1;
                }
            }
        }
        let t = |v: &[f32]| Tensor::from_slice(v).to_device(device);
        Self {
            free: t(&free),
            sign: t(&sign),
            index: Tensor::from_slice(&index).to_device(device),
            count: t(&count),
            slots: unified as i64 + 1,
        }
    }

    /// Per unified block, `Σ_{i∈b} s_i x_i` (flat `x`; the dump slot collects the rest).
    fn block_sum(&self, x: &Tensor) -> Tensor {
        Tensor::zeros([self.slots], (Kind::Float, x.device())).scatter_add(
            0,
            &self.index,
            &(x * &self.sign),
        )
    }

    /// The gradient of the structured parametrisation, written back as a weight gradient:
    /// dense weights keep `g_i`, pruned ones get 0, and every weight of a unified block gets
    /// `s_i · Σ_j s_j g_j` — the sign times the gradient of the block's shared magnitude.
    fn project_grad(&self, w: &Tensor) {
        let mut g = w.grad();
        if !g.defined() {
            return;
        }
        tch::no_grad(|| {
            let flat = g.flatten(0, -1);
            let shared = self.block_sum(&flat).index_select(0, &self.index);
            let new = &flat * &self.free + &self.sign * shared;
            g.copy_(&new.view_as(&g));
        });
    }

    /// Re-imposes the structure on the weights after a step: pruned weights 0, each unified
    /// block `s_i · max(a, 0)` with `a` the block mean of `s_i w_i`. With the projected
    /// gradient and Adam every `s_i w_i` of a block already moves identically (up to float
    /// rounding of vectorised kernels), so this only removes rounding noise and enforces
    /// `a ≥ 0` (METHOD.md §1), i.e. it keeps the signs.
    fn reimpose(&self, w: &Tensor) {
        tch::no_grad(|| {
            let flat = w.flatten(0, -1);
            let a = (self.block_sum(&flat) / &self.count).relu();
            let new = &flat * &self.free + &self.sign * a.index_select(0, &self.index);
            w.shallow_clone().copy_(&new.view_as(w));
        });
    }
}

/// Blocks of `w` (flat, GEMM order) that break their state: a pruned block with a non-zero,
/// or a unified block whose weights do not share one magnitude or lost the sign pattern
/// `signs` (±1 per weight; 0 where the block is not unified).
pub fn structure_violations(
    spec: &LayerSpec,
    states: &[BlockState],
    w: &[f32],
    signs: &[f32],
) -> usize {
    let grid = spec.grid();
    states
        .iter()
        .enumerate()
        .filter(|(b, s)| {
            let ext = grid.extent(*b);
            let mut idx = ext.indices(spec.view.cols);
            match s {
                BlockState::Dense => false,
                BlockState::Pruned => idx.any(|i| w[i] != 0.0),
                BlockState::Unified => {
                    let first = ext
                        .indices(spec.view.cols)
                        .next()
                        .map_or(0.0, |i| w[i].abs());
                    idx.any(|i| w[i].abs() != first || (w[i] != 0.0 && w[i] * signs[i] < 0.0))
                }
            }
        })
        .count()
}

/// Runs the whole pipeline of METHOD.md §3 on `train`/`test` (on their device), with the
/// projection on `gpu`. `log` receives one line per epoch and per round.
pub fn run(
    cfg: &AdmmConfig,
    gpu: &Gpu,
    train: &TensorSet,
    test: &TensorSet,
    log: &mut dyn FnMut(&str),
) -> Result<Outcome> {
    let device = train.images.device();
    let (vs, model) = build(cfg.model, device, cfg.seed);
    let (specs, mode) = layer_plan(cfg, &model)?;
    let net = NetworkProjection::new(gpu, specs.clone(), mode)
        .context("setting up the GPU projection")?;
    let weights: Vec<Tensor> = model
        .weights()
        .iter()
        .map(|(_, w)| w.shallow_clone())
        .collect();
    let mut t = Timings::default();
    let eval_batch = 1000;
    let mut epoch_no = 0i64;
    let mut next_seed = || {
        epoch_no += 1;
        cfg.seed * 10_000 + epoch_no
    };
    let eval = |t: &mut Timings| {
        let start = Instant::now();
        let acc = evaluate(&model, test, eval_batch);
        t.eval += start.elapsed().as_secs_f64();
        acc
    };

    // 1. Dense training.
    let mut opt = nn::Adam::default().build(&vs, cfg.lr)?;
    // The accuracy of the last epoch's evaluation (so a phase's end is not evaluated twice).
    let mut last = None;
    for e in 0..cfg.dense_epochs {
        let start = Instant::now();
        let loss = train_epoch(&model, &mut opt, train, cfg.batch, next_seed(), || None);
        t.dense += start.elapsed().as_secs_f64();
        if !loss.is_finite() {
            bail!("dense training diverged (loss {loss}) in epoch {}", e + 1);
        }
        if cfg.eval_every_epoch {
            let acc = eval(&mut t);
            last = Some(acc);
            log(&format!(
                "dense epoch {}/{}: loss {loss:.4}, test {acc:.2}%",
                e + 1,
                cfg.dense_epochs
            ));
        }
    }
    let dense_accuracy = last.take().unwrap_or_else(|| eval(&mut t));
    log(&format!("dense accuracy {dense_accuracy:.2}%"));

    // 2. ADMM. Z₀ = Π(W), U₀ = 0.
    let admm_start = Instant::now();
    let eval_before_admm = t.eval;
    let project = |t: &mut Timings, w: &[Vec<f32>]| -> Result<(PerLayer, PerLayer)> {
        let start = Instant::now();
        for (l, w) in w.iter().enumerate() {
            net.write(gpu, Buf::W, l, w)?;
        }
        net.run(gpu)?;
        let mut z = Vec::new();
        let mut u = Vec::new();
        for l in 0..w.len() {
            z.push(net.read(gpu, Buf::Z, l)?);
            u.push(net.read(gpu, Buf::U, l)?);
        }
        t.projection += start.elapsed().as_secs_f64();
        Ok((z, u))
    };
    let w_host = |ws: &[Tensor]| ws.iter().map(host).collect::<Result<Vec<_>>>();
    // With no rounds this is the one-shot baseline: hard projection of the dense weights,
    // then the same retraining.
    let (mut z, mut u) = (Vec::new(), Vec::new());
    if cfg.rounds > 0 {
        net.zero_dual(gpu);
        z = project(&mut t, &w_host(&weights)?)?.0;
        net.zero_dual(gpu);
        u = z.iter().map(|z| vec![0.0; z.len()]).collect();
    }
    let mut rho = cfg.rho0;
    let mut rounds = Vec::new();
    let mut residuals = Vec::new();
    for k in 0..cfg.rounds {
        // W-step: the task loss plus Σ ρ/2‖W − Z + U‖², Z − U a constant.
        let targets: Vec<Tensor> = weights
            .iter()
            .zip(z.iter().zip(&u))
            .map(|(w, (z, u))| {
                let d: Vec<f32> = z.iter().zip(u).map(|(z, u)| z - u).collect();
                Tensor::from_slice(&d)
                    .view(w.size().as_slice())
                    .to_device(device)
            })
            .collect();
        let penalty = || {
            let terms: Vec<Tensor> = weights
                .iter()
                .zip(&targets)
                .map(|(w, c)| (w - c).square().sum(Kind::Float))
                .collect();
            Some(Tensor::stack(&terms, 0).sum(Kind::Float) * (rho / 2.0))
        };
        let mut loss = 0.0;
        for _ in 0..cfg.epochs_per_round {
            loss = train_epoch(&model, &mut opt, train, cfg.batch, next_seed(), penalty);
            if !loss.is_finite() {
                bail!("ADMM round {} diverged (loss {loss})", k + 1);
            }
        }
        // Z-step and U-step: one batched projection of W + U for all layers.
        let w = w_host(&weights)?;
        let (z_new, u_new) = project(&mut t, &w)?;
        let (mut dwz, mut dw, mut dz) = (0.0, 0.0, 0.0);
        for (l, spec) in specs.iter().enumerate() {
            let a = norm(w[l].iter().zip(&z_new[l]).map(|(w, z)| f64::from(w - z)));
            let b = norm(w[l].iter().map(|&w| f64::from(w)));
            let c = norm(z_new[l].iter().zip(&z[l]).map(|(n, o)| f64::from(n - o)));
            residuals.push(LayerResiduals {
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
        let acc = if cfg.eval_every_epoch {
            format!(", test {:.2}%", eval(&mut t))
        } else {
            String::new()
        };
        log(&format!(
            "ADMM round {}/{}: rho {:.3e}, loss {loss:.4}, primal {:.4e}, dual {:.4e}{acc}",
            k + 1,
            cfg.rounds,
            round.rho,
            round.primal,
            round.dual
        ));
        rounds.push(round);
        (z, u) = (z_new, u_new);
        rho = (rho * cfg.gamma).min(cfg.rho_max);
    }
    t.admm = admm_start.elapsed().as_secs_f64() - (t.eval - eval_before_admm);

    // 3. Hard projection W = Π(W) (U = 0).
    net.zero_dual(gpu);
    for (l, w) in weights.iter().enumerate() {
        net.write(gpu, Buf::W, l, &host(w)?)?;
    }
    net.run(gpu)?;
    let mut states = Vec::new();
    let mut masks = Vec::new();
    let mut signs = Vec::new();
    for (l, (w, spec)) in weights.iter().zip(&specs).enumerate() {
        let p = net.read_layer(gpu, l)?;
        set_weights(w, &p.z)?;
        let mask = Mask::new(spec, &p.states, &p.z, device);
        signs.push(host(&mask.sign)?);
        masks.push(mask);
        states.push(p.states);
    }
    let hard_projection_accuracy = eval(&mut t);
    log(&format!(
        "hard projection accuracy {hard_projection_accuracy:.2}%"
    ));

    // 4. Masked retraining. Our choice: projected gradients rather than a re-parametrised
    // model. The unified block b is W_b = s ⊙ a_b, so ∂L/∂a_b = Σ s_i g_i; giving every
    // weight of the block the gradient s_i·Σ_j s_j g_j makes SGD on W exactly SGD on a_b,
    // and with a fresh Adam (moments start at 0) each weight's moments are s_i·m and v of
    // that same scalar gradient, so Adam on W is Adam on a_b too: all |w_i| of the block
    // move together and keep their signs. Pruned weights get zero gradients (Adam moves them
    // by 0); dense ones train freely. After each step `reimpose` clamps a_b ≥ 0 and removes
    // float rounding noise. This keeps the model's own layers (no custom forward).
    let retrain_start = Instant::now();
    let eval_before_retrain = t.eval;
    let mut opt = nn::Adam::default().build(&vs, cfg.lr)?;
    for e in 0..cfg.retrain_epochs {
        let loss = train_epoch_hooked(
            &model,
            &mut opt,
            train,
            cfg.batch,
            next_seed(),
            || None,
            || {
                masks
                    .iter()
                    .zip(&weights)
                    .for_each(|(m, w)| m.project_grad(w))
            },
            || masks.iter().zip(&weights).for_each(|(m, w)| m.reimpose(w)),
        );
        if !loss.is_finite() {
            bail!(
                "masked retraining diverged (loss {loss}) in epoch {}",
                e + 1
            );
        }
        if cfg.eval_every_epoch {
            let acc = eval(&mut t);
            last = Some(acc);
            log(&format!(
                "retrain epoch {}/{}: loss {loss:.4}, test {acc:.2}%",
                e + 1,
                cfg.retrain_epochs
            ));
        }
    }
    t.retrain = retrain_start.elapsed().as_secs_f64() - (t.eval - eval_before_retrain);
    let final_accuracy = last.take().unwrap_or_else(|| eval(&mut t));
    log(&format!("final accuracy {final_accuracy:.2}%"));

    // 5. Structure check, report and the compressed file.
    let mut violations = 0;
    let mut file = CompressedFile::default();
    let mut layers = Vec::new();
    let mut blocks = Blocks::default();
    let (mut bits, mut params) = (0u64, 0u64);
    for (l, (w, spec)) in weights.iter().zip(&specs).enumerate() {
        let v = host(w)?;
        let bad = structure_violations(spec, &states[l], &v, &signs[l]);
        violations += bad;
        let shape: Vec<usize> = w.size().iter().map(|&d| d as usize).collect();
        let m = if bad == 0 {
            CompressedMatrix::from_dense(spec.view, spec.block, &v, &states[l])
                .with_context(|| format!("compressing layer {}", spec.name))?
        } else {
            // Still report the layer; its compact form is not valid (callers must refuse
            // to write the file when `structure_violations` > 0).
            let mut p = CompressedMatrix::from_dense(
                spec.view,
                spec.block,
                &vec![0.0; v.len()],
                &vec![BlockState::Pruned; states[l].len()],
            )?;
            p.states = states[l].clone();
            p
        };
        let [d, un, pr] = m.counts();
        blocks.dense += d;
        blocks.unified += un;
        blocks.pruned += pr;
        bits += m.bits();
        params += spec.view.len() as u64;
        layers.push(LayerReport {
            name: spec.name.clone(),
            shape: shape.clone(),
            block: spec.block.to_string(),
            dense: d,
            unified: un,
            pruned: pr,
            bits: m.bits(),
            ratio: m.compression_ratio(),
        });
        file.layers.push(CompressedLayer::new(
            &spec.name,
            &shape,
            ConvLayout::ChannelMajor,
            m,
        )?);
    }
    let compressed: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    for (name, var) in vs.variables() {
        let layer = name.rsplit_once('.').map_or(name.as_str(), |(l, _)| l);
        if name.ends_with(".weight") && compressed.contains(&layer) {
            continue;
        }
        let data = host(&var)?;
        file.passthrough.insert(
            name,
            RawTensor {
                dtype: safetensors::Dtype::F32,
                shape: var.size().iter().map(|&d| d as usize).collect(),
                data: bytemuck::cast_slice(&data).to_vec(),
            },
        );
    }
    file.metadata.insert(
        "train_gpu.config".into(),
        serde_json::to_string(cfg).context("encoding the config")?,
    );
    let report = Report {
        dense_accuracy,
        hard_projection_accuracy,
        final_accuracy,
        compression_ratio: 32.0 * params as f64 / bits.max(1) as f64,
        blocks,
        layers,
        admm: rounds,
        structure_violations: violations,
        timings: t,
    };
    Ok(Outcome {
        report,
        residuals,
        file,
        states,
        vars: vs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::Module;

    fn demo_model() -> Model {
        build(ModelKind::Lenet5, Device::Cpu, 1).1
    }

    #[test]
    fn the_plan_checks_names_ratios_and_block_size() {
        let m = demo_model();
        let cfg = AdmmConfig::demo();
        let (specs, mode) = layer_plan(&cfg, &m).unwrap();
        assert_eq!(specs.len(), 4);
        assert!(matches!(mode, SelectionMode::PerLayer(ref r) if r.len() == 4));

        let mut c = cfg.clone();
        let Targets::PerLayer(v) = &mut c.targets else {
            unreachable!()
        };
        v[0].0 = "conv9".into();
        let e = layer_plan(&c, &m).unwrap_err().to_string();
        assert!(e.contains("conv9"), "{e}");

        let mut c = cfg.clone();
        let Targets::PerLayer(v) = &mut c.targets else {
            unreachable!()
        };
        v.pop();
        let e = layer_plan(&c, &m).unwrap_err().to_string();
        assert!(e.contains("no ratios for layer \"fc2\""), "{e}");

        let mut c = cfg.clone();
        c.block = BlockShape::new(16, 16).unwrap();
        let e = layer_plan(&c, &m).unwrap_err().to_string();
        assert!(e.contains("larger than layer fc2"), "{e}");

        let mut c = cfg.clone();
        c.targets = Targets::Global(Ratios {
            prune: 0.9,
            unify: 0.2,
        });
        let e = layer_plan(&c, &m).unwrap_err().to_string();
        assert!(e.contains("must not exceed 1"), "{e}");

        let mut c = cfg;
        c.rho0 = 2.0;
        assert!(c.check().unwrap_err().to_string().contains("rho-max"));
    }

    /// The projected gradient with Adam trains each unified block's shared magnitude: its
    /// weights keep one |w| and their signs without any re-imposition, pruned weights stay 0.
    #[test]
    fn projected_gradients_train_one_magnitude_per_block() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let lin = nn::linear(vs.root(), 8, 4, Default::default());
        let spec = LayerSpec::new("l", &[4, 8], BlockShape::new(2, 4).unwrap()).unwrap();
        let states = [
            BlockState::Dense,
            BlockState::Unified,
            BlockState::Pruned,
            BlockState::Unified,
        ];
        // A structured start: unified blocks ±0.3 / ±0.1, the pruned block 0.
        let mut w = host(&lin.ws).unwrap();
        let grid = spec.grid();
        for (b, a) in [(1, 0.3f32), (3, 0.1)] {
            for (k, i) in grid.extent(b).indices(8).enumerate() {
                w[i] = if k % 3 == 0 { -a } else { a };
            }
        }
        grid.extent(2).indices(8).for_each(|i| w[i] = 0.0);
        set_weights(&lin.ws, &w).unwrap();
        let mask = Mask::new(&spec, &states, &w, Device::Cpu);
        let signs = host(&mask.sign).unwrap();
        let x = Tensor::randn([16, 8], (Kind::Float, Device::Cpu));
        let y = Tensor::randn([16, 4], (Kind::Float, Device::Cpu));

        // The shared magnitude's gradient is Σ s_i g_i.
        let loss = (lin.forward(&x) - &y).square().mean(Kind::Float);
        loss.backward();
        let g = host(&lin.ws.grad()).unwrap();
        mask.project_grad(&lin.ws);
        let pg = host(&lin.ws.grad()).unwrap();
        let want: f32 = grid.extent(1).indices(8).map(|i| signs[i] * g[i]).sum();
        for i in grid.extent(1).indices(8) {
            assert!((pg[i] - signs[i] * want).abs() < 1e-6);
        }
        let _ = lin.ws.grad().zero_();

        let mut opt = nn::Adam::default().build(&vs, 1e-2).unwrap();
        for _ in 0..50 {
            let loss = (lin.forward(&x) - &y).square().mean(Kind::Float);
            opt.zero_grad();
            loss.backward();
            mask.project_grad(&lin.ws);
            opt.step();
        }
        let after = host(&lin.ws).unwrap();
        assert_ne!(after, w, "the weights trained");
        for b in [1, 3] {
            let idx: Vec<usize> = grid.extent(b).indices(8).collect();
            let a = after[idx[0]] * signs[idx[0]];
            // (Without the a ≥ 0 clamp of `reimpose`, a may cross zero: all signs flip.)
            let a0 = w[idx[0]].abs();
            assert!((a - a0).abs() > 1e-3, "block {b} did not move: {a0} -> {a}");
            for &i in &idx {
                let d = (after[i] * signs[i] - a).abs();
                assert!(d <= 1e-6 * a.abs(), "block {b}: {} vs {a}", after[i]);
            }
        }
        assert!(grid.extent(2).indices(8).all(|i| after[i] == 0.0));
        mask.reimpose(&lin.ws);
        let fixed = host(&lin.ws).unwrap();
        assert_eq!(structure_violations(&spec, &states, &fixed, &signs), 0);
        CompressedMatrix::from_dense(spec.view, spec.block, &fixed, &states).unwrap();
        let mut broken = fixed.clone();
        broken[grid.extent(2).indices(8).next().unwrap()] = 1e-3;
        broken[grid.extent(1).indices(8).nth(1).unwrap()] += 0.5;
        assert_eq!(structure_violations(&spec, &states, &broken, &signs), 2);
    }
}
