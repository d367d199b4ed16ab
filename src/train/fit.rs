//! One epoch of SGD/Adam on the task loss plus an optional extra term (ADMM's ρ penalty),
//! and evaluation.

use crate::train::data::TensorSet;
use crate::train::models::Model;
use tch::{Tensor, nn};

/// Trains one epoch; `extra()` is added to every batch's loss (e.g. Σ ρ/2‖W − Z + U‖²).
/// Returns the mean task loss.
pub fn train_epoch(
    model: &Model,
    opt: &mut nn::Optimizer,
    set: &TensorSet,
    batch: i64,
    seed: i64,
    extra: impl Fn() -> Option<Tensor>,
) -> f64 {
    train_epoch_hooked(model, opt, set, batch, seed, extra, || {}, || {})
}

/// [`train_epoch`] with two hooks around every optimizer step: `before_step` runs after the
/// backward pass (it may rewrite gradients, e.g. project them onto a structure) and
/// `after_step` after the update (e.g. a projection of the weights onto a constraint).
#[allow(clippy::too_many_arguments)]
pub fn train_epoch_hooked(
    model: &Model,
    opt: &mut nn::Optimizer,
    set: &TensorSet,
    batch: i64,
    seed: i64,
    extra: impl Fn() -> Option<Tensor>,
    mut before_step: impl FnMut(),
    mut after_step: impl FnMut(),
) -> f64 {
    let (mut total, mut count) = (0.0, 0i64);
    for (x, y) in set.batches(batch, seed) {
        let loss = model.forward(&x).cross_entropy_for_logits(&y);
        let n = y.size()[0];
        total += f64::try_from(&loss).unwrap_or(f64::NAN) * n as f64;
        count += n;
        let objective = match extra() {
            Some(e) => loss + e,
            None => loss,
        };
        opt.zero_grad();
        objective.backward();
        before_step();
        opt.step();
        after_step();
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
    use crate::train::models::{ModelKind, build};
    use tch::nn::OptimizerConfig;

    #[test]
    fn a_short_run_learns_mnist() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/mnist");
        let (train, test) = load_mnist_dir(&dir).unwrap();
        let device = tch::Device::Cpu;
        let train = TensorSet::new(&train, device).take(3000);
        let test = TensorSet::new(&test, device).take(1000);
        let (vs, model) = build(ModelKind::Lenet5, device, 1);
        let mut opt = nn::Adam::default().build(&vs, 1e-3).unwrap();
        let before = evaluate(&model, &test, 500);
        let loss = train_epoch(&model, &mut opt, &train, 64, 1, || None);
        let after = evaluate(&model, &test, 500);
        // One epoch on 3k images: chance is 10%, LeNet-5 reaches ~90% here.
        assert!(
            loss.is_finite() && after > 80.0 && after > before,
            "{before} -> {after} (loss {loss})"
        );
    }
}
