//! Image sets as tch tensors, seeded mini-batches, and the check that a dataset suits a
//! model (its image size and class count).

use crate::data::ImageSet;
use crate::train::models::ModelKind;
use anyhow::{Result, bail};
use tch::{Device, Kind, Tensor};

/// IDX images have one channel.
const IDX_CHANNELS: usize = 1;

fn wrong_shape(model: ModelKind, got: [usize; 3], from: &str) -> anyhow::Error {
    let [c, h, w] = got;
    anyhow::anyhow!(
        "the dataset's images are {c}×{h}×{w} (from {from}), but model {model} takes {}",
        model.architecture().input_text()
    )
}

fn wrong_label(model: ModelKind, label: i64, index: usize, from: &str) -> anyhow::Error {
    let classes = model.architecture().classes;
    anyhow::anyhow!(
        "label {label} at index {index} of {from} is not a class of model {model} (it has {classes}: labels 0 to {})",
        classes - 1
    )
}

/// Checks, before any training, that `set` suits `model`: at least one image, images of
/// the model's input shape, labels below its class count. Errors name the files.
pub fn check_fits(model: ModelKind, set: &ImageSet) -> Result<()> {
    let arch = model.architecture();
    let from = set.image_file.display().to_string();
    if set.is_empty() {
        bail!("{from} holds no images");
    }
    let got = [IDX_CHANNELS, set.rows, set.cols];
    if got != arch.input {
        return Err(wrong_shape(model, got, &from));
    }
    if let Some(i) = set
        .labels
        .iter()
        .position(|&l| usize::from(l) >= arch.classes)
    {
        let from = set.label_file.display().to_string();
        return Err(wrong_label(model, set.labels[i].into(), i, &from));
    }
    Ok(())
}

/// A labelled set on a device: images `[N, 1, rows, cols]` scaled to [0, 1] and normalised
/// with a mean and standard deviation (the training set's), labels `[N]` (int64).
pub struct TensorSet {
    pub images: Tensor,
    pub labels: Tensor,
    /// Per-channel `[mean, std]` the images were normalised with.
    pub normalization: Vec<[f64; 2]>,
}

/// MNIST's pixel mean and standard deviation (of [0, 1] pixels over the training set).
pub const MNIST_STATS: (f64, f64) = (0.1307, 0.3081);

/// Mean and standard deviation of a set's pixels scaled to [0, 1].
pub fn pixel_stats(set: &ImageSet) -> (f64, f64) {
    let n = set.images.len().max(1) as f64;
    let (mut s, mut s2) = (0.0, 0.0);
    for &p in &set.images {
        let x = f64::from(p) / 255.0;
        s += x;
        s2 += x * x;
    }
    let mean = s / n;
    (mean, (s2 / n - mean * mean).max(1e-12).sqrt())
}

impl TensorSet {
    /// With MNIST's normalisation.
    pub fn new(set: &ImageSet, device: Device) -> Self {
        Self::normalised(set, device, MNIST_STATS)
    }

    /// Normalised with `(mean, std)` (use the training set's for both sets).
    pub fn normalised(set: &ImageSet, device: Device, (mean, std): (f64, f64)) -> Self {
        let n = set.len() as i64;
        let images = Tensor::from_slice(&set.images).to_kind(Kind::Float).view([
            n,
            1,
            set.rows as i64,
            set.cols as i64,
        ]) / 255.0;
        let images = ((images - mean) / std).to_device(device);
        let labels = Tensor::from_slice(&set.labels)
            .to_kind(Kind::Int64)
            .to_device(device);
        Self {
            images,
            labels,
            normalization: vec![[mean, std]],
        }
    }

    pub fn len(&self) -> i64 {
        self.labels.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// [`check_fits`] for a set already on a device (`what` names it in errors): a
    /// library caller's tensors get an error, not a failure inside libtorch.
    pub fn check_fits(&self, model: ModelKind, what: &str) -> Result<()> {
        let size = self.images.size();
        let n = self.len();
        if n == 0 {
            bail!("the {what} set holds no images");
        }
        let [count, c, h, w] = size[..] else {
            bail!(
                "the {what} images are a tensor of shape {size:?}; model {model} takes \
                 [N, C, H, W] = [N, {}]",
                model.architecture().input_text().replace('×', ", ")
            );
        };
        if count != n {
            bail!("the {what} set has {count} images but {n} labels");
        }
        let got = [c, h, w].map(|d| d as usize);
        if got != model.architecture().input {
            return Err(wrong_shape(model, got, &format!("the {what} set")));
        }
        let labels = self.labels.to_kind(Kind::Int64);
        let (lo, hi) = (
            i64::try_from(labels.min()).unwrap_or(-1),
            i64::try_from(labels.max()).unwrap_or(-1),
        );
        let classes = model.architecture().classes as i64;
        if lo < 0 || hi >= classes {
            let bad = if lo < 0 { lo } else { hi };
            let index = i64::try_from(labels.eq(bad).to_kind(Kind::Int64).argmax(0, false))
                .unwrap_or(0) as usize;
            return Err(wrong_label(
                model,
                bad,
                index,
                &format!("the {what} labels"),
            ));
        }
        Ok(())
    }

    /// The first `n` examples (for quick runs and tests).
    pub fn take(&self, n: i64) -> Self {
        let n = n.min(self.len());
        Self {
            images: self.images.narrow(0, 0, n),
            labels: self.labels.narrow(0, 0, n),
            normalization: self.normalization.clone(),
        }
    }

    /// Mini-batches in an order shuffled by `seed` (the last one may be shorter).
    pub fn batches(&self, batch: i64, seed: i64) -> impl Iterator<Item = (Tensor, Tensor)> + '_ {
        tch::manual_seed(seed);
        let order = Tensor::randperm(self.len(), (Kind::Int64, self.images.device()));
        let n = self.len();
        (0..n.div_euclid(batch) + i64::from(n % batch != 0)).map(move |i| {
            let idx = order.narrow(0, i * batch, batch.min(n - i * batch));
            (
                self.images.index_select(0, &idx),
                self.labels.index_select(0, &idx),
            )
        })
    }
}
