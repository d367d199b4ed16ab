//! The ADMM pipeline end to end on a tiny budget (METHOD.md §3), on the test adapter
//! (lavapipe here): exact block counts, no structure violations, falling primal residual,
//! accuracy far above chance, and the `train-gpu` binary's run folder and errors.
#![cfg(feature = "train")]

#[path = "../kernels-tests/common/mod.rs"]
mod common;

use microunify::block::Ratios;
use microunify::data::load_mnist_dir;
use microunify::format::CompressedFile;
use microunify::train::admm::{self, AdmmConfig, Targets};
use microunify::train::data::TensorSet;
use microunify::train::models::ModelKind;
use std::path::Path;
use std::process::Output;

use common::gpu;

fn mnist() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/mnist")
}

#[test]
fn a_tiny_admm_run_keeps_the_structure_and_learns() {
    microunify::train::denormals::flush_denormals();
    let Some(gpu) = gpu() else { return };
    let (train, test) = load_mnist_dir(&mnist()).unwrap();
    let train = TensorSet::new(&train, tch::Device::Cpu).take(3000);
    let test = TensorSet::new(&test, tch::Device::Cpu).take(2000);
    let r = |p, u| Ratios { prune: p, unify: u };
    let cfg = AdmmConfig {
        model: ModelKind::Lenet300100,
        targets: Targets::PerLayer(vec![
            ("fc1".into(), r(0.6, 0.3)),
            ("fc2".into(), r(0.5, 0.3)),
            ("fc3".into(), r(0.2, 0.3)),
        ]),
        rho0: 0.5,
        gamma: 2.0,
        rho_max: 10.0,
        rounds: 2,
        dense_epochs: 2,
        retrain_epochs: 1,
        eval_every_epoch: false,
        ..AdmmConfig::demo()
    };
    let mut lines = Vec::new();
    let out = admm::run(&cfg, &gpu, &train, &test, &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    let rep = &out.report;
    eprintln!("{}", lines.join("\n"));
    eprintln!("{}", serde_json::to_string_pretty(rep).unwrap());

    assert_eq!(rep.structure_violations, 0);
    // Exact counts per layer: ⌈r·N⌉ pruned, then ⌈r·N⌉ unified.
    let Targets::PerLayer(targets) = &cfg.targets else {
        unreachable!()
    };
    let shapes = [[300, 784], [100, 300], [10, 100]];
    for ((l, (name, ratios)), shape) in rep.layers.iter().zip(targets).zip(shapes) {
        assert_eq!(&l.name, name);
        assert_eq!(l.shape, shape);
        let n = shape[0].div_ceil(4) * shape[1].div_ceil(4);
        assert_eq!(l.dense + l.unified + l.pruned, n, "{name}");
        let (p, u) = ratios.counts(n);
        assert_eq!((l.pruned, l.unified), (p, u), "{name}");
        assert!(l.ratio > 1.0 && l.bits > 0);
    }
    assert!(rep.final_accuracy > 60.0, "final {}", rep.final_accuracy);
    assert!(rep.dense_accuracy > 80.0, "dense {}", rep.dense_accuracy);
    assert_eq!(rep.admm.len(), 2);
    for a in &rep.admm {
        assert!(a.primal.is_finite() && a.dual.is_finite() && a.primal > 0.0);
    }
    assert!(
        rep.admm[1].primal < rep.admm[0].primal,
        "primal {} -> {}",
        rep.admm[0].primal,
        rep.admm[1].primal
    );
    assert_eq!(rep.admm[1].rho, 1.0);
    assert_eq!(out.residuals.len(), 2 * 3);
    assert!(
        out.residuals
            .iter()
            .all(|r| r.primal.is_finite() && r.dual.is_finite())
    );
    let t = &rep.timings;
    assert!(t.projection > 0.0 && t.projection < t.admm, "{t:?}");

    // report.json has exactly the keys of issue 4.
    let v = serde_json::to_value(rep).unwrap();
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&v),
        [
            "admm",
            "blocks",
            "compression_ratio",
            "dense_accuracy",
            "final_accuracy",
            "hard_projection_accuracy",
            "layers",
            "structure_violations",
            "timings"
        ]
    );
    assert_eq!(keys(&v["blocks"]), ["dense", "pruned", "unified"]);
    assert_eq!(
        keys(&v["layers"][0]),
        [
            "bits", "block", "dense", "name", "pruned", "ratio", "shape", "unified"
        ]
    );
    assert_eq!(keys(&v["admm"][0]), ["dual", "primal", "rho", "round"]);
    assert_eq!(
        keys(&v["timings"]),
        ["admm", "dense", "eval", "projection", "retrain"]
    );

    // The compressed file round-trips with full validation and holds the biases.
    let bytes = out.file.to_bytes().unwrap();
    let back = CompressedFile::from_bytes(&bytes).unwrap();
    assert_eq!(back.layers.len(), 3);
    assert!(back.passthrough.contains_key("fc1.bias"));
    for (l, states) in back.layers.iter().zip(&out.states) {
        assert_eq!(&l.matrix.states, states);
    }
}

