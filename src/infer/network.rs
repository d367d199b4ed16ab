//! A network's layer list: the schema (`--network NET.toml`, or what train-gpu records in
//! the compressed file under [`crate::format::NETWORK_KEY`]), and its check against the
//! tensors of a compressed file and the input images, which resolves every layer's
//! tensors and shapes. A layer type it cannot run, a tensor missing, or shapes that do not
//! chain are errors naming the layer.

use crate::error::{Error, Result};
use crate::format::{CompressedFile, CompressedLayer, dtype};
use serde::{Deserialize, Serialize};

/// The largest pooling window side a network may have: pool2d's loops run over the window,
/// and src/gpu/loops.rs checks them against CPU drivers' loop budget at this size.
pub const MAX_POOL_SIDE: u64 = 32;
/// The most classes a network may output: argmax loops over them (checked the same way).
pub const MAX_CLASSES: u64 = 16_384;

/// One side for both axes, or `[y, x]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Sides {
    Both(usize),
    YX([usize; 2]),
}

impl Sides {
    pub fn yx(self) -> [usize; 2] {
        match self {
            Sides::Both(v) => [v, v],
            Sides::YX(v) => v,
        }
    }
}

fn zero() -> Sides {
    Sides::Both(0)
}

fn one() -> Sides {
    Sides::Both(1)
}

fn default_eps() -> f64 {
    1e-5
}

/// One layer as written: `type` and that type's fields (tensor names are the file's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum LayerDef {
    Conv {
        weight: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bias: Option<String>,
        #[serde(default = "one")]
        stride: Sides,
        #[serde(default = "zero")]
        padding: Sides,
    },
    Linear {
        weight: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bias: Option<String>,
    },
    Relu {},
    Maxpool {
        kernel: Sides,
        /// Defaults to the kernel (PyTorch's default).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<Sides>,
        #[serde(default = "zero")]
        padding: Sides,
    },
    Avgpool {
        kernel: Sides,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<Sides>,
        #[serde(default = "zero")]
        padding: Sides,
    },
    Flatten {},
    Batchnorm {
        weight: String,
        bias: String,
        running_mean: String,
        running_var: String,
        #[serde(default = "default_eps")]
        eps: f64,
    },
}

/// The layer types the schema has, for messages.
pub const LAYER_TYPES: &str = "conv, linear, relu, maxpool, avgpool, flatten, batchnorm";

impl LayerDef {
    fn kind(&self) -> &'static str {
        match self {
            LayerDef::Conv { .. } => "conv",
            LayerDef::Linear { .. } => "linear",
            LayerDef::Relu {} => "relu",
            LayerDef::Maxpool { .. } => "maxpool",
            LayerDef::Avgpool { .. } => "avgpool",
            LayerDef::Flatten {} => "flatten",
            LayerDef::Batchnorm { .. } => "batchnorm",
        }
    }

    /// How errors name the layer: its number in the list (from 1), type and weight, e.g.
    /// `#6 linear fc1.weight`.
    fn label(&self, i: usize) -> String {
        match self {
            LayerDef::Conv { weight, .. }
            | LayerDef::Linear { weight, .. }
            | LayerDef::Batchnorm { weight, .. } => {
                format!("#{} {} {weight}", i + 1, self.kind())
            }
            _ => format!("#{} {}", i + 1, self.kind()),
        }
    }
}

/// The whole list: `[[layer]]` tables in TOML, `{"layer": [...]}` in JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkDef {
    pub layer: Vec<LayerDef>,
}

impl NetworkDef {
    /// Parses TOML, or JSON when the text starts with `{` after blanks (what the file's
    /// metadata holds); `what` names the source in errors, each layer's by its number.
    pub fn parse(text: &str, what: &str) -> Result<Self> {
        let bad = |problem: String| Error::Data {
            path: what.to_string(),
            problem,
        };
        let doc: serde_json::Value = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?
        } else {
            let table: toml::Table =
                toml::from_str(text).map_err(|e| bad(format!("not valid TOML: {e}")))?;
            serde_json::to_value(table).map_err(|e| bad(e.to_string()))?
        };
        let serde_json::Value::Object(mut top) = doc else {
            return Err(bad("expected a table with a `layer` list".into()));
        };
        let Some(serde_json::Value::Array(list)) = top.remove("layer") else {
            return Err(bad(
                "no `layer` list: write one [[layer]] table per layer, with `type = ...`".into(),
            ));
        };
        if let Some(k) = top.keys().next() {
            return Err(bad(format!("unknown key {k:?} (only `layer` lists)")));
        }
        if list.is_empty() {
            return Err(bad("the `layer` list is empty".into()));
        }
        let layer = list
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                serde_json::from_value(v).map_err(|e| {
                    bad(format!(
                        "layer {}: {e} (types: {LAYER_TYPES}; see README, `microunify infer`)",
                        i + 1
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layer })
    }

    /// The list as compact JSON (the form stored in a compressed file's metadata).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a layer list always encodes")
    }
}

