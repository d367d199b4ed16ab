//! `train-gpu sensitivity` on a briefly trained LeNet-300-100 and a tiny copy of MNIST:
//! the three outputs, one CSV row per (layer, grid point), zero ratios costing exactly
//! nothing, weights restored exactly, a proposal that parses, reaches its target by the
//! docs/METHOD.md §1 count (recomputed here), is the best the measurements allow, and
//! runs; and the refusals (training flags, untrained built-ins, foreign folders,
//! unreachable targets).
#![cfg(feature = "train")]

use clap::ValueEnum;
use microunify::block::{SelectionMode, storage_bits};
use microunify::cpu::projection::project;
use microunify::data::load_mnist_dir;
use microunify::train::config::{Targets, layer_plan};
use microunify::train::data::TensorSet;
use microunify::train::fit::evaluate;
use microunify::train::pipeline::load_model;
use microunify::train::sensitivity::{
    Grid, PROPOSAL, SENSITIVITY_CSV, SENSITIVITY_PNG, holdout, measure, ratio,
};
use microunify::train::settings::{FileConfig, Settings};
use microunify::train::tensors::host;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const EXE: &str = env!("CARGO_BIN_EXE_train-gpu");
/// A small grid: 7 points per layer with (0, 0).
const GRID: &str = "0,0.5,0.9/0,0.1,0.4";
const TRAIN_IMAGES: usize = 1000;
const HOLDOUT: usize = 200;

fn train_gpu<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    let mut c = Command::new(EXE);
    c.args(args).env("RUST_LIB_BACKTRACE", "0");
    if std::env::var_os("OMP_NUM_THREADS").is_none() {
        // libtorch must not spin on a busy machine.
        c.env("OMP_NUM_THREADS", "1");
    }
    c.output().unwrap_or_else(|e| panic!("running {EXE}: {e}"))
}

/// Runs train-gpu, which must succeed; returns (stdout, stderr).
fn succeeds<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> (String, String) {
    let out = train_gpu(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    (stdout, stderr)
}

/// Runs train-gpu, which must fail cleanly with `needle` in its stderr.
fn fails_with<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S], needle: &str) {
    let out = train_gpu(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: no {needle:?} in {stderr}"
    );
}

/// A fresh folder `name` in this test process's scratch space.
fn scratch(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("sensitivity-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&p);
    p
}

fn idx(dims: &[usize], body: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for &d in dims {
        v.extend((d as u32).to_be_bytes());
    }
    v.extend_from_slice(body);
    v
}

/// The first 1000 training and 300 test images of MNIST as plain IDX files.
fn tiny_mnist() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let mnist = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/mnist");
        let (train, test) = load_mnist_dir(&mnist).unwrap();
        let dir = scratch("tiny-mnist");
        std::fs::create_dir_all(&dir).unwrap();
        for (set, n, prefix) in [(&train, TRAIN_IMAGES, "train"), (&test, 300, "t10k")] {
            let px = set.rows * set.cols;
            let images = idx(&[n, set.rows, set.cols], &set.images[..n * px]);
            std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
            let labels = idx(&[n], &set.labels[..n]);
            std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
        }
        dir
    })
}

/// `dense.ot` of one dense epoch of LeNet-300-100 on the tiny MNIST (trained once).
fn trained() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let out = scratch("dense");
        let data = tiny_mnist().display().to_string();
        let out_s = out.display().to_string();
        succeeds(&[
            "--model",
            "lenet-300-100",
            "--prune",
            "0.5",
            "--unify",
            "0.3",
            "--dense-epochs",
            "1",
            "--rounds",
            "0",
            "--retrain-epochs",
            "0",
            "--no-epoch-eval",
            "--data-dir",
            &data,
            "--out",
            &out_s,
        ]);
        out.join("dense.ot")
    })
}

/// The sensitivity command's flags on the trained model, into `out`, with `extra` (which
/// replace the default `--grid` and `--holdout`).
fn args(out: &Path, target: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "sensitivity",
        "--model",
        "lenet-300-100",
        "--init",
        &trained().display().to_string(),
        "--data-dir",
        &tiny_mnist().display().to_string(),
        "--target-ratio",
        target,
        "--out",
        &out.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (flag, value) in [("--grid", GRID), ("--holdout", &HOLDOUT.to_string())] {
        if !extra.contains(&flag) {
            v.extend([flag.to_string(), value.to_string()]);
        }
    }
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// A CSV row of `sensitivity.csv`.
#[derive(Debug)]
struct Row {
    layer: String,
    weights: usize,
    prune: f64,
    unify: f64,
    bits: u64,
    ratio: f64,
    increase: f64,
}

fn rows(path: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("layer,weights,prune,unify,bits,ratio,loss,loss_increase,score")
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 9, "{l}");
            let loss: f64 = f[6].parse().unwrap();
            let score: f64 = f[8].parse().unwrap();
            assert!(loss.is_finite() && (0.0..=100.0).contains(&score), "{l}");
            Row {
                layer: f[0].into(),
                weights: f[1].parse().unwrap(),
                prune: f[2].parse().unwrap(),
                unify: f[3].parse().unwrap(),
                bits: f[4].parse().unwrap(),
                ratio: f[5].parse().unwrap(),
                increase: f[7].parse().unwrap(),
            }
        })
        .collect()
}

