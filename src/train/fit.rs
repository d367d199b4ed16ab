//! One epoch of training on the task loss plus an optional extra term (ADMM's ρ penalty),
//! with hooks around each optimizer step, and evaluation.

use crate::train::data::TensorSet;
use crate::train::models::Model;
use crate::train::optim::Optimizer;
use tch::Tensor;

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

/// Trains one epoch in the batch order seeded by `seed`. Returns the mean task loss.
pub fn train_epoch(
    model: &Model,
    opt: &mut Optimizer,
    set: &TensorSet,
    batch: i64,
    seed: i64,
    mut hooks: Hooks,
) -> f64 {
    let (mut total, mut count) = (0.0, 0i64);
    for (i, (x, y)) in set.batches(batch, seed).enumerate() {
        let loss = model.forward(&x).cross_entropy_for_logits(&y);
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
    total / count.max(1) as f64
}

/// Top-1 accuracy in percent.
pub fn evaluate(model: &Model, set: &TensorSet, batch: i64) -> f64 {
    let correct: i64 = tch::no_grad(|| {
        (0..set.len())
            .step_by(batch as usize)
            .map(|start| {
                let n = batch.min(set.len() - start);
                let x = set.images.narrow(0, start, n);
                let y = set.labels.narrow(0, start, n);
                let pred = model.forward(&x).argmax(-1, false);
                i64::try_from(pred.eq_tensor(&y).sum(tch::Kind::Int64)).unwrap_or(0)
            })
            .sum()
    });
    100.0 * correct as f64 / set.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::load_mnist_dir;
    use crate::train::config::OptimizerKind;
    use crate::train::models::{ModelKind, build};

    #[test]
    fn a_short_run_learns_mnist() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/mnist");
        let (train, test) = load_mnist_dir(&dir).unwrap();
        let device = tch::Device::Cpu;
        let train = TensorSet::new(&train, device).take(3000);
        let test = TensorSet::new(&test, device).take(1000);
        let (vs, model) = build(ModelKind::Lenet5, device, 1);
        let mut opt = Optimizer::new(
            OptimizerKind::Adam,
            vs.variables().into_iter().collect(),
            1e-3,
            0.0,
        );
        let before = evaluate(&model, &test, 500);
        let loss = train_epoch(&model, &mut opt, &train, 64, 1, Hooks::default());
        let after = evaluate(&model, &test, 500);
        // One epoch on 3k images: chance is 10%, LeNet-5 reaches ~90% here.
        assert!(
            loss.is_finite() && after > 80.0 && after > before,
            "{before} -> {after} (loss {loss})"
        );
    }
}