#[test]
fn zero_rounds_is_the_one_shot_baseline() {
    microunify::train::denormals::flush_denormals();
    let Some(gpu) = gpu() else { return };
    let (train, test) = load_mnist_dir(&mnist()).unwrap();
    let train = TensorSet::new(&train, tch::Device::Cpu).take(1000);
    let test = TensorSet::new(&test, tch::Device::Cpu).take(500);
    let cfg = AdmmConfig {
        model: ModelKind::Lenet300100,
        targets: Targets::Global(Ratios {
            prune: 0.7,
            unify: 0.2,
        }),
        rounds: 0,
        dense_epochs: 1,
        retrain_epochs: 1,
        ..AdmmConfig::demo()
    };
    let out = admm::run(&cfg, &gpu, &train, &test, &mut |_| {}).unwrap();
    let rep = &out.report;
    assert!(rep.admm.is_empty() && out.residuals.is_empty());
    assert_eq!(rep.timings.projection, 0.0);
    assert_eq!(rep.structure_violations, 0);
    let b = rep.blocks;
    let (p, u) = cfg_counts(0.7, 0.2, b.dense + b.unified + b.pruned);
    assert_eq!((b.pruned, b.unified), (p, u));
    assert!(rep.final_accuracy > 50.0, "{}", rep.final_accuracy);
}

fn cfg_counts(prune: f64, unify: f64, n: usize) -> (usize, usize) {
    Ratios { prune, unify }.counts(n)
}

const EXE: &str = env!("CARGO_BIN_EXE_train-gpu");

fn train_gpu(args: &[&str]) -> Output {
    common::run_bin(EXE, args)
}

fn fails_with(args: &[&str], needle: &str) {
    common::fails_with(EXE, args, needle)
}

#[test]
fn bad_input_gets_a_clear_error() {
    let tmp = std::env::temp_dir().join(format!("train-gpu-errors-{}", std::process::id()));
    let out = tmp.to_str().unwrap();
    fails_with(
        &["--data-dir", "/nonexistent/mnist", "--out", out],
        "missing train-images-idx3-ubyte",
    );
    // A corrupt dataset: wrong magic.
    let bad = tmp.join("bad-data");
    std::fs::create_dir_all(&bad).unwrap();
    for f in [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ] {
        std::fs::write(bad.join(f), b"not an idx file at all").unwrap();
    }
    fails_with(
        &["--data-dir", bad.to_str().unwrap(), "--out", out],
        "loading the dataset",
    );
    fails_with(
        &[
            "--ratios",
            "conv1=1.2/0,conv2=0.7/0.2,fc1=0.9/0,fc2=0.5/0.3",
        ],
        "prune must lie in [0, 1]",
    );
    fails_with(&["--ratios", "conv1=0.2"], "is not NAME=PRUNE/UNIFY");
    fails_with(
        &["--ratios", "conv1=0.2/0.4,conv2=0.7/0.2,fc1=0.95/0.04"],
        "no ratios for layer \"fc2\"",
    );
    fails_with(&["--block", "16x16"], "larger than layer fc2 allows");
    fails_with(&["--block", "64x64"], "at most 32 per side");
    fails_with(&["--prune", "0.7", "--unify", "0.5"], "must not exceed 1");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn the_binary_writes_a_run_folder() {
    if gpu().is_none() {
        return;
    }
    let tmp = std::env::temp_dir().join(format!("train-gpu-run-{}", std::process::id()));
    let o = train_gpu(&[
        "--model",
        "lenet-300-100",
        "--prune",
        "0.5",
        "--unify",
        "0.3",
        "--global",
        "--limit-train",
        "1000",
        "--limit-test",
        "500",
        "--dense-epochs",
        "1",
        "--rounds",
        "2",
        "--retrain-epochs",
        "1",
        "--out",
        tmp.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "train-gpu failed: {stderr}");
    assert!(stderr.contains("ADMM round 2/2"), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["structure_violations"], 0);
    let blocks = &report["blocks"];
    let total = 75 * 196 + 25 * 75 + 3 * 25;
    let n = |k: &str| blocks[k].as_u64().unwrap() as usize;
    assert_eq!(n("dense") + n("unified") + n("pruned"), total);
    let (p, u) = Ratios {
        prune: 0.5,
        unify: 0.3,
    }
    .counts(total);
    assert_eq!(
        (n("pruned"), n("unified")),
        (p, u),
        "global counts are exact"
    );
    let file = CompressedFile::read(&tmp.join("compressed.safetensors")).unwrap();
    assert_eq!(file.layers.len(), 3);
    let csv = std::fs::read_to_string(tmp.join("residuals.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 2 * 3);
    for f in ["config.json", "report.md", "final.ot"] {
        assert!(tmp.join(f).is_file(), "{f}");
    }
    assert!(!tmp.join("final.ot.tmp").exists());
    let _ = std::fs::remove_dir_all(&tmp);
}
