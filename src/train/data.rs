//! Image sets as tch tensors, and seeded mini-batches.

use crate::data::ImageSet;
use tch::{Device, Kind, Tensor};

/// A labelled set on a device: images `[N, 1, rows, cols]` scaled to [0, 1] and normalised
/// with a mean and standard deviation (the training set's), labels `[N]` (int64).
pub struct TensorSet {
    pub images: Tensor,
    pub labels: Tensor,
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
        Self { images, labels }
    }

    pub fn len(&self) -> i64 {
        self.labels.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first `n` examples (for quick runs and tests).
    pub fn take(&self, n: i64) -> Self {
        let n = n.min(self.len());
        Self {
            images: self.images.narrow(0, 0, n),
            labels: self.labels.narrow(0, 0, n),
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