/// A conv or linear layer's weight: compressed in the file, or a plain tensor of it.
#[derive(Clone, Debug)]
pub enum Weight {
    Compressed(CompressedLayer),
    Dense { shape: Vec<usize>, values: Vec<f32> },
}

impl Weight {
    /// PyTorch's shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            Weight::Compressed(l) => &l.shape,
            Weight::Dense { shape, .. } => shape,
        }
    }

    /// The weights in PyTorch order (a compressed one reconstructed).
    pub fn dense(&self) -> Vec<f32> {
        match self {
            Weight::Compressed(l) => l.dense(),
            Weight::Dense { values, .. } => values.clone(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    Average,
}

/// A BatchNorm's parameters, per channel.
#[derive(Clone, Debug)]
pub struct BatchNorm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub eps: f64,
}

impl BatchNorm {
    /// `(scale, shift)` per channel: `bn(v) = scale·v + shift`.
    pub fn affine(&self) -> (Vec<f32>, Vec<f32>) {
        (0..self.gamma.len())
            .map(|c| {
                let s = f64::from(self.gamma[c]) / (f64::from(self.var[c]) + self.eps).sqrt();
                (
                    s as f32,
                    (f64::from(self.beta[c]) - f64::from(self.mean[c]) * s) as f32,
                )
            })
            .unzip()
    }
}

/// A checked layer with its tensors.
#[derive(Clone, Debug)]
pub enum Op {
    Conv {
        weight: Weight,
        bias: Option<Vec<f32>>,
        stride: [usize; 2],
        padding: [usize; 2],
    },
    Linear {
        weight: Weight,
        bias: Option<Vec<f32>>,
    },
    Relu,
    Pool {
        kind: PoolKind,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    },
    Flatten,
    BatchNorm(BatchNorm),
}

/// A checked layer: what it does, its name in messages, and the `[C, H, W]` it takes and
/// gives (a flattened activation is `[C·H·W, 1, 1]`).
#[derive(Clone, Debug)]
pub struct Layer {
    pub label: String,
    pub op: Op,
    pub input: [usize; 3],
    pub output: [usize; 3],
}

/// A network checked against a file and an input shape, ready to run.
#[derive(Clone, Debug)]
pub struct Network {
    pub input: [usize; 3],
    pub layers: Vec<Layer>,
    /// Logits per image: the last layer's output.
    pub classes: usize,
}

fn shape_err(label: &str, why: String) -> Error {
    Error::Shape {
        layer: label.to_string(),
        why,
    }
}

/// A tensor of the file that is not compressed, as f32.
fn plain_tensor(file: &CompressedFile, name: &str, label: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    if file.layer(name).is_some() {
        return Err(shape_err(
            label,
            format!(
                "tensor {name:?} is compressed in the file; only conv and linear weights may be"
            ),
        ));
    }
    let t = file
        .passthrough
        .get(name)
        .ok_or_else(|| missing(file, name, label))?;
    let values = dtype::to_f32(t.dtype, &t.data).ok_or_else(|| {
        shape_err(
            label,
            format!("tensor {name:?} is {:?}, not a float tensor", t.dtype),
        )
    })?;
    Ok((t.shape.clone(), values))
}

fn missing(file: &CompressedFile, name: &str, label: &str) -> Error {
    let mut names: Vec<&str> = file.layers.iter().map(|l| l.name.as_str()).collect();
    names.extend(file.passthrough.keys().map(String::as_str));
    names.sort_unstable();
    let shown: Vec<&str> = names.iter().take(12).copied().collect();
    let more = if names.len() > shown.len() {
        ", ..."
    } else {
        ""
    };
    shape_err(
        label,
        format!(
            "the file has no tensor {name:?} (it has {}{more})",
            shown.join(", ")
        ),
    )
}

fn weight(file: &CompressedFile, name: &str, label: &str) -> Result<Weight> {
    match file.layer(name) {
        Some(l) => Ok(Weight::Compressed(l.clone())),
        None => {
            let t = file
                .passthrough
                .get(name)
                .ok_or_else(|| missing(file, name, label))?;
            let values = dtype::to_f32(t.dtype, &t.data).ok_or_else(|| {
                shape_err(
                    label,
                    format!("weight {name:?} is {:?}, not a float tensor", t.dtype),
                )
            })?;
            Ok(Weight::Dense {
                shape: t.shape.clone(),
                values,
            })
        }
    }
}

/// A per-channel vector of `len` values.
fn vector(
    file: &CompressedFile,
    name: &str,
    len: usize,
    label: &str,
    what: &str,
) -> Result<Vec<f32>> {
    let (shape, values) = plain_tensor(file, name, label)?;
    if shape != [len] {
        return Err(shape_err(
            label,
            format!("{what} {name:?} has shape {shape:?}, expected [{len}]"),
        ));
    }
    Ok(values)
}

/// Output side of a window `k` with `stride` and `pad` over `len` (None: it does not fit).
fn out_side(len: usize, k: usize, stride: usize, pad: usize) -> Option<usize> {
    (len + 2 * pad >= k).then(|| (len + 2 * pad - k) / stride + 1)
}

impl Network {
    /// Checks `def` against `file`'s tensors and images of `input` (`[C, H, W]`).
    pub fn resolve(def: &NetworkDef, file: &CompressedFile, input: [usize; 3]) -> Result<Self> {
        let mut shape = input;
        let mut flat = false;
        // Positions per channel of the stored activation (a flatten does not move data).
        let mut plane = input[1] * input[2];
        let mut layers = Vec::with_capacity(def.layer.len());
        for (i, d) in def.layer.iter().enumerate() {
            let label = d.label(i);
            let err = |why: String| shape_err(&label, why);
            let [c, h, w] = shape;
            let (op, out) = match d {
                LayerDef::Conv {
                    weight: wname,
                    bias,
                    stride,
                    padding,
                } => {
                    if flat {
                        return Err(err("a conv cannot follow a flatten".into()));
                    }
                    let wt = weight(file, wname, &label)?;
                    let &[cout, cin, kh, kw] = wt.shape() else {
                        return Err(err(format!(
                            "a conv weight is [Cout, Cin, kh, kw], this one is {:?}",
                            wt.shape()
                        )));
                    };
                    if cin != c {
                        return Err(err(format!(
                            "its input is {c}×{h}×{w} ({c} channels), the weight {:?} takes {cin}",
                            wt.shape()
                        )));
                    }
                    let (stride, padding) = (stride.yx(), padding.yx());
                    if stride.contains(&0) {
                        return Err(err("stride must be at least 1".into()));
                    }
                    let oh = out_side(h, kh, stride[0], padding[0]);
                    let ow = out_side(w, kw, stride[1], padding[1]);
                    let (Some(oh), Some(ow)) = (oh, ow) else {
                        return Err(err(format!(
                            "a {kh}×{kw} kernel with padding {padding:?} does not fit its {h}×{w} input"
                        )));
                    };
                    let bias = bias
                        .as_ref()
                        .map(|b| vector(file, b, cout, &label, "bias"))
                        .transpose()?;
                    (
                        Op::Conv {
                            weight: wt,
                            bias,
                            stride,
                            padding,
                        },
                        [cout, oh, ow],
                    )
                }
                LayerDef::Linear {
                    weight: wname,
                    bias,
                } => {
                    let wt = weight(file, wname, &label)?;
                    let &[out, inp] = wt.shape() else {
                        return Err(err(format!(
                            "a linear weight is [out, in], this one is {:?}",
                            wt.shape()
                        )));
                    };
                    if !flat && h * w != 1 {
                        return Err(err(format!(
                            "its input is {c}×{h}×{w}: put a flatten layer before it"
                        )));
                    }
                    if inp != c * h * w {
                        return Err(err(format!(
                            "its input has {} features ({c}×{h}×{w}), the weight {:?} takes {inp}",
                            c * h * w,
                            wt.shape()
                        )));
                    }
                    let bias = bias
                        .as_ref()
                        .map(|b| vector(file, b, out, &label, "bias"))
                        .transpose()?;
                    flat = false;
                    plane = 1;
                    (Op::Linear { weight: wt, bias }, [out, 1, 1])
                }
                LayerDef::Relu {} => (Op::Relu, shape),
                LayerDef::Flatten {} => {
                    if !flat {
                        plane = h * w;
                    }
                    flat = true;
                    (Op::Flatten, [c * h * w, 1, 1])
                }
                LayerDef::Maxpool {
                    kernel,
                    stride,
                    padding,
                }
                | LayerDef::Avgpool {
                    kernel,
                    stride,
                    padding,
                } => {
                    if flat {
                        return Err(err("a pooling layer cannot follow a flatten".into()));
                    }
                    let kind = if matches!(d, LayerDef::Maxpool { .. }) {
                        PoolKind::Max
                    } else {
                        PoolKind::Average
                    };
                    let kernel = kernel.yx();
                    let stride = stride.map_or(kernel, Sides::yx);
                    let padding = padding.yx();
                    if kernel.iter().any(|&k| k == 0 || k as u64 > MAX_POOL_SIDE) {
                        return Err(err(format!(
                            "kernel {kernel:?}: each side must be 1 to {MAX_POOL_SIDE}"
                        )));
                    }
                    if stride.contains(&0) {
                        return Err(err("stride must be at least 1".into()));
                    }
                    if padding[0] > kernel[0] / 2 || padding[1] > kernel[1] / 2 {
                        return Err(err(format!(
                            "padding {padding:?} is more than half the kernel {kernel:?}"
                        )));
                    }
                    let oh = out_side(h, kernel[0], stride[0], padding[0]);
                    let ow = out_side(w, kernel[1], stride[1], padding[1]);
                    let (Some(oh), Some(ow)) = (oh, ow) else {
                        return Err(err(format!(
                            "a {}×{} window does not fit its {h}×{w} input",
                            kernel[0], kernel[1]
                        )));
                    };
                    (
                        Op::Pool {
                            kind,
                            kernel,
                            stride,
                            padding,
                        },
                        [c, oh, ow],
                    )
                }
                LayerDef::Batchnorm {
                    weight: g,
                    bias: b,
                    running_mean,
                    running_var,
                    eps,
                } => {
                    if flat && plane != 1 {
                        return Err(err(format!(
                            "a batchnorm of the {c} flattened features of an activation with \
                             {plane} positions per channel is not supported"
                        )));
                    }
                    let v = |name: &str, what: &str| vector(file, name, c, &label, what);
                    let bn = BatchNorm {
                        gamma: v(g, "weight")?,
                        beta: v(b, "bias")?,
                        mean: v(running_mean, "running_mean")?,
                        var: v(running_var, "running_var")?,
                        eps: *eps,
                    };
                    if let Some(ch) = (0..c).find(|&ch| {
                        let positive = f64::from(bn.var[ch]) + bn.eps > 0.0;
                        !positive || !bn.gamma[ch].is_finite()
                    }) {
                        return Err(err(format!(
                            "channel {ch}: running_var + eps must be positive and the weight finite"
                        )));
                    }
                    (Op::BatchNorm(bn), shape)
                }
            };
            layers.push(Layer {
                label,
                op,
                input: shape,
                output: out,
            });
            shape = out;
        }
        let [classes, h, w] = shape;
        let last = &layers.last().expect("the list is not empty").label;
        if h * w != 1 {
            return Err(shape_err(
                last,
                format!(
                    "the network ends with a {classes}×{h}×{w} activation, not one logit per class"
                ),
            ));
        }
        let classes = classes * h * w;
        if classes as u64 > MAX_CLASSES {
            return Err(shape_err(
                last,
                format!("{classes} logits per image; at most {MAX_CLASSES} are taken"),
            ));
        }
        Ok(Self {
            input,
            layers,
            classes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_reads_toml_and_json_and_names_bad_layers() {
        let toml = r#"
[[layer]]
type = "conv"
weight = "c.weight"
bias = "c.bias"
stride = [1, 2]
padding = 1
[[layer]]
type = "relu"
[[layer]]
type = "maxpool"
kernel = 2
[[layer]]
type = "flatten"
[[layer]]
type = "linear"
weight = "fc.weight"
"#;
        let def = NetworkDef::parse(toml, "net.toml").unwrap();
        assert_eq!(def.layer.len(), 5);
        assert_eq!(NetworkDef::parse(&def.to_json(), "meta").unwrap(), def);
        let e = NetworkDef::parse("[[layer]]\ntype = \"dropout\"\n", "n.toml").unwrap_err();
        assert!(
            e.to_string().contains("layer 1") && e.to_string().contains("dropout"),
            "{e}"
        );
        let e = NetworkDef::parse("[[layer]]\ntype = \"relu\"\n[[layer]]\ntype = \"conv\"\nweight = \"w\"\ndilation = 2\n", "n.toml").unwrap_err();
        assert!(
            e.to_string().contains("layer 2") && e.to_string().contains("dilation"),
            "{e}"
        );
        let e = NetworkDef::parse("layer = []\n", "n.toml").unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
    }
}