/// The proposal's settings, read as `train-gpu --config` reads them.
fn proposal(dir: &Path) -> Settings {
    let path = dir.join(PROPOSAL);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("# train-gpu sensitivity"), "{text}");
    FileConfig::parse(&text, &path).unwrap().resolve().unwrap()
}

#[test]
fn measures_every_layer_and_proposes_the_best_ratios_that_reach_the_target() {
    let out = scratch("proposal");
    let target = 8.0;
    let (stdout, stderr) = succeeds(&args(&out, &target.to_string(), &[]));
    assert!(
        stderr.contains("the last 200 of the 1000 training images (indices 800 to 999)"),
        "{stderr}"
    );
    for f in [SENSITIVITY_CSV, SENSITIVITY_PNG, PROPOSAL] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let png = std::fs::read(out.join(SENSITIVITY_PNG)).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // One row per (layer, grid point), each once; zero ratios cost exactly nothing.
    let rows = rows(&out.join(SENSITIVITY_CSV));
    let grid: Grid = GRID.parse().unwrap();
    let layers = ["fc1", "fc2", "fc3"];
    assert_eq!(rows.len(), layers.len() * grid.points.len());
    for (l, name) in layers.iter().enumerate() {
        for (j, r) in grid.points.iter().enumerate() {
            let row = &rows[l * grid.points.len() + j];
            assert_eq!(
                (row.layer.as_str(), row.prune, row.unify),
                (*name, r.prune, r.unify)
            );
            assert_eq!(row.ratio, ratio(row.weights, row.bits));
        }
    }
    for r in rows.iter().filter(|r| r.prune == 0.0 && r.unify == 0.0) {
        assert_eq!(r.increase, 0.0, "{r:?}");
    }
    assert!(
        rows.iter().any(|r| r.increase > 0.1),
        "compression never hurt"
    );

    // The proposal: complete, pretrained, its ratios from the grid.
    let s = proposal(&out);
    assert_eq!(s.admm.dense_epochs, 0);
    assert_eq!(s.admm.init.as_deref(), Some(trained()));
    assert_eq!(s.data_dir.as_deref(), Some(tiny_mnist()));
    let Targets::PerLayer(chosen) = &s.admm.targets else {
        panic!("{:?}", s.admm.targets)
    };
    let chosen: BTreeMap<&str, _> = chosen.iter().map(|(n, r)| (n.as_str(), *r)).collect();
    assert_eq!(chosen.keys().copied().collect::<Vec<_>>(), layers);

    // It reaches the target by the §1 count of the projected trained weights.
    let model = load_model(&s.admm, tch::Device::Cpu, None).unwrap();
    let (specs, mode) = layer_plan(&s.admm, &model.info).unwrap();
    let SelectionMode::PerLayer(ratios) = mode else {
        panic!()
    };
    let (mut weights, mut bits) = (0, 0);
    for ((spec, w), r) in specs.iter().zip(model.weights()).zip(&ratios) {
        let data = host(w).unwrap();
        let p = project(
            std::slice::from_ref(spec),
            &[&data],
            &SelectionMode::PerLayer(vec![*r]),
        )
        .unwrap();
        weights += spec.view.len();
        bits += storage_bits(&spec.grid(), &p[0].states);
    }
    assert!(ratio(weights, bits) >= target, "{}", ratio(weights, bits));
    assert!(
        stdout.contains(&format!(
            "predicted: compression {:.3}x",
            ratio(weights, bits)
        )),
        "{stdout}"
    );

    // No other choice of measured points reaching the target predicts less.
    let per_layer: Vec<Vec<&Row>> = layers
        .iter()
        .map(|n| rows.iter().filter(|r| r.layer == *n).collect())
        .collect();
    let mut best = f64::INFINITY;
    for a in &per_layer[0] {
        for b in &per_layer[1] {
            for c in &per_layer[2] {
                let w = a.weights + b.weights + c.weights;
                if ratio(w, a.bits + b.bits + c.bits) >= target {
                    best = best.min(a.increase + b.increase + c.increase);
                }
            }
        }
    }
    let picked: f64 = per_layer
        .iter()
        .zip(&layers)
        .map(|(rs, n)| {
            let r = chosen[n];
            rs.iter()
                .find(|row| row.prune == r.prune && row.unify == r.unify)
                .unwrap()
                .increase
        })
        .sum();
    assert!(
        (picked - best).abs() < 1e-12,
        "picked {picked}, best {best}"
    );
    let run = scratch("proposal-run");
    assert!(
        stdout.contains(&format!(
            "train-gpu --config {}",
            out.join(PROPOSAL).display()
        )),
        "{stdout}"
    );

    // And it runs (shortened by flags, which override the file).
    let config = out.join(PROPOSAL).display().to_string();
    succeeds(&[
        "--config",
        &config,
        "--rounds",
        "1",
        "--retrain-epochs",
        "0",
        "--limit-train",
        "300",
        "--limit-test",
        "100",
        "--no-epoch-eval",
        "--out",
        &run.display().to_string(),
    ]);
    assert!(run.join("finished.json").is_file());

    // Run again into the same folder: an earlier sensitivity's outputs are replaced.
    succeeds(&args(&out, "4", &[]));
}

