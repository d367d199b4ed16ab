//! The networks of the ADMM pruning papers on MNIST: Caffe's LeNet-5 (conv 20, conv 50,
//! fc 500, fc 10; 431k weights) and LeNet-300-100. Each declares its [`Architecture`] (the
//! input it takes, its classes, its layers' weight shapes) as plain data, so that settings,
//! datasets and checkpoints are checked against it without building the model; the tch
//! model is built from the same declaration.

use crate::infer::network::{LayerDef, NetworkDef, Sides};
use crate::train::network::{LayerFilter, LayerInfo, ModelInfo};
use crate::train::script::{saved_bytes, torch_message};
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

impl ModelKind {
    /// The description of the network, its layers chosen by `filter`.
    pub fn info(self, filter: &LayerFilter) -> anyhow::Result<ModelInfo> {
        let arch = self.architecture();
        let layers = arch
            .layers
            .iter()
            .map(|l| LayerInfo {
                name: l.name.to_string(),
                param: format!("{}.weight", l.name),
                shape: l.weight.to_vec(),
            })
            .collect();
        let label = self.to_string();
        Ok(ModelInfo {
            layers: filter.apply(&label, layers)?,
            label,
            variables: arch.variables(),
            input: Some(arch.input),
            classes: Some(arch.classes),
        })
    }
}

impl ModelKind {
    /// The layer list of the forward pass [`Builtin::new`] builds (`microunify infer`
    /// runs it from the compressed file's metadata); kept next to it so the two change
    /// together, and checked against it by the agreement test (tests/infer.rs).
    pub fn network(self) -> NetworkDef {
        let l = self.architecture().layers;
        let conv = |i: usize| LayerDef::Conv {
            weight: format!("{}.weight", l[i].name),
            bias: Some(format!("{}.bias", l[i].name)),
            stride: Sides::Both(1),
            padding: Sides::Both(0),
        };
        let linear = |i: usize| LayerDef::Linear {
            weight: format!("{}.weight", l[i].name),
            bias: Some(format!("{}.bias", l[i].name)),
        };
        let pool = || LayerDef::Maxpool {
            kernel: Sides::Both(2),
            stride: None,
            padding: Sides::Both(0),
        };
        let layer = match self {
            ModelKind::Lenet5 => vec![
                conv(0),
                pool(),
                conv(1),
                pool(),
                LayerDef::Flatten {},
                linear(2),
                LayerDef::Relu {},
                linear(3),
            ],
            ModelKind::Lenet300100 => vec![
                LayerDef::Flatten {},
                linear(0),
                LayerDef::Relu {},
                linear(1),
                LayerDef::Relu {},
                linear(2),
            ],
        };
        NetworkDef { layer }
    }
}

/// A built-in network with its variables in a tch `VarStore`.
pub struct Builtin {
    kind: ModelKind,
    vs: nn::VarStore,
    net: nn::Sequential,
    input: [i64; 3],
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

impl Builtin {
    /// A fresh network on `device` with a seeded initialisation.
    pub fn new(kind: ModelKind, device: Device, seed: i64) -> Self {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let arch = kind.architecture();
        let [c, h, w] = arch.input.map(|d| d as i64);
        let l = arch.layers;
        let net = match kind {
            ModelKind::Lenet5 => nn::seq()
                .add_fn(move |x| x.view([-1, c, h, w]))
                .add(conv_of(&root, &l[0]))
                .add_fn(|x| x.max_pool2d_default(2))
                .add(conv_of(&root, &l[1]))
                .add_fn(|x| x.max_pool2d_default(2).flatten(1, -1))
                .add(linear_of(&root, &l[2]))
                .add_fn(|x| x.relu())
                .add(linear_of(&root, &l[3])),
            ModelKind::Lenet300100 => nn::seq()
                .add_fn(move |x| x.view([-1, c * h * w]))
                .add(linear_of(&root, &l[0]))
                .add_fn(|x| x.relu())
                .add(linear_of(&root, &l[1]))
                .add_fn(|x| x.relu())
                .add(linear_of(&root, &l[2])),
        };
        Self {
            kind,
            vs,
            net,
            input: [c, h, w],
        }
    }

    pub fn kind(&self) -> ModelKind {
        self.kind
    }

    /// Logits for a batch of images `[N, C, H, W]` of the architecture's input.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.net.forward(x)
    }

