//! Datasets from either source into the same sets: safetensors files (made here with the
//! `safetensors` crate, as PyTorch's or NumPy's `save_file` makes them) and IDX folders of
//! any image size and channel count, plain or gzipped; every malformed file an error
//! naming the file and the tensor; per-channel normalisation. With the `train` feature:
//! the sets as normalised tensors, the model-agnostic fit check, and `train-gpu --data`.

#[path = "../kernels-tests/common/mod.rs"]
mod common;

use microunify::data::safetensors::{MAX_DATASET_BYTES, parse};
use microunify::data::{DataSource, Normalization, Pixels, channel_stats};
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use std::path::{Path, PathBuf};

/// A fresh (emptied) scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("datasets-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// One tensor for [`file`]: name, dtype, shape, little-endian bytes.
type Entry = (&'static str, Dtype, Vec<usize>, Vec<u8>);

/// The bytes of a safetensors file holding `entries`.
fn file(entries: &[Entry]) -> Vec<u8> {
    let views: Vec<(&str, TensorView)> = entries
        .iter()
        .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn i64s(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A 3×8×8 dataset of bytes: 10 training and 4 test images whose channel `c` holds values
/// around `40 + 80·c`; labels `i % 5` (I64 for training, U8 for test).
fn rgb_entries() -> Vec<Entry> {
    let images = |n: usize| -> Vec<u8> {
        (0..n * 3 * 64)
            .map(|i| (40 + 80 * (i / 64 % 3) + i % 13) as u8)
            .collect()
    };
    let labels = |n: usize| (0..n as i64).map(|i| i % 5).collect::<Vec<_>>();
    vec![
        ("train.x", Dtype::U8, vec![10, 3, 8, 8], images(10)),
        ("train.y", Dtype::I64, vec![10], i64s(&labels(10))),
        ("test.x", Dtype::U8, vec![4, 3, 8, 8], images(4)),
        (
            "test.y",
            Dtype::U8,
            vec![4],
            labels(4).iter().map(|&l| l as u8).collect(),
        ),
    ]
}

#[test]
fn a_safetensors_dataset_of_3x8x8_bytes_loads() {
    let (train, test) = parse(Path::new("d.safetensors"), &file(&rgb_entries())).unwrap();
    assert_eq!((train.shape, train.len(), test.len()), ([3, 8, 8], 10, 4));
    assert_eq!(train.labels, [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]);
    assert_eq!(test.labels, [0, 1, 2, 3]);
    assert_eq!(train.from.images, "d.safetensors, tensor train.x");
    assert_eq!(test.from.labels, "d.safetensors, tensor test.y");
    // Bytes are read as byte / 255: each channel's mean is its own.
    let stats = channel_stats(&train);
    for (c, [mean, std]) in stats.iter().enumerate() {
        let expect = (40.0 + 80.0 * c as f64 + 6.0) / 255.0;
        assert!((mean - expect).abs() < 0.01 && *std > 0.0, "{stats:?}");
    }
    // Float images are taken as they are.
    let mut e = rgb_entries();
    e[0] = (
        "train.x",
        Dtype::F32,
        vec![10, 3, 8, 8],
        f32s(&vec![-2.5; 10 * 192]),
    );
    let (train, _) = parse(Path::new("d"), &file(&e)).unwrap();
    assert_eq!(train.pixels, Pixels::F32(vec![-2.5; 10 * 192]));
}

#[test]
fn labels_of_every_integer_dtype_load() {
    let labels = [0u8, 3, 1, 2];
    for (dtype, width, signed) in [
        (Dtype::U8, 1, false),
        (Dtype::I8, 1, true),
        (Dtype::I16, 2, true),
        (Dtype::U16, 2, false),
        (Dtype::I32, 4, true),
        (Dtype::U32, 4, false),
        (Dtype::I64, 8, true),
        (Dtype::U64, 8, false),
    ] {
        let bytes: Vec<u8> = labels
            .iter()
            .flat_map(|&l| {
                let mut b = vec![0; width];
                b[0] = l;
                b
            })
            .collect();
        let mut e = rgb_entries();
        e[3] = ("test.y", dtype, vec![4], bytes);
        let (_, test) = parse(Path::new("d"), &file(&e)).unwrap();
        assert_eq!(test.labels, [0, 3, 1, 2], "{dtype:?}");
        if signed {
            // -1 in that width: every byte 0xff.
            let mut e = rgb_entries();
            e[3] = ("test.y", dtype, vec![4], vec![0xff; 4 * width]);
            let err = parse(Path::new("d"), &file(&e)).unwrap_err().to_string();
            assert_eq!(
                err, "d: tensor test.y: label -1 at index 0: labels are classes 0, 1, 2, ...",
                "{dtype:?}"
            );
        }
    }
}

/// `rgb_entries` with entry `i` replaced by `with` (or removed).
fn changed(i: usize, with: Option<Entry>) -> Vec<u8> {
    let mut e = rgb_entries();
    match with {
        Some(t) => e[i] = t,
        None => {
            e.remove(i);
        }
    }
    file(&e)
}

#[test]
fn every_problem_of_a_safetensors_dataset_names_the_file_and_the_tensor() {
    let p = Path::new("d.safetensors");
    let mut nan = vec![0.5f32; 10 * 192];
    nan[192 + 64 + 8 + 3] = f32::NAN;
    let mut inf = vec![0.5f32; 4 * 192];
    inf[5] = f32::NEG_INFINITY;
    let mut extra = rgb_entries();
    extra.push(("val.x", Dtype::U8, vec![1], vec![0]));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (changed(1, None), "d.safetensors: no tensor train.y"),
        (changed(2, None), "d.safetensors: no tensor test.x"),
        (
            changed(
                0,
                Some(("train.x", Dtype::U8, vec![10, 8, 8], vec![0; 640])),
            ),
            "d.safetensors: tensor train.x: shape [10, 8, 8] has 3 dimensions; images are \
             N×C×H×W (4) (one channel: add its axis, e.g. x.unsqueeze(1) or x[:, None])",
        ),
        (
            changed(
                1,
                Some(("train.y", Dtype::I64, vec![10, 1], i64s(&[0; 10]))),
            ),
            "d.safetensors: tensor train.y: shape [10, 1] has 2 dimensions; labels are N (1)",
        ),
        (
            changed(
                0,
                Some((
                    "train.x",
                    Dtype::F64,
                    vec![10, 3, 8, 8],
                    vec![0; 10 * 192 * 8],
                )),
            ),
            "d.safetensors: tensor train.x: dtype F64; images are U8 (read as byte / 255) or F32",
        ),
        (
            changed(3, Some(("test.y", Dtype::F32, vec![4], f32s(&[0.0; 4])))),
            "d.safetensors: tensor test.y: dtype F32; labels are integers (U8, I8, I16, U16, \
             I32, U32, I64 or U64)",
        ),
        (
            changed(1, Some(("train.y", Dtype::I64, vec![9], i64s(&[0; 9])))),
            "d.safetensors: tensor train.y: 9 labels for the 10 images of train.x",
        ),
        (
            changed(
                2,
                Some(("test.x", Dtype::U8, vec![4, 1, 8, 8], vec![0; 256])),
            ),
            "d.safetensors: tensor test.x: images of 1×8×8, but the 10 images of train.x are \
             3×8×8",
        ),
        (
            changed(
                0,
                Some(("train.x", Dtype::F32, vec![10, 3, 8, 8], f32s(&nan))),
            ),
            "d.safetensors: tensor train.x: NaN at index 267 (image 1, channel 1, row 1, \
             column 3): images must be finite",
        ),
        (
            changed(
                2,
                Some(("test.x", Dtype::F32, vec![4, 3, 8, 8], f32s(&inf))),
            ),
            "d.safetensors: tensor test.x: -inf at index 5 (image 0, channel 0, row 0, \
             column 5): images must be finite",
        ),
        (
            changed(
                1,
                Some((
                    "train.y",
                    Dtype::I16,
                    vec![10],
                    [vec![0; 18], vec![0xfe, 0xff]].concat(),
                )),
            ),
            "d.safetensors: tensor train.y: label -2 at index 9: labels are classes 0, 1, 2, ...",
        ),
        (
            changed(
                3,
                Some((
                    "test.y",
                    Dtype::U64,
                    vec![4],
                    [vec![0; 24], vec![0xff; 8]].concat(),
                )),
            ),
            "d.safetensors: tensor test.y: label at index 3 is past 2^63 − 1",
        ),
        (
            file(&[
                ("train.x", Dtype::U8, vec![0, 3, 8, 8], vec![]),
                ("train.y", Dtype::U8, vec![0], vec![]),
                rgb_entries()[2].clone(),
                rgb_entries()[3].clone(),
            ]),
            "d.safetensors: tensor train.x: no images (shape [0, 3, 8, 8])",
        ),
        (
            changed(2, Some(("test.x", Dtype::U8, vec![4, 3, 0, 8], vec![]))),
            "d.safetensors: tensor test.x: images of 3×0×8 (channels×height×width) hold no pixels",
        ),
        (
            file(&extra),
            "d.safetensors: holds tensor val.x, which a dataset does not have (it holds \
             exactly train.x, train.y, test.x, test.y)",
        ),
        (
            b"not a safetensors file at all".to_vec(),
            "d.safetensors: not a valid safetensors file: ",
        ),
    ];
    for (bytes, needle) in cases {
        let e = parse(p, &bytes).unwrap_err().to_string();
        assert!(e.starts_with(needle), "expected {needle:?}, got {e:?}");
    }
}

#[test]
fn a_file_too_large_to_hold_is_refused_unread() {
    let dir = scratch("huge");
    let path = dir.join("huge.safetensors");
    // Sparse: it takes no disk space, and the loader must refuse it before reading.
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(MAX_DATASET_BYTES + 1).unwrap();
    let e = DataSource::Safetensors(path.clone())
        .load()
        .unwrap_err()
        .to_string();
    let start = format!(
        "{}: is {} bytes, more than the ",
        path.display(),
        MAX_DATASET_BYTES + 1
    );
    assert!(e.starts_with(&start), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An IDX file of unsigned bytes.
fn idx(dims: &[usize], body: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for &d in dims {
        v.extend((d as u32).to_be_bytes());
    }
    v.extend_from_slice(body);
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Writes an IDX dataset of `counts` images of `dims` (`[H, W]` or `[C, H, W]`) into `dir`,
/// gzipped or plain, with pixel `i` of the file `i % 251` and labels `i % 10`.
fn idx_folder(dir: &Path, dims: &[usize], counts: [usize; 2], gz: bool) {
    let images = if dims.len() == 2 { "idx3" } else { "idx4" };
    for (prefix, n) in ["train", "t10k"].into_iter().zip(counts) {
        let shape = [&[n], dims].concat();
        let body: Vec<u8> = (0..shape.iter().product::<usize>())
            .map(|i| (i % 251) as u8)
            .collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        for (name, bytes) in [
            (
                format!("{prefix}-images-{images}-ubyte"),
                idx(&shape, &body),
            ),
            (format!("{prefix}-labels-idx1-ubyte"), idx(&[n], &labels)),
        ] {
            let (name, bytes) = if gz {
                (format!("{name}.gz"), gzip(&bytes))
            } else {
                (name, bytes)
            };
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

#[test]
fn idx_folders_of_any_image_shape_load() {
    let dir = scratch("idx-14x56");
    idx_folder(&dir, &[14, 56], [12, 5], true);
    let (train, test) = DataSource::IdxDir(dir.clone()).load().unwrap();
    assert_eq!((train.shape, train.len(), test.len()), ([1, 14, 56], 12, 5));
    assert_eq!(train.labels[..3], [0, 1, 2]);
    assert_eq!(
        train.from.images,
        dir.join("train-images-idx3-ubyte.gz").display().to_string()
    );
    let Pixels::U8(px) = &test.pixels else {
        panic!("IDX pixels are bytes")
    };
    assert_eq!((px.len(), px[300]), (5 * 784, (300 % 251) as u8));

    let dir = scratch("idx-3x8x8");
    idx_folder(&dir, &[3, 8, 8], [6, 2], false);
    let (train, test) = DataSource::IdxDir(dir.clone()).load().unwrap();
    assert_eq!(
        (train.shape, test.shape, train.len()),
        ([3, 8, 8], [3, 8, 8], 6)
    );

    // Test images of another shape than the training images.
    std::fs::write(
        dir.join("t10k-images-idx4-ubyte"),
        idx(&[2, 1, 8, 8], &[0; 128]),
    )
    .unwrap();
    let e = DataSource::IdxDir(dir.clone())
        .load()
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "{}: the test images are 1×8×8, but the training images ({}) are 3×8×8",
            dir.join("t10k-images-idx4-ubyte").display(),
            dir.join("train-images-idx4-ubyte").display()
        )
    );
    // Only this test's own folder: the scratch root is shared with tests still running.
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn normalisation_takes_one_pair_or_one_per_channel() {
    let (train, _) = parse(Path::new("d.safetensors"), &file(&rgb_entries())).unwrap();
    let two: Normalization = "0.5,0.25;0.5,0.25".parse().unwrap();
    let e = two.stats(&train).unwrap_err().to_string();
    assert_eq!(
        e,
        "normalize \"0.5,0.25;0.5,0.25\": 2 MEAN,STD pairs, but the images of d.safetensors, \
         tensor train.x are 3×8×8 (3 channels): give one pair per channel, or one for all"
    );
    let three: Normalization = "0,1;0,2;0,3".parse().unwrap();
    assert_eq!(
        three.stats(&train).unwrap(),
        [[0.0, 1.0], [0.0, 2.0], [0.0, 3.0]]
    );
}

#[cfg(feature = "train")]
mod tensors {
    use super::*;
    use microunify::train::data::{self, ModelInput};
    use microunify::train::models::ModelKind;
    use tch::{Device, Kind, Tensor};

    fn write(dir: &Path, name: &str, entries: &[Entry]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, file(entries)).unwrap();
        path
    }

    /// Per-channel mean and std of `[N, C, H, W]` images.
    fn moments(images: &Tensor) -> (Vec<f64>, Vec<f64>) {
        let dims: &[i64] = &[0, 2, 3];
        let mean = images.mean_dim(dims, false, Kind::Double);
        let std = images.std_dim(dims, false, false);
        (
            Vec::<f64>::try_from(mean).unwrap(),
            Vec::<f64>::try_from(std.to_kind(Kind::Double)).unwrap(),
        )
    }

    #[test]
    fn loaded_sets_are_normalised_per_channel_with_the_training_stats() {
        let dir = scratch("load-rgb");
        let path = write(&dir, "d.safetensors", &rgb_entries());
        let source = DataSource::Safetensors(path.clone());
        let d = data::load(&source, Device::Cpu, &Normalization::Training).unwrap();
        assert_eq!((d.input, d.classes), ([3, 8, 8], 5));
        assert_eq!(d.origin, path.display().to_string());
        assert_eq!(d.train.images.size(), [10, 3, 8, 8]);
        assert_eq!(d.test.labels.kind(), Kind::Int64);
        let (train, _) = source.load().unwrap();
        assert_eq!(d.stats, channel_stats(&train));
        let (mean, std) = moments(&d.train.images);
        for c in 0..3 {
            assert!(
                mean[c].abs() < 1e-5 && (std[c] - 1.0).abs() < 1e-5,
                "{mean:?} {std:?}"
            );
        }
        // The test set with the training set's stats (not its own).
        let (test, _) = moments(&d.test.images);
        let own = channel_stats(&source.load().unwrap().1);
        for c in 0..3 {
            let expect = (own[c][0] - d.stats[c][0]) / d.stats[c][1];
            assert!((test[c] - expect).abs() < 1e-5, "{test:?}");
        }
        // None: bytes / 255 as they are; given pairs, exactly.
        let none = data::load(&source, Device::Cpu, &Normalization::None).unwrap();
        assert_eq!(none.stats, [[0.0, 1.0]; 3]);
        let first = f64::try_from(none.train.images.get(0).get(1).get(0).get(0)).unwrap();
        assert!((first - 132.0 / 255.0).abs() < 1e-6, "{first}");
        let given = data::load(&source, Device::Cpu, &"0.5,0.25".parse().unwrap()).unwrap();
        let v = f64::try_from(given.train.images.get(0).get(1).get(0).get(0)).unwrap();
        assert!((v - (132.0 / 255.0 - 0.5) / 0.25).abs() < 1e-5, "{v}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn mnist_is_normalised_with_its_usual_stats() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/mnist");
        let d = data::load(
            &DataSource::IdxDir(dir),
            Device::Cpu,
            &Normalization::Training,
        )
        .unwrap();
        let [[mean, std]] = d.stats[..] else {
            panic!("one channel: {:?}", d.stats)
        };
        assert!(
            (mean - 0.1307).abs() < 5e-5 && (std - 0.3081).abs() < 5e-5,
            "{mean} {std}"
        );
        assert_eq!((d.input, d.classes), ([1, 28, 28], 10));
        d.check_fits(&ModelKind::Lenet5.into()).unwrap();
    }

    #[test]
    fn the_fit_check_names_both_shapes_and_the_files() {
        let dir = scratch("fit");
        let path = write(&dir, "rgb.safetensors", &rgb_entries());
        let d = data::load(
            &DataSource::Safetensors(path.clone()),
            Device::Cpu,
            &Normalization::Training,
        )
        .unwrap();
        let e = d
            .check_fits(&ModelKind::Lenet5.into())
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "the dataset's images are 3×8×8 (from {}, tensor train.x), but model lenet5 \
                 takes 1×28×28",
                path.display()
            )
        );
        let fits = ModelInput {
            name: "probe.pt".into(),
            input: [3, 8, 8],
            classes: 5,
        };
        d.check_fits(&fits).unwrap();
        d.train.check_fits(&fits, "training").unwrap();
        let few = ModelInput { classes: 4, ..fits };
        let e = d.check_fits(&few).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "label 4 at index 4 of {}, tensor train.y is not a class of model probe.pt (it \
                 has 4: labels 0 to 3)",
                path.display()
            )
        );
        let fewer = ModelInput { classes: 3, ..few };
        let e = d.test.check_fits(&fewer, "test").unwrap_err().to_string();
        assert!(
            e.starts_with("label 3 at index 3 of the test labels"),
            "{e}"
        );

        let idx_dir = dir.join("idx");
        std::fs::create_dir_all(&idx_dir).unwrap();
        idx_folder(&idx_dir, &[14, 56], [12, 5], true);
        let d = data::load(
            &DataSource::IdxDir(idx_dir.clone()),
            Device::Cpu,
            &Normalization::Training,
        )
        .unwrap();
        let e = d
            .check_fits(&ModelKind::Lenet300100.into())
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "the dataset's images are 1×14×56 (from {}), but model lenet-300-100 takes 1×28×28",
                idx_dir.join("train-images-idx3-ubyte.gz").display()
            )
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    const EXE: &str = env!("CARGO_BIN_EXE_train-gpu");

    /// Runs train-gpu with `args`; returns (success, stderr).
    fn train_gpu(args: &[&str]) -> (bool, String) {
        let out = std::process::Command::new(EXE)
            .args(args)
            .env("OMP_NUM_THREADS", "1")
            .env("RUST_LIB_BACKTRACE", "0")
            .env_remove(microunify::fsio::KILL_AT_ENV)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        (out.status.success(), stderr)
    }

    fn fails_with(args: &[&str], needle: &str) {
        let (ok, stderr) = train_gpu(args);
        assert!(!ok, "{args:?} succeeded");
        assert!(
            stderr.contains(needle),
            "{args:?}: expected {needle:?} in {stderr}"
        );
    }

    /// The first `n` training and `m` test images of MNIST as a safetensors dataset, with
    /// F32 images in [0, 1] (as torchvision's ToTensor gives them) and I64 labels.
    fn mnist_file(dir: &Path, n: usize, m: usize) -> PathBuf {
        let mnist = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/mnist");
        let (train, test) = microunify::data::load_mnist_dir(&mnist).unwrap();
        let mut entries = Vec::new();
        for ((x, y), (set, k)) in microunify::data::safetensors::SETS
            .into_iter()
            .zip([(&train, n), (&test, m)])
        {
            let px: Vec<f32> = set.images[..k * 784]
                .iter()
                .map(|&p| f32::from(p) / 255.0)
                .collect();
            let labels: Vec<i64> = set.labels[..k].iter().map(|&l| l.into()).collect();
            entries.push((x, Dtype::F32, vec![k, 1, 28, 28], f32s(&px)));
            entries.push((y, Dtype::I64, vec![k], i64s(&labels)));
        }
        write(dir, "mnist.safetensors", &entries)
    }

    #[test]
    fn train_gpu_refuses_what_does_not_fit_before_a_run_starts() {
        let dir = scratch("refusals");
        let out = dir.join("run");
        let o = out.to_str().unwrap();
        let rgb = write(&dir, "rgb.safetensors", &rgb_entries());
        let r = rgb.to_str().unwrap();
        fails_with(
            &["--data", r, "--data-dir", "x", "--out", o],
            "the argument '--data <FILE>' cannot be used with '--data-dir <DIR>'",
        );
        fails_with(
            &["--data", r, "--dataset", "fashion-mnist", "--out", o],
            "cannot be used with",
        );
        fails_with(
            &["--normalize", "0.5", "--out", o],
            "normalize \"0.5\": pair 1 \"0.5\" is not MEAN,STD",
        );
        let toml = dir.join("both.toml");
        std::fs::write(&toml, "data = \"d.safetensors\"\ndata_dir = \"x\"\n").unwrap();
        fails_with(
            &["--config", toml.to_str().unwrap(), "--out", o],
            "give either `data` (a safetensors file) or `dataset`/`data_dir` (IDX files), not both",
        );
        // A file's data source is replaced by the command line's, not combined with it.
        fails_with(
            &["--config", toml.to_str().unwrap(), "--data", r, "--out", o],
            "the dataset's images are 3×8×8",
        );
        fails_with(
            &["--data", r, "--out", o],
            &format!(
                "error: the dataset's images are 3×8×8 (from {r}, tensor train.x), but model \
                 lenet5 takes 1×28×28"
            ),
        );
        fails_with(
            &["--normalize", "0,1;0,1", "--out", o],
            "normalize \"0,1;0,1\": 2 MEAN,STD pairs, but the images of",
        );
        let missing = dir.join("missing.safetensors");
        fails_with(
            &["--data", missing.to_str().unwrap(), "--out", o],
            &format!("{}: ", missing.display()),
        );
        assert!(
            !out.join("config.toml").exists(),
            "a refused dataset started a run"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn train_gpu_runs_on_a_safetensors_dataset() {
        if common::gpu().is_none() {
            return;
        }
        let dir = scratch("st-run");
        let data = mnist_file(&dir, 600, 200);
        let out = dir.join("run");
        let mut args = vec![
            "--data",
            data.to_str().unwrap(),
            "--normalize",
            "0.1307,0.3081",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend([
            "--model",
            "lenet-300-100",
            "--prune",
            "0.5",
            "--unify",
            "0.3",
            "--dense-epochs",
            "1",
            "--rounds",
            "1",
            "--retrain-epochs",
            "1",
            "--no-epoch-eval",
        ]);
        let (ok, stderr) = train_gpu(&args);
        assert!(ok, "{stderr}");
        assert!(
            stderr.contains(&format!(
                "600 train / 200 test images from {}",
                data.display()
            )),
            "{stderr}"
        );
        let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
        let abs = std::path::absolute(&data).unwrap();
        assert!(
            config.contains(&format!("data = {:?}", abs.display().to_string()))
                && config.contains("normalize = \"0.1307,0.3081\"")
                && !config.contains("\ndataset =")
                && !config.contains("\ndata_dir ="),
            "{config}"
        );
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
        let acc = report["final_accuracy"].as_f64().unwrap();
        assert!(acc > 50.0, "chance is 10%: {acc}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