#[test]
fn measuring_restores_every_weight_exactly() {
    let set = {
        let (train, _) = load_mnist_dir(tiny_mnist()).unwrap();
        TensorSet::new(&train, tch::Device::Cpu)
    };
    let (slice, which) = holdout(&set, None).unwrap();
    assert_eq!((which.start, which.len, which.of), (900, 100, 1000));
    let file = format!(
        "model = \"lenet-300-100\"\nuniform = [0, 0]\ninit = {:?}\n",
        trained().display().to_string()
    );
    let s = FileConfig::parse(&file, Path::new("t.toml"))
        .unwrap()
        .resolve()
        .unwrap();
    let model = load_model(&s.admm, tch::Device::Cpu, None).unwrap();
    let (specs, _) = layer_plan(&s.admm, &model.info).unwrap();
    let before: Vec<Vec<f32>> = model.weights().iter().map(|w| host(w).unwrap()).collect();
    let grid: Grid = "0.9/0.1".parse().unwrap();
    let mut seen = 0;
    let m = measure(&model, &specs, s.admm.task, &slice, &grid, 64, &mut |_| {
        seen += 1
    })
    .unwrap();
    assert_eq!(seen, specs.len() * 2);
    assert_eq!(m.points.len(), seen);
    for (w, b) in model.weights().iter().zip(&before) {
        let after = host(w).unwrap();
        assert!(
            after.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "a layer was not restored"
        );
    }
    let again = evaluate(&model, s.admm.task, &slice, 64).unwrap();
    assert_eq!(again, m.base);
}

#[test]
fn refusals_are_clear_errors() {
    let out = scratch("refused");
    let a = |extra: &[&str]| args(&out, "4", extra);
    fails_with(
        &a(&["--rounds", "3", "--lr", "0.1"]),
        "trains nothing: drop --rounds, --lr",
    );
    fails_with(&a(&["--grid", "0,2/0"]), "--grid: prune value \"2\"");
    fails_with(
        &a(&["--holdout", "1001"]),
        "--holdout 1001: the training set has 1000",
    );
    fails_with(
        &[
            "sensitivity",
            "--model",
            "lenet-300-100",
            "--target-ratio",
            "4",
            "--out",
            &out.display().to_string(),
        ],
        "give its trained weights with --init",
    );
    fails_with(
        &args(&out, "nan", &[]),
        "--target-ratio must be a positive number",
    );

    // Unreachable: the measurements are written, with no proposal.
    fails_with(
        &args(&out, "1000", &[]),
        "no choice of the grid's points reaches a compression ratio of 1000: the most the grid reaches is",
    );
    assert!(out.join(SENSITIVITY_CSV).is_file() && out.join(SENSITIVITY_PNG).is_file());
    assert!(!out.join(PROPOSAL).exists());

    // A folder with other files is refused unless --force, and they are kept.
    let other = scratch("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    fails_with(
        &args(&other, "4", &[]),
        "holds files train-gpu sensitivity does not write (notes.txt)",
    );
    succeeds(&args(&other, "4", &["--force"]));
    assert_eq!(
        std::fs::read_to_string(other.join("notes.txt")).unwrap(),
        "mine"
    );
    assert!(other.join(PROPOSAL).is_file());
}

/// The fixtures' TorchScript classifier and autoencoder (with their own weights), when
/// the repository has them.
#[test]
fn torchscript_models_are_measured_with_their_own_weights() {
    for (file, task) in [
        ("tiny_cnn_scripted.pt", "classify"),
        ("tiny_autoencoder_scripted.pt", "reconstruct"),
    ] {
        let model = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("assets/models")
            .join(file);
        if !model.is_file() {
            eprintln!("skipped: no {}", model.display());
            continue;
        }
        let out = scratch(file);
        let (stdout, _) = succeeds(&[
            "sensitivity",
            "--model",
            &model.display().to_string(),
            "--task",
            task,
            "--data-dir",
            &tiny_mnist().display().to_string(),
            "--grid",
            "0,0.5/0,0.4",
            "--holdout",
            "100",
            "--target-ratio",
            "1.5",
            "--out",
            &out.display().to_string(),
        ]);
        assert!(
            stdout.contains("predicted: compression"),
            "{file}: {stdout}"
        );
        let s = proposal(&out);
        assert_eq!(s.admm.model.to_string(), model.display().to_string());
        assert_eq!(s.admm.task.to_possible_value().unwrap().get_name(), task);
        assert_eq!(s.admm.init, None);
    }
}
