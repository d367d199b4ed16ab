//! A dataset as one safetensors file, e.g. written from PyTorch with
//! `safetensors.torch.save_file({"train.x": ..., "train.y": ..., "test.x": ..., "test.y": ...}, PATH)`
//! or from NumPy with `safetensors.numpy.save_file`. It holds exactly four tensors:
//!
//! - `train.x`, `test.x`: images `N×C×H×W`, `U8` (read as `byte / 255`) or `F32` (as they
//!   are; NaN and infinities are refused), the same `C×H×W` in both;
//! - `train.y`, `test.y`: labels `N` (as many as images), any integer dtype (`U8`, `I8`,
//!   `I16`, `U16`, `I32`, `U32`, `I64`, `U64`), every one ≥ 0.
//!
//! Every problem is an error naming the file and the tensor.

use super::{Pixels, SetFrom, Split, read_dataset_file};
use crate::error::{Error, Result};
use ::safetensors::tensor::TensorView;
use ::safetensors::{Dtype, SafeTensorError, SafeTensors};
use std::path::Path;

/// The most bytes a safetensors dataset may have: 64 GiB, a bound on what a corrupt or
/// wrong file makes this program read (it must also fit in the memory available).
pub const MAX_DATASET_BYTES: u64 = 64 << 30;

/// The sets a file holds, each as (images, labels) tensor names.
pub const SETS: [(&str, &str); 2] = [("train.x", "train.y"), ("test.x", "test.y")];

/// Reads and checks the training and test sets of the dataset file `path`.
pub fn load(path: &Path) -> Result<(Split, Split)> {
    let bytes = read_dataset_file(path, MAX_DATASET_BYTES, "safetensors dataset")?;
    parse(path, &bytes)
}

fn bad(path: &Path, problem: String) -> Error {
    Error::Data {
        path: path.display().to_string(),
        problem,
    }
}

/// The training and test sets of the bytes of the dataset file `path`.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<(Split, Split)> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| bad(path, format!("not a valid safetensors file: {e}")))?;
    let known: Vec<&str> = SETS.iter().flat_map(|&(x, y)| [x, y]).collect();
    let mut names = st.names();
    names.sort_unstable();
    if let Some(other) = names.iter().find(|n| !known.contains(n)) {
        return Err(bad(
            path,
            format!(
                "holds tensor {other}, which a dataset does not have (it holds exactly {})",
                known.join(", ")
            ),
        ));
    }
    let [train, test] = SETS.map(|(x, y)| read_set(path, &st, x, y));
    let (train, test) = (train?, test?);
    if test.shape != train.shape {
        return Err(bad(
            path,
            format!(
                "tensor {}: images of {}, but the {} images of {} are {}",
                SETS[1].0,
                test.shape_text(),
                train.len(),
                SETS[0].0,
                train.shape_text()
            ),
        ));
    }
    Ok((train, test))
}

/// The tensor `name`, or an error naming it.
fn tensor<'a>(path: &Path, st: &SafeTensors<'a>, name: &str) -> Result<TensorView<'a>> {
    st.tensor(name).map_err(|e| match e {
        SafeTensorError::TensorNotFound(_) => bad(path, format!("no tensor {name}")),
        e => bad(path, format!("tensor {name}: {e}")),
    })
}

fn read_set(path: &Path, st: &SafeTensors, x: &str, y: &str) -> Result<Split> {
    let (shape, pixels) = images(path, &tensor(path, st, x)?, x)?;
    let labels = labels(path, &tensor(path, st, y)?, y)?;
    let n = pixels.len() / shape.iter().product::<usize>().max(1);
    if labels.len() != n {
        return Err(bad(
            path,
            format!(
                "tensor {y}: {} labels for the {n} images of {x}",
                labels.len()
            ),
        ));
    }
    let from = |name| format!("{}, tensor {name}", path.display());
    Ok(Split {
        shape,
        pixels,
        labels,
        from: SetFrom {
            images: from(x),
            labels: from(y),
        },
    })
}

