//! Adam and SGD with momentum over a model's variables, with their state in plain tensors.
//!
//! tch's optimizers keep their moments inside libtorch where they cannot be saved, and a
//! resumed run must continue with exactly the moments it was interrupted with (`--resume`
//! ends where an uninterrupted run ends). The update rules are PyTorch's (`torch.optim.Adam`
//! without weight decay, `torch.optim.SGD` with momentum and no dampening).

use crate::train::config::OptimizerKind;
use anyhow::{Result, bail};
use tch::{Kind, Tensor};

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

pub struct Optimizer {
    kind: OptimizerKind,
    lr: f64,
    momentum: f64,
    /// `(name, variable)`, in a fixed order (the state is saved by name).
    params: Vec<(String, Tensor)>,
    /// Adam's first moments or SGD's momentum buffers, one per parameter.
    first: Vec<Tensor>,
    /// Adam's second moments (empty for SGD).
    second: Vec<Tensor>,
    /// Steps taken (Adam's bias correction).
    steps: i64,
}

impl Optimizer {
    /// A fresh optimizer (zero moments) over `params`.
    pub fn new(kind: OptimizerKind, params: Vec<(String, Tensor)>, lr: f64, momentum: f64) -> Self {
        let zeros = |p: &[(String, Tensor)]| p.iter().map(|(_, t)| t.zeros_like()).collect();
        let first = zeros(&params);
        let second = match kind {
            OptimizerKind::Adam => zeros(&params),
            OptimizerKind::Sgd => Vec::new(),
        };
        Self {
            kind,
            lr,
            momentum,
            params,
            first,
            second,
            steps: 0,
        }
    }

    /// Steps taken since the optimizer was made (or as restored).
    pub fn steps(&self) -> i64 {
        self.steps
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// One update from the current gradients (parameters without a gradient stay put).
    pub fn step(&mut self) {
        self.steps += 1;
        let t = self.steps as f64;
        tch::no_grad(|| {
            for (i, (_, p)) in self.params.iter().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut p = p.shallow_clone();
                match self.kind {
                    OptimizerKind::Adam => {
                        let (m, v) = (&mut self.first[i], &mut self.second[i]);
                        let _ = m.g_mul_scalar_(BETA1).g_add_(&(&g * (1.0 - BETA1)));
                        let _ = v.g_mul_scalar_(BETA2).g_add_(&(g.square() * (1.0 - BETA2)));
                        let bc1 = 1.0 - BETA1.powf(t);
                        let bc2 = 1.0 - BETA2.powf(t);
                        let denom = v.sqrt() / bc2.sqrt() + EPS;
                        let _ = p.g_sub_(&(&*m / denom * (self.lr / bc1)));
                    }
                    OptimizerKind::Sgd => {
                        let b = &mut self.first[i];
                        let _ = b.g_mul_scalar_(self.momentum).g_add_(&g);
                        let _ = p.g_sub_(&(&*b * self.lr));
                    }
                }
            }
        });
    }

    /// The state as named tensors (`first.NAME`, `second.NAME`); see [`Optimizer::steps`].
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((format!("first.{name}"), self.first[i].shallow_clone()));
            if let Some(v) = self.second.get(i) {
                out.push((format!("second.{name}"), v.shallow_clone()));
            }
        }
        out
    }

    /// Restores a state saved by [`Optimizer::state`]; every tensor must be present with
    /// its parameter's shape.
    pub fn load_state(&mut self, get: &dyn Fn(&str) -> Option<Tensor>, steps: i64) -> Result<()> {
        for (i, (name, p)) in self.params.iter().enumerate() {
            let take = |key: String, into: &mut Tensor| -> Result<()> {
                let Some(t) = get(&key) else {
                    bail!("optimizer state {key:?} is missing");
                };
                if t.size() != p.size() {
                    bail!(
                        "optimizer state {key:?} has shape {:?}, its parameter {:?}",
                        t.size(),
                        p.size()
                    );
                }
                *into = t.to_kind(Kind::Float).to_device(p.device());
                Ok(())
            };
            take(format!("first.{name}"), &mut self.first[i])?;
            if self.kind == OptimizerKind::Adam {
                take(format!("second.{name}"), &mut self.second[i])?;
            }
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;
    use tch::nn::{self, Module, OptimizerConfig};

    /// The same model trained by tch's (libtorch's) Adam/SGD and by ours ends in the same
    /// place: the update rules are PyTorch's.
    #[test]
    fn matches_libtorch() {
        for kind in [OptimizerKind::Adam, OptimizerKind::Sgd] {
            let run = |ours: bool| -> Vec<f32> {
                tch::manual_seed(7);
                let vs = nn::VarStore::new(Device::Cpu);
                let lin = nn::linear(vs.root(), 6, 3, Default::default());
                let x = Tensor::randn([32, 6], (Kind::Float, Device::Cpu));
                let y = Tensor::randn([32, 3], (Kind::Float, Device::Cpu));
                let loss = || (lin.forward(&x) - &y).square().mean(Kind::Float);
                if ours {
                    let mut params = vs.variables().into_iter().collect::<Vec<_>>();
                    params.sort_by(|a, b| a.0.cmp(&b.0));
                    let mut opt = Optimizer::new(kind, params, 0.01, 0.9);
                    for _ in 0..20 {
                        opt.zero_grad();
                        loss().backward();
                        opt.step();
                    }
                } else {
                    let mut opt = match kind {
                        OptimizerKind::Adam => nn::Adam::default().build(&vs, 0.01),
                        OptimizerKind::Sgd => nn::Sgd {
                            momentum: 0.9,
                            ..Default::default()
                        }
                        .build(&vs, 0.01),
                    }
                    .unwrap();
                    for _ in 0..20 {
                        opt.zero_grad();
                        loss().backward();
                        opt.step();
                    }
                }
                Vec::<f32>::try_from(&lin.ws.flatten(0, -1)).unwrap()
            };
            let (a, b) = (run(true), run(false));
            for (a, b) in a.iter().zip(&b) {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{kind:?}: {a} vs {b}"
                );
            }
        }
    }
}
