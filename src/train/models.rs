//! The networks of the ADMM pruning papers on MNIST: Caffe's LeNet-5 (conv 20, conv 50,
//! fc 500, fc 10; 431k weights) and LeNet-300-100. Each declares its [`Architecture`] (the
//! input it takes, its classes, its layers' weight shapes) as plain data, so that settings,
//! datasets and checkpoints are checked against it without building the model; the tch
//! model is built from the same declaration.

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

/// A compressible layer: its name and weight shape (PyTorch order: conv `[Cout, Cin, kh,
/// kw]`, linear `[out, in]`). Each has a bias of `[Cout]` / `[out]` beside it.
#[derive(Debug, PartialEq, Eq)]
pub struct LayerShape {
    pub name: &'static str,
    pub weight: &'static [usize],
}

/// What a network takes and has.
#[derive(Debug, PartialEq, Eq)]
pub struct Architecture {
    /// Input images: channels, height, width.
    pub input: [usize; 3],
    /// Output classes (labels 0 to `classes − 1`).
    pub classes: usize,
    /// The conv and linear layers, in forward order.
    pub layers: &'static [LayerShape],
}

const MNIST_INPUT: [usize; 3] = [1, 28, 28];
const MNIST_CLASSES: usize = 10;

const LENET5: Architecture = Architecture {
    input: MNIST_INPUT,
    classes: MNIST_CLASSES,
    layers: &[
        LayerShape {
            name: "conv1",
            weight: &[20, 1, 5, 5],
        },
        LayerShape {
            name: "conv2",
            weight: &[50, 20, 5, 5],
        },
        // 50 channels of 4×4 after two 5×5 convolutions and 2×2 poolings of 28×28.
        LayerShape {
            name: "fc1",
            weight: &[500, 800],
        },
        LayerShape {
            name: "fc2",
            weight: &[MNIST_CLASSES, 500],
        },
    ],
};

const LENET_300_100: Architecture = Architecture {
    input: MNIST_INPUT,
    classes: MNIST_CLASSES,
    layers: &[
        LayerShape {
            name: "fc1",
            weight: &[300, 784],
        },
        LayerShape {
            name: "fc2",
            weight: &[100, 300],
        },
        LayerShape {
            name: "fc3",
            weight: &[MNIST_CLASSES, 100],
        },
    ],
};

impl ModelKind {
    pub fn architecture(self) -> &'static Architecture {
        match self {
            ModelKind::Lenet5 => &LENET5,
            ModelKind::Lenet300100 => &LENET_300_100,
        }
    }
}

impl std::fmt::Display for ModelKind {
    /// The name the command line and the TOML file use (`lenet5`, `lenet-300-100`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use clap::ValueEnum;
        match self.to_possible_value() {
            Some(v) => f.write_str(v.get_name()),
            None => write!(f, "{self:?}"),
        }
    }
}

impl Architecture {
    /// The input as `C×H×W`.
    pub fn input_text(&self) -> String {
        let [c, h, w] = self.input;
        format!("{c}×{h}×{w}")
    }

    /// Every variable of the built model, `(name, shape)` sorted by name (the order of
    /// the optimizer and the checkpoint): `LAYER.weight` and `LAYER.bias`.
    pub fn variables(&self) -> Vec<(String, Vec<usize>)> {
        let mut v: Vec<(String, Vec<usize>)> = self
            .layers
            .iter()
            .flat_map(|l| {
                [
                    (format!("{}.weight", l.name), l.weight.to_vec()),
                    (format!("{}.bias", l.name), vec![l.weight[0]]),
                ]
            })
            .collect();
        v.sort();
        v
    }
}

/// PyTorch's default initialisation of conv and linear layers: weights and biases uniform
/// in ±1/√fan_in (`kaiming_uniform_(a=√5)`). tch's default (Kaiming with the ReLU gain,
/// ±√(6/fan_in), conv biases 0) is √6 times wider. The PyTorch reference run of the
/// LeNet-5 demo started from PyTorch's; here it raised dense LeNet-5 (6 epochs, seed 1) from 98.42% to
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

/// A classifier with named, compressible weight matrices, built from its [`Architecture`].
pub struct Model {
    pub kind: ModelKind,
    net: nn::Sequential,
    /// `(name, weight)` of every conv and linear layer, in forward order.
    weights: Vec<(String, Tensor)>,
}

