//! Datasets as tch tensors ([`load`]: either source, normalised, as one [`Loaded`]), seeded
//! mini-batches, and the check that a dataset suits a model: its image shape and class
//! count, whatever the model (a built-in one's declared architecture, or the shape probed
//! from another).

use crate::data::{DataSource, Normalization, Pixels, SetFrom, Split, shape_text};
use crate::train::models::ModelKind;
use anyhow::{Result, bail};
use tch::{Device, Kind, Tensor};

/// What a model takes, for the dataset check: its name (for messages), its input images
/// `[C, H, W]` and its class count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelInput {
    pub name: String,
    pub input: [usize; 3],
    pub classes: usize,
}

impl From<ModelKind> for ModelInput {
    fn from(model: ModelKind) -> Self {
        let arch = model.architecture();
        Self {
            name: model.to_string(),
            input: arch.input,
            classes: arch.classes,
        }
    }
}

fn wrong_shape(model: &ModelInput, got: [usize; 3], from: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "the dataset's images are {} (from {from}), but model {} takes {}",
        shape_text(got),
        model.name,
        shape_text(model.input)
    )
}

fn wrong_label(model: &ModelInput, label: i64, index: usize, from: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "label {label} at index {index} of {from} is not a class of model {} (it has {}: labels 0 to {})",
        model.name,
        model.classes,
        model.classes.saturating_sub(1)
    )
}

/// A run's data, loaded by [`load`]: both sets on the device, normalised alike.
pub struct Loaded {
    pub train: TensorSet,
    pub test: TensorSet,
    /// The `[mean, std]` of each channel that both sets were normalised with (whoever feeds
    /// the trained model must do the same).
    pub stats: Vec<[f64; 2]>,
    /// Every image's `[C, H, W]`.
    pub input: [usize; 3],
    /// Largest label of either set + 1.
    pub classes: usize,
    /// The folder or file they came from.
    pub origin: String,
    pub train_from: SetFrom,
    pub test_from: SetFrom,
}

/// Reads the training and test sets of `source` (checked, see [`DataSource::load`]),
/// normalises both with the statistics `normalization` gives for the training set, and
/// puts them on `device`.
pub fn load(source: &DataSource, device: Device, normalization: &Normalization) -> Result<Loaded> {
    let (train, test) = source.load()?;
    let stats = normalization.stats(&train)?;
    let classes = train.max_label().max(test.max_label()) + 1;
    Ok(Loaded {
        stats: stats.clone(),
        input: train.shape,
        classes: classes as usize,
        origin: source.to_string(),
        train: TensorSet::from_split(&train, device, &stats),
        test: TensorSet::from_split(&test, device, &stats),
        train_from: train.from,
        test_from: test.from,
    })
}

impl Loaded {
    /// Checks, before any training, that the data suits `model`: images of its input shape
    /// and labels below its class count. Errors name the files (and tensors).
    pub fn check_fits(&self, model: &ModelInput) -> Result<()> {
        for (set, from) in [
            (&self.train, &self.train_from),
            (&self.test, &self.test_from),
        ] {
            set.check(model, &from.images, &from.labels)?;
        }
        Ok(())
    }

    /// Keeps the first `train` training and `test` test examples, where given.
    pub fn limit(&mut self, train: Option<i64>, test: Option<i64>) {
        if let Some(n) = train {
            self.train = self.train.take(n);
        }
        if let Some(n) = test {
            self.test = self.test.take(n);
        }
    }
}

/// A labelled set on a device: images `[N, C, H, W]` (f32, bytes scaled to [0, 1]),
/// normalised per channel, and labels `[N]` (int64).
pub struct TensorSet {
    pub images: Tensor,
    pub labels: Tensor,
    /// Per-channel `[mean, std]` the images were normalised with.
    pub normalization: Vec<[f64; 2]>,
}

/// MNIST's pixel mean and standard deviation (of [0, 1] pixels over the training set).
pub const MNIST_STATS: [f64; 2] = [0.1307, 0.3081];

impl TensorSet {
    /// An IDX set with MNIST's normalisation.
    pub fn new(set: &crate::data::ImageSet, device: Device) -> Self {
        Self::from_split(&Split::from(set.clone()), device, &[MNIST_STATS])
    }

    /// `set` on `device`, normalised with `stats`: one `[mean, std]` per channel, or one
    /// for all.
    pub fn from_split(set: &Split, device: Device, stats: &[[f64; 2]]) -> Self {
        let [c, h, w] = set.shape.map(|d| d as i64);
        let n = set.len() as i64;
        let mut images = match &set.pixels {
            Pixels::U8(v) => Tensor::from_slice(v).to_kind(Kind::Float) / 255.0,
            Pixels::F32(v) => Tensor::from_slice(v),
        }
        .view([n, c, h, w]);
        let per = |i: usize| {
            let v: Vec<f32> = stats.iter().map(|s| s[i] as f32).collect();
            Tensor::from_slice(&v).view([1, v.len() as i64, 1, 1])
        };
        // In place: a large set is held once more, not once per operation.
        images -= per(0);
        images /= per(1);
        let images = images.to_device(device);
        let labels = Tensor::from_slice(&set.labels).to_device(device);
        Self {
            images,
            labels,
            normalization: stats.to_vec(),
        }
    }

    pub fn len(&self) -> i64 {
        self.labels.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// [`Loaded::check_fits`] for a set already on a device (`what` names it in errors): a
    /// library caller's tensors get an error, not a failure inside libtorch.
    pub fn check_fits(&self, model: &ModelInput, what: &str) -> Result<()> {
        self.check(
            model,
            &format!("the {what} set"),
            &format!("the {what} labels"),
        )
    }

    fn check(&self, model: &ModelInput, images_from: &str, labels_from: &str) -> Result<()> {
        let size = self.images.size();
        let n = self.len();
        if n == 0 {
            bail!("{images_from} holds no images");
        }
        let [count, c, h, w] = size[..] else {
            bail!(
                "the images of {images_from} are a tensor of shape {size:?}; model {} takes \
                 [N, C, H, W] = [N, {}]",
                model.name,
                shape_text(model.input).replace('×', ", ")
            );
        };
        if count != n {
            bail!("{images_from} has {count} images but {n} labels");
        }
        let got = [c, h, w].map(|d| d as usize);
        if got != model.input {
            return Err(wrong_shape(model, got, images_from));
        }
        let labels = self.labels.to_kind(Kind::Int64);
        let (lo, hi) = (
            i64::try_from(labels.min()).unwrap_or(-1),
            i64::try_from(labels.max()).unwrap_or(-1),
        );
        let classes = model.classes as i64;
        if lo < 0 || hi >= classes {
            let bad = if lo < 0 { lo } else { hi };
            let index = i64::try_from(labels.eq(bad).to_kind(Kind::Int64).argmax(0, false))
                .unwrap_or(0) as usize;
            return Err(wrong_label(model, bad, index, labels_from));
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
