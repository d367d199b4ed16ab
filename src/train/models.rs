//! The networks of the ADMM pruning papers on MNIST: Caffe's LeNet-5 (conv 20, conv 50,
//! fc 500, fc 10; 431k weights) and LeNet-300-100. Their conv and linear weights are the
//! tensors the projection compresses.

use tch::nn::{self, Module};
use tch::{Device, Tensor};

/// Which network.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    Lenet5,
    #[value(name = "lenet-300-100")]
    #[serde(rename = "lenet-300-100")]
    Lenet300100,
}

/// PyTorch's default initialisation of conv and linear layers: weights and biases uniform
/// in ±1/√fan_in (`kaiming_uniform_(a=√5)`). tch's default (Kaiming with the ReLU gain,
/// ±√(6/fan_in), conv biases 0) is √6 times wider. The PyTorch reference run of issue 4
/// started from PyTorch's; here it raised dense LeNet-5 (6 epochs, seed 1) from 98.42% to
/// 98.75% test accuracy.
fn torch_default(fan_in: i64) -> (nn::Init, nn::Init) {
    let b = 1.0 / (fan_in as f64).sqrt();
    let u = nn::Init::Uniform { lo: -b, up: b };
    (u, u)
}

fn conv(p: nn::Path, cin: i64, cout: i64, k: i64) -> nn::Conv2D {
    let (ws_init, bs_init) = torch_default(cin * k * k);
    let cfg = nn::ConvConfig {
        ws_init,
        bs_init,
        ..Default::default()
    };
    nn::conv2d(p, cin, cout, k, cfg)
}

fn linear(p: nn::Path, cin: i64, cout: i64) -> nn::Linear {
    let (ws_init, bs_init) = torch_default(cin);
    let cfg = nn::LinearConfig {
        ws_init,
        bs_init: Some(bs_init),
        bias: true,
    };
    nn::linear(p, cin, cout, cfg)
}

/// A classifier over 1×28×28 images with named, compressible weight matrices.
pub struct Model {
    pub kind: ModelKind,
    net: nn::Sequential,
    /// `(name, weight)` of every conv and linear layer, in forward order.
    weights: Vec<(String, Tensor)>,
}

impl Model {
    /// Builds the network's parameters under `vs`'s root.
    pub fn new(vs: &nn::VarStore, kind: ModelKind) -> Self {
        let root = vs.root();
        let mut weights = Vec::new();
        let net = match kind {
            ModelKind::Lenet5 => {
                let conv1 = conv(&root / "conv1", 1, 20, 5);
                let conv2 = conv(&root / "conv2", 20, 50, 5);
                let fc1 = linear(&root / "fc1", 800, 500);
                let fc2 = linear(&root / "fc2", 500, 10);
                for (n, w) in [
                    ("conv1", &conv1.ws),
                    ("conv2", &conv2.ws),
                    ("fc1", &fc1.ws),
                    ("fc2", &fc2.ws),
                ] {
                    weights.push((n.to_string(), w.shallow_clone()));
                }
                nn::seq()
                    .add_fn(|x| x.view([-1, 1, 28, 28]))
                    .add(conv1)
                    .add_fn(|x| x.max_pool2d_default(2))
                    .add(conv2)
                    .add_fn(|x| x.max_pool2d_default(2).flatten(1, -1))
                    .add(fc1)
                    .add_fn(|x| x.relu())
                    .add(fc2)
            }
            ModelKind::Lenet300100 => {
                let fc1 = linear(&root / "fc1", 784, 300);
                let fc2 = linear(&root / "fc2", 300, 100);
                let fc3 = linear(&root / "fc3", 100, 10);
                for (n, w) in [("fc1", &fc1.ws), ("fc2", &fc2.ws), ("fc3", &fc3.ws)] {
                    weights.push((n.to_string(), w.shallow_clone()));
                }
                nn::seq()
                    .add_fn(|x| x.view([-1, 784]))
                    .add(fc1)
                    .add_fn(|x| x.relu())
                    .add(fc2)
                    .add_fn(|x| x.relu())
                    .add(fc3)
            }
        };
        Self { kind, net, weights }
    }

    /// Logits for a batch of images `[N, 1, 28, 28]` (or `[N, 784]`).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.net.forward(x)
    }

    /// The compressible weights (shallow handles sharing storage with the VarStore).
    pub fn weights(&self) -> &[(String, Tensor)] {
        &self.weights
    }

    /// Total number of compressible weights.
    pub fn num_weights(&self) -> i64 {
        self.weights.iter().map(|(_, w)| w.numel() as i64).sum()
    }
}

/// A fresh model on `device` with a seeded initialisation.
pub fn build(kind: ModelKind, device: Device, seed: i64) -> (nn::VarStore, Model) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(device);
    let model = Model::new(&vs, kind);
    (vs, model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenet5_has_the_caffe_shapes() {
        let (_vs, m) = build(ModelKind::Lenet5, Device::Cpu, 1);
        let shapes: Vec<Vec<i64>> = m.weights().iter().map(|(_, w)| w.size()).collect();
        assert_eq!(
            shapes,
            vec![
                vec![20, 1, 5, 5],
                vec![50, 20, 5, 5],
                vec![500, 800],
                vec![10, 500]
            ]
        );
        assert_eq!(m.num_weights(), 430_500);
        let y = m.forward(&Tensor::zeros(
            [3, 1, 28, 28],
            (tch::Kind::Float, Device::Cpu),
        ));
        assert_eq!(y.size(), vec![3, 10]);
    }

    #[test]
    fn lenet_300_100_shapes() {
        let (_vs, m) = build(ModelKind::Lenet300100, Device::Cpu, 1);
        assert_eq!(m.num_weights(), 784 * 300 + 300 * 100 + 100 * 10);
        let y = m.forward(&Tensor::zeros([2, 784], (tch::Kind::Float, Device::Cpu)));
        assert_eq!(y.size(), vec![2, 10]);
    }
}
