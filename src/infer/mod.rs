//! Running a compressed network end to end on wgpu: the layer list and its checks
//! ([`network`]), the GPU plan ([`host`]) and its kernels' dispatches ([`stages`]), and
//! the test-set evaluation (accuracy and images per second) below.

pub mod host;
pub mod network;
pub mod stages;

use crate::data::{Pixels, Split};
use crate::error::Result;
use crate::gpu::Gpu;
use host::Plan;
use std::time::Instant;

/// Normalised images `[n, C, H, W]` and their labels.
pub struct Images {
    pub shape: [usize; 3],
    pub values: Vec<f32>,
    pub labels: Vec<i64>,
}

impl Images {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The first `limit` images of `set` (all when `None`), each channel normalised with
    /// its `[mean, std]` exactly as train-gpu does it in f32: `(byte / 255 − mean) / std`.
    pub fn normalised(set: &Split, stats: &[[f64; 2]], limit: Option<usize>) -> Self {
        let n = limit.map_or(set.len(), |l| l.min(set.len()));
        let [c, h, w] = set.shape;
        let plane = h * w;
        let len = n * c * plane;
        let values = match &set.pixels {
            Pixels::U8(v) => v[..len]
                .iter()
                .map(|&b| f32::from(b) / 255.0)
                .collect::<Vec<_>>(),
            Pixels::F32(v) => v[..len].to_vec(),
        };
        let values = values
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let s = stats[(i / plane) % c];
                (v - s[0] as f32) / s[1] as f32
            })
            .collect();
        Self {
            shape: set.shape,
            values,
            labels: set.labels[..n].to_vec(),
        }
    }
}

/// One pass over a test set.
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    pub images: usize,
    pub correct: usize,
    /// Wall time of all batches (uploads, the runs and the readback of the classes),
    /// after one untimed warm-up batch.
    pub seconds: f64,
}

impl Measured {
    /// Percent of images classified right.
    pub fn accuracy(&self) -> f64 {
        100.0 * self.correct as f64 / self.images.max(1) as f64
    }

    pub fn images_per_s(&self) -> f64 {
        self.images as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }
}

/// Classifies every image of `set` batch by batch (one warm-up batch first, untimed);
/// `progress(done, total)` after each batch.
pub fn evaluate(
    gpu: &Gpu,
    plan: &Plan,
    set: &Images,
    mut progress: impl FnMut(usize, usize),
) -> Result<Measured> {
    let len: usize = set.shape.iter().product();
    let batch = plan.batch;
    let chunk = |b: usize| &set.values[b * batch * len..((b + 1) * batch).min(set.len()) * len];
    let batches = set.len().div_ceil(batch);
    plan.classify(gpu, chunk(0))?;
    let start = Instant::now();
    let mut correct = 0;
    for b in 0..batches {
        let predicted = plan.classify(gpu, chunk(b))?;
        correct += predicted
            .iter()
            .zip(&set.labels[b * batch..])
            .filter(|(p, l)| i64::from(**p) == **l)
            .count();
        progress(((b + 1) * batch).min(set.len()), set.len());
    }
    Ok(Measured {
        images: set.len(),
        correct,
        seconds: start.elapsed().as_secs_f64(),
    })
}