    /// Every variable by name, sorted.
    pub fn variables(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<_> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Loads weights (a tch `.ot` or a `.safetensors` of the variables).
    pub fn load(&mut self, path: &std::path::Path) -> anyhow::Result<()> {
        use anyhow::Context;
        self.vs
            .load(path)
            .with_context(|| format!("loading --init {} into the model", path.display()))
    }

    /// A TorchScript trace of the network with its current weights (as constants), the
    /// bytes `torch.jit.load` reads.
    pub fn traced(&self) -> anyhow::Result<Vec<u8>> {
        // A trace may only embed tensors that need no gradient as constants.
        let vars = self.vs.variables();
        for t in vars.values() {
            let _ = t.set_requires_grad(false);
        }
        let traced = self.trace();
        for t in vars.values() {
            let _ = t.set_requires_grad(true);
        }
        traced
    }

    fn trace(&self) -> anyhow::Result<Vec<u8>> {
        let [c, h, w] = self.input;
        let x = Tensor::zeros([1, c, h, w], (tch::Kind::Float, self.vs.device()));
        let m = tch::no_grad(|| {
            tch::CModule::create_by_tracing("network", "forward", &[x], &mut |x| {
                vec![self.net.forward(&x[0])]
            })
        })
        .map_err(|e| anyhow::anyhow!("tracing the network: {}", torch_message(&e)))?;
        saved_bytes(&m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::network::{Model, ModelSource};

    fn zeros(shape: &[i64]) -> Tensor {
        Tensor::zeros(shape, (tch::Kind::Float, Device::Cpu))
    }

    /// The declared architecture is the built model: every variable with its shape, the
    /// compressible weights in forward order, and a forward pass over the declared input
    /// giving one logit per class.
    #[test]
    fn the_declaration_is_the_model() {
        for kind in [ModelKind::Lenet5, ModelKind::Lenet300100] {
            let arch = kind.architecture();
            let b = Builtin::new(kind, Device::Cpu, 1);
            let vars: Vec<(String, Vec<usize>)> = b
                .variables()
                .into_iter()
                .map(|(n, t)| (n, t.size().iter().map(|&d| d as usize).collect()))
                .collect();
            assert_eq!(vars, arch.variables(), "{kind}");
            let m = Model::load(
                &ModelSource::Builtin(kind),
                &LayerFilter::default(),
                Device::Cpu,
                1,
            )
            .unwrap();
            let declared: Vec<Vec<i64>> = arch
                .layers
                .iter()
                .map(|l| l.weight.iter().map(|&d| d as i64).collect())
                .collect();
            let shapes: Vec<Vec<i64>> = m.weights().iter().map(|w| w.size()).collect();
            assert_eq!(shapes, declared);
            let mut input = vec![2i64];
            input.extend(arch.input.map(|d| d as i64));
            let y = m.forward_t(&zeros(&input), false).unwrap();
            assert_eq!(y.size(), vec![2, arch.classes as i64]);
        }
        assert_eq!(ModelKind::Lenet5.to_string(), "lenet5");
        assert_eq!(ModelKind::Lenet300100.to_string(), "lenet-300-100");
        let n: usize = ModelKind::Lenet5
            .architecture()
            .layers
            .iter()
            .map(|l| l.weight.iter().product::<usize>())
            .sum();
        assert_eq!(n, 430_500);
    }

    #[test]
    fn filters_choose_layers_by_name() {
        let only = |include: Option<&str>, exclude: Option<&str>| {
            let f = LayerFilter {
                include: include.map(str::to_string),
                exclude: exclude.map(str::to_string),
            };
            ModelKind::Lenet5.info(&f).map(|i| {
                i.layers
                    .iter()
                    .map(|l| l.name.clone())
                    .collect::<Vec<_>>()
                    .join(",")
            })
        };
        assert_eq!(only(None, None).unwrap(), "conv1,conv2,fc1,fc2");
        assert_eq!(only(Some("^fc"), None).unwrap(), "fc1,fc2");
        assert_eq!(only(None, Some("2$")).unwrap(), "conv1,fc1");
        let e = only(Some("bn"), None).unwrap_err().to_string();
        assert!(
            e.contains("matches none") && e.contains("conv1, conv2"),
            "{e}"
        );
        let e = only(None, Some(".")).unwrap_err().to_string();
        assert!(e.contains("leaves none"), "{e}");
        let e = only(Some("("), None).unwrap_err().to_string();
        assert!(e.contains("not a regular expression"), "{e}");
    }
}
