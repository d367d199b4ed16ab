//! One epoch of training on the task loss plus an optional extra term (ADMM's ρ penalty),
//! with hooks around each optimizer step, and evaluation.

use crate::train::config::Task;
use crate::train::data::TensorSet;
use crate::train::network::Model;
use crate::train::optim::Optimizer;
use anyhow::Result;
use tch::{Kind, Tensor};

/// What an epoch does besides the task loss's gradient step. All optional.
#[derive(Default)]
pub struct Hooks<'a> {
    /// Added to every batch's loss (e.g. Σ ρ/2‖W − Z + U‖²).
    pub penalty: Option<Box<dyn Fn() -> Tensor + 'a>>,
    /// After the backward pass (it may rewrite gradients, e.g. project them onto a
    /// structure).
    pub before_step: Option<Box<dyn FnMut() + 'a>>,
    /// After the update (e.g. re-imposing a constraint on the weights).
    pub after_step: Option<Box<dyn FnMut() + 'a>>,
    /// After each batch: how many are done in this epoch, and the batch's task loss.
    pub on_batch: Option<Box<dyn FnMut(usize, f64) + 'a>>,
}

/// The task loss of a batch: cross-entropy of the logits against the labels, or the mean
/// squared error of the reconstruction against the input.
fn task_loss(task: Task, out: &Tensor, x: &Tensor, y: &Tensor) -> Tensor {
    match task {
        Task::Classify => out.cross_entropy_for_logits(y),
        Task::Reconstruct => out.mse_loss(x, tch::Reduction::Mean),
    }
}

/// Trains one epoch in the batch order seeded by `seed`, the model in training mode.
/// Returns the mean task loss.
pub fn train_epoch(
    model: &Model,
    task: Task,
    opt: &mut Optimizer,
    set: &TensorSet,
    batch: i64,
    seed: i64,
    mut hooks: Hooks,
) -> Result<f64> {
    let (mut total, mut count) = (0.0, 0i64);
    for (i, (x, y)) in set.batches(batch, seed).enumerate() {
        let out = model.forward_t(&x, true)?;
        let loss = task_loss(task, &out, &x, &y);
        let n = y.size()[0];
        let value = f64::try_from(&loss).unwrap_or(f64::NAN);
        total += value * n as f64;
        count += n;
        let objective = match &hooks.penalty {
            Some(p) => loss + p(),
            None => loss,
        };
        opt.zero_grad();
        objective.backward();
        if let Some(f) = &mut hooks.before_step {
            f();
        }
        opt.step();
        if let Some(f) = &mut hooks.after_step {
            f();
        }
        if let Some(f) = &mut hooks.on_batch {
            f(i + 1, value);
        }
    }
    Ok(total / count.max(1) as f64)
}

/// How well a model does on a set, in evaluation mode.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Score {
    /// Mean task loss per example.
    pub loss: f64,
    /// The task's measure: top-1 accuracy in percent (classification), or PSNR in dB
    /// (reconstruction), with the set's value range as the peak — for images scaled or
    /// normalised from 8 bits, the usual 0–255 PSNR, whatever the normalisation.
    pub value: f64,
}

/// Scores `model` on `set` in batches of `batch`.
pub fn evaluate(model: &Model, task: Task, set: &TensorSet, batch: i64) -> Result<Score> {
    tch::no_grad(|| {
        let (mut loss, mut correct, mut se) = (0.0, 0i64, 0.0);
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for start in (0..set.len()).step_by(batch.max(1) as usize) {
            let n = batch.min(set.len() - start);
            let x = set.images.narrow(0, start, n);
            let y = set.labels.narrow(0, start, n);
            let out = model.forward_t(&x, false)?;
            let l = f64::try_from(task_loss(task, &out, &x, &y)).unwrap_or(f64::NAN);
            loss += l * n as f64;
            match task {
                Task::Classify => {
                    let pred = out.argmax(-1, false);
                    correct += i64::try_from(pred.eq_tensor(&y).sum(Kind::Int64)).unwrap_or(0);
                }
                Task::Reconstruct => {
                    se += l * x.numel() as f64;
                    lo = lo.min(f64::try_from(x.min()).unwrap_or(f64::NAN));
                    hi = hi.max(f64::try_from(x.max()).unwrap_or(f64::NAN));
                }
            }
        }
        let n = set.len().max(1) as f64;
        let value = match task {
            Task::Classify => 100.0 * correct as f64 / n,
            Task::Reconstruct => {
                let mse = se / set.images.numel().max(1) as f64;
                let peak = (hi - lo).max(f64::MIN_POSITIVE);
                // A perfect reconstruction has no finite PSNR; cap it where f32 rounding lies.
                (10.0 * (peak * peak / mse).log10()).min(200.0)
            }
        };
        Ok(Score {
            loss: loss / n,
            value,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::load_mnist_dir;
    use crate::train::config::OptimizerKind;
    use crate::train::models::ModelKind;
    use crate::train::network::{LayerFilter, ModelSource};

    #[test]
    fn a_short_run_learns_mnist() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/mnist");
        let (train, test) = load_mnist_dir(&dir).unwrap();
        let device = tch::Device::Cpu;
        let train = TensorSet::new(&train, device).take(3000);
        let test = TensorSet::new(&test, device).take(1000);
        let source = ModelSource::Builtin(ModelKind::Lenet5);
        let model = Model::load(&source, &LayerFilter::default(), device, 1).unwrap();
        let mut opt = Optimizer::new(OptimizerKind::Adam, model.variables(), 1e-3, 0.0);
        let task = Task::Classify;
        let before = evaluate(&model, task, &test, 500).unwrap().value;
        let loss = train_epoch(&model, task, &mut opt, &train, 64, 1, Hooks::default()).unwrap();
        let after = evaluate(&model, task, &test, 500).unwrap().value;
        // One epoch on 3k images: chance is 10%, LeNet-5 reaches ~90% here.
        assert!(
            loss.is_finite() && after > 80.0 && after > before,
            "{before} -> {after} (loss {loss})"
        );
    }
}