/// A square conv layer of `l`'s weight shape.
fn conv_of(root: &nn::Path, l: &LayerShape) -> nn::Conv2D {
    conv(
        root / l.name,
        l.weight[1] as i64,
        l.weight[0] as i64,
        l.weight[2] as i64,
    )
}

fn linear_of(root: &nn::Path, l: &LayerShape) -> nn::Linear {
    linear(root / l.name, l.weight[1] as i64, l.weight[0] as i64)
}

impl Model {
    /// Builds the network's parameters under `vs`'s root.
    pub fn new(vs: &nn::VarStore, kind: ModelKind) -> Self {
        let root = vs.root();
        let arch = kind.architecture();
        let [c, h, w] = arch.input.map(|d| d as i64);
        let l = arch.layers;
        let mut weights = Vec::new();
        let net = match kind {
            ModelKind::Lenet5 => {
                let conv1 = conv_of(&root, &l[0]);
                let conv2 = conv_of(&root, &l[1]);
                let fc1 = linear_of(&root, &l[2]);
                let fc2 = linear_of(&root, &l[3]);
                for (l, w) in l.iter().zip([&conv1.ws, &conv2.ws, &fc1.ws, &fc2.ws]) {
                    weights.push((l.name.to_string(), w.shallow_clone()));
                }
                nn::seq()
                    .add_fn(move |x| x.view([-1, c, h, w]))
                    .add(conv1)
                    .add_fn(|x| x.max_pool2d_default(2))
                    .add(conv2)
                    .add_fn(|x| x.max_pool2d_default(2).flatten(1, -1))
                    .add(fc1)
                    .add_fn(|x| x.relu())
                    .add(fc2)
            }
            ModelKind::Lenet300100 => {
                let fc1 = linear_of(&root, &l[0]);
                let fc2 = linear_of(&root, &l[1]);
                let fc3 = linear_of(&root, &l[2]);
                for (l, w) in l.iter().zip([&fc1.ws, &fc2.ws, &fc3.ws]) {
                    weights.push((l.name.to_string(), w.shallow_clone()));
                }
                nn::seq()
                    .add_fn(move |x| x.view([-1, c * h * w]))
                    .add(fc1)
                    .add_fn(|x| x.relu())
                    .add(fc2)
                    .add_fn(|x| x.relu())
                    .add(fc3)
            }
        };
        Self { kind, net, weights }
    }

    /// Logits for a batch of images `[N, C, H, W]` of the architecture's input.
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

    /// The declared architecture is the built model: every variable with its shape, and
    /// a forward pass over the declared input giving one logit per class.
    #[test]
    fn the_declaration_is_the_model() {
        for kind in [ModelKind::Lenet5, ModelKind::Lenet300100] {
            let arch = kind.architecture();
            let (vs, m) = build(kind, Device::Cpu, 1);
            let mut vars: Vec<(String, Vec<usize>)> = vs
                .variables()
                .into_iter()
                .map(|(n, t)| (n, t.size().iter().map(|&d| d as usize).collect()))
                .collect();
            vars.sort();
            assert_eq!(vars, arch.variables(), "{kind}");
            let names: Vec<&str> = m.weights().iter().map(|(n, _)| n.as_str()).collect();
            let declared: Vec<&str> = arch.layers.iter().map(|l| l.name).collect();
            assert_eq!(names, declared);
            let mut input = vec![2i64];
            input.extend(arch.input.map(|d| d as i64));
            let y = m.forward(&Tensor::zeros(input, (tch::Kind::Float, Device::Cpu)));
            assert_eq!(y.size(), vec![2, arch.classes as i64]);
        }
        assert_eq!(ModelKind::Lenet5.to_string(), "lenet5");
        assert_eq!(ModelKind::Lenet300100.to_string(), "lenet-300-100");
    }

    #[test]
    fn lenet_300_100_shapes() {
        let (_vs, m) = build(ModelKind::Lenet300100, Device::Cpu, 1);
        assert_eq!(m.num_weights(), 784 * 300 + 300 * 100 + 100 * 10);
        let y = m.forward(&Tensor::zeros([2, 784], (tch::Kind::Float, Device::Cpu)));
        assert_eq!(y.size(), vec![2, 10]);
    }
}
