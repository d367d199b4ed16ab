//! Datasets read by our own loaders (no download at run time): a folder of MNIST-format IDX
//! files ([`idx`]) or one safetensors file ([`safetensors`]), both into the same pair of
//! [`Split`]s — images of any `C×H×W`, labels as integers, and the file each came from —
//! and the per-channel normalisation ([`normalize`]). Turning them into tensors is
//! `train::data`'s (libtorch); nothing here needs it.

pub mod idx;
pub mod normalize;
pub mod safetensors;

pub use idx::{ImageSet, load_mnist_dir};
pub use normalize::{Normalization, channel_stats};

use crate::error::{Error, Result};
use std::fmt;
use std::path::{Path, PathBuf};

/// Pixel values in `[N, C, H, W]` order, as stored: bytes (read as `byte / 255`) or floats.
#[derive(Clone, Debug, PartialEq)]
pub enum Pixels {
    U8(Vec<u8>),
    F32(Vec<f32>),
}

impl Pixels {
    pub fn len(&self) -> usize {
        match self {
            Pixels::U8(v) => v.len(),
            Pixels::F32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where a set's images and labels came from, for messages: a file, or a file and a tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetFrom {
    pub images: String,
    pub labels: String,
}

/// One labelled set (the training or the test set), checked: at least one image, no empty
/// image axis, one label per image, every label ≥ 0.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    /// Channels, height, width of every image.
    pub shape: [usize; 3],
    pub pixels: Pixels,
    pub labels: Vec<i64>,
    pub from: SetFrom,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The largest label (−1 for an empty set).
    pub fn max_label(&self) -> i64 {
        self.labels.iter().copied().max().unwrap_or(-1)
    }

    /// The shape as text, `C×H×W`.
    pub fn shape_text(&self) -> String {
        shape_text(self.shape)
    }
}

/// `[C, H, W]` as `C×H×W`.
pub fn shape_text([c, h, w]: [usize; 3]) -> String {
    format!("{c}×{h}×{w}")
}

impl From<ImageSet> for Split {
    fn from(set: ImageSet) -> Self {
        Split {
            shape: [set.channels, set.rows, set.cols],
            labels: set.labels.iter().map(|&l| i64::from(l)).collect(),
            pixels: Pixels::U8(set.images),
            from: SetFrom {
                images: set.image_file.display().to_string(),
                labels: set.label_file.display().to_string(),
            },
        }
    }
}

/// Where a run's training and test sets are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSource {
    /// A folder with the four MNIST-format IDX files ([`load_mnist_dir`]).
    IdxDir(PathBuf),
    /// One safetensors file with `train.x`, `train.y`, `test.x`, `test.y`
    /// ([`safetensors::load`]).
    Safetensors(PathBuf),
}

impl DataSource {
    pub fn path(&self) -> &Path {
        match self {
            DataSource::IdxDir(p) | DataSource::Safetensors(p) => p,
        }
    }

    /// The training and test sets, each checked (see [`Split`]), with images of the same
    /// `C×H×W` in both.
    pub fn load(&self) -> Result<(Split, Split)> {
        let (train, test) = match self {
            DataSource::IdxDir(dir) => {
                let (train, test) = load_mnist_dir(dir)?;
                (Split::from(train), Split::from(test))
            }
            DataSource::Safetensors(file) => safetensors::load(file)?,
        };
        for set in [&train, &test] {
            check_split(set)?;
        }
        if test.shape != train.shape {
            return Err(Error::Data {
                path: test.from.images.clone(),
                problem: format!(
                    "the test images are {}, but the training images ({}) are {}",
                    test.shape_text(),
                    train.from.images,
                    train.shape_text()
                ),
            });
        }
        Ok((train, test))
    }
}

impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path().display())
    }
}

/// What every loader guarantees of a set, whatever its format.
fn check_split(set: &Split) -> Result<()> {
    let bad = |problem: String| Error::Data {
        path: set.from.images.clone(),
        problem,
    };
    if set.is_empty() {
        return Err(bad("holds no images".into()));
    }
    if set.shape.contains(&0) {
        return Err(bad(format!(
            "images of {} (channels×height×width) hold no pixels",
            set.shape_text()
        )));
    }
    let per_image: usize = set.shape.iter().product();
    if set.pixels.len() != set.len() * per_image {
        return Err(bad(format!(
            "{} values for {} images of {}",
            set.pixels.len(),
            set.len(),
            set.shape_text()
        )));
    }
    if let Some(i) = set.labels.iter().position(|&l| l < 0) {
        return Err(Error::Data {
            path: set.from.labels.clone(),
            problem: format!(
                "label {} at index {i}: labels are classes 0, 1, 2, ...",
                set.labels[i]
            ),
        });
    }
    Ok(())
}

/// The most bytes of memory this machine has available now (Linux: `MemAvailable`), if it
/// says.
pub fn available_memory() -> Option<u64> {
    parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line
        .trim_start_matches("MemAvailable:")
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// Reads a dataset file of at most `max_bytes` (`what` names the kind in errors), refusing
/// one larger than the memory available before reading a byte of it: its contents are
/// held in memory (and more than once, as tensors).
pub(crate) fn read_dataset_file(path: &Path, max_bytes: u64, what: &str) -> Result<Vec<u8>> {
    let len = crate::fsio::open_regular(path, what)?
        .metadata()
        .map(|m| m.len())
        .unwrap_or(0);
    if let Some(free) = available_memory()
        && len > free
    {
        return Err(Error::Data {
            path: path.display().to_string(),
            problem: format!(
                "is {len} bytes, more than the {free} bytes of memory available to load it"
            ),
        });
    }
    crate::fsio::read_regular(path, max_bytes, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_gives_bytes() {
        let text = "MemTotal:       16318256 kB\nMemFree:  1000 kB\nMemAvailable:   12 kB\n";
        assert_eq!(parse_meminfo(text), Some(12 * 1024));
        assert_eq!(parse_meminfo("MemTotal: 5 kB\n"), None);
        assert_eq!(parse_meminfo("MemAvailable: lots\n"), None);
        assert!(available_memory().is_none_or(|b| b > 0));
    }

    fn split(shape: [usize; 3], n: usize, labels: Vec<i64>) -> Split {
        Split {
            shape,
            pixels: Pixels::U8(vec![0; n * shape.iter().product::<usize>()]),
            labels,
            from: SetFrom {
                images: "x".into(),
                labels: "y".into(),
            },
        }
    }

    #[test]
    fn every_set_is_checked() {
        assert!(check_split(&split([1, 2, 2], 2, vec![0, 3])).is_ok());
        let e = check_split(&split([1, 2, 2], 0, vec![])).unwrap_err();
        assert_eq!(e.to_string(), "x: holds no images");
        let e = check_split(&split([1, 0, 2], 1, vec![0])).unwrap_err();
        assert!(e.to_string().contains("images of 1×0×2"), "{e}");
        let e = check_split(&split([1, 2, 2], 2, vec![0, -4])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "y: label -4 at index 1: labels are classes 0, 1, 2, ..."
        );
        let mut short = split([1, 2, 2], 2, vec![0, 1]);
        short.pixels = Pixels::F32(vec![0.0; 7]);
        let e = check_split(&short).unwrap_err();
        assert!(e.to_string().contains("7 values for 2 images"), "{e}");
    }
}