/// The images of tensor `name`: shape `N×C×H×W`, `U8` or finite `F32`, at least one image
/// of at least one pixel.
fn images(path: &Path, t: &TensorView, name: &str) -> Result<([usize; 3], Pixels)> {
    let err = |problem: String| bad(path, format!("tensor {name}: {problem}"));
    let &[n, c, h, w] = t.shape() else {
        let hint = if t.shape().len() == 3 {
            " (one channel: add its axis, e.g. x.unsqueeze(1) or x[:, None])"
        } else {
            ""
        };
        return Err(err(format!(
            "shape {:?} has {} dimensions; images are N×C×H×W (4){hint}",
            t.shape(),
            t.shape().len()
        )));
    };
    if n == 0 {
        return Err(err(format!("no images (shape {:?})", t.shape())));
    }
    if c == 0 || h == 0 || w == 0 {
        return Err(err(format!(
            "images of {c}×{h}×{w} (channels×height×width) hold no pixels"
        )));
    }
    let pixels = match t.dtype() {
        Dtype::U8 => Pixels::U8(t.data().to_vec()),
        Dtype::F32 => {
            let v: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect();
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                let (img, rest) = (i / (c * h * w), i % (c * h * w));
                return Err(err(format!(
                    "{} at index {i} (image {img}, channel {}, row {}, column {}): images must be finite",
                    v[i],
                    rest / (h * w),
                    rest % (h * w) / w,
                    rest % w
                )));
            }
            Pixels::F32(v)
        }
        d => {
            return Err(err(format!(
                "dtype {d:?}; images are U8 (read as byte / 255) or F32"
            )));
        }
    };
    Ok(([c, h, w], pixels))
}

/// Little-endian integers of `B` bytes as i64 (`None` for one past i64's range).
fn ints<const B: usize>(data: &[u8], f: impl Fn([u8; B]) -> Option<i64>) -> Vec<Option<i64>> {
    data.chunks_exact(B)
        .map(|b| f(b.try_into().expect("B bytes")))
        .collect()
}

/// The labels of tensor `name`: shape `N`, an integer dtype, each ≥ 0.
fn labels(path: &Path, t: &TensorView, name: &str) -> Result<Vec<i64>> {
    let err = |problem: String| bad(path, format!("tensor {name}: {problem}"));
    if t.shape().len() != 1 {
        return Err(err(format!(
            "shape {:?} has {} dimensions; labels are N (1)",
            t.shape(),
            t.shape().len()
        )));
    }
    let d = t.data();
    let v = match t.dtype() {
        Dtype::U8 => ints::<1>(d, |b| Some(b[0].into())),
        Dtype::I8 => ints::<1>(d, |b| Some(i8::from_le_bytes(b).into())),
        Dtype::I16 => ints::<2>(d, |b| Some(i16::from_le_bytes(b).into())),
        Dtype::U16 => ints::<2>(d, |b| Some(u16::from_le_bytes(b).into())),
        Dtype::I32 => ints::<4>(d, |b| Some(i32::from_le_bytes(b).into())),
        Dtype::U32 => ints::<4>(d, |b| Some(u32::from_le_bytes(b).into())),
        Dtype::I64 => ints::<8>(d, |b| Some(i64::from_le_bytes(b))),
        Dtype::U64 => ints::<8>(d, |b| i64::try_from(u64::from_le_bytes(b)).ok()),
        other => {
            return Err(err(format!(
                "dtype {other:?}; labels are integers (U8, I8, I16, U16, I32, U32, I64 or U64)"
            )));
        }
    };
    v.into_iter()
        .enumerate()
        .map(|(i, l)| match l {
            Some(l) if l >= 0 => Ok(l),
            Some(l) => Err(err(format!(
                "label {l} at index {i}: labels are classes 0, 1, 2, ..."
            ))),
            None => Err(err(format!(
                "label at index {i} is past 2^63 − 1: labels are classes 0, 1, 2, ..."
            ))),
        })
        .collect()
}
