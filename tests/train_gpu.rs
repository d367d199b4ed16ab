//! The ADMM pipeline end to end on a tiny budget (docs/METHOD.md §3), on the test adapter
//! (lavapipe here): exact block counts, no structure violations, falling primal residual,
//! accuracy far above chance, and the `train-gpu` binary's run folder and errors: `--resume`
//! ending exactly where an uninterrupted run ends (from every phase, and twice), config
//! files, datasets, devices and `--init`. The tests under "Regressions" each failed once.
#![cfg(feature = "train")]

#[path = "../kernels-tests/common/mod.rs"]
mod common;

use microunify::block::Ratios;
use microunify::data::load_mnist_dir;
use microunify::format::CompressedFile;
use microunify::gpu::Gpu;
use microunify::gpu::projection::WAITS_PER_ROUND;
use microunify::train::checkpoint::{Checkpoint, sha256_hex};
use microunify::train::config::{AdmmConfig, Schedule, Targets};
use microunify::train::data::TensorSet;
use microunify::train::models::ModelKind;
use microunify::train::network::ModelSource;
use microunify::train::pipeline::{self, Observer};
use microunify::train::report::RoundReport;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

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
        model: ModelSource::Builtin(ModelKind::Lenet300100),
        targets: Targets::PerLayer(vec![
            ("fc1".into(), r(0.6, 0.3)),
            ("fc2".into(), r(0.5, 0.3)),
            ("fc3".into(), r(0.2, 0.3)),
        ]),
        rho0: 0.5,
        gamma: 2.0,
        rho_max: 10.0,
        // Steady W-steps: with two rounds, a cosine would all but stop the second one.
        admm_schedule: Schedule::Constant,
        rounds: 2,
        dense_epochs: 2,
        retrain_epochs: 1,
        eval_every_epoch: false,
        ..AdmmConfig::demo()
    };
    /// The lines, and the GPU's wait count at each round's end.
    struct Lines<'a>(Vec<String>, &'a Gpu, Vec<u64>);
    impl Observer for Lines<'_> {
        fn round(&mut self, r: &RoundReport) {
            self.0.push(format!("{r:?}"));
            self.2.push(self.1.waits());
        }
        fn note(&mut self, l: &str) {
            self.0.push(l.to_string());
        }
    }
    let mut lines = Lines(Vec::new(), &gpu, Vec::new());
    let out = pipeline::run(&cfg, &gpu, &train, &test, None, &mut lines).unwrap();
    // A round's W-step waits for nothing on the projection's device; its Z/U step (with
    // the rescale of U, as ρ grows) takes the projection's few waits, whatever the layers.
    let round_waits: Vec<u64> = lines.2.windows(2).map(|w| w[1] - w[0]).collect();
    if !gpu.stepwise() {
        assert_eq!(
            round_waits,
            [WAITS_PER_ROUND],
            "waits between the rounds' ends"
        );
    }
    let lines = lines.0;
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

    // report.json has exactly its documented keys.
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
            "final_loss",
            "hard_projection_accuracy",
            "layers",
            "normalization",
            "structure_violations",
            "task",
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
        assert_eq!(&l.matrix.states(), states);
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
        model: ModelSource::Builtin(ModelKind::Lenet300100),
        targets: Targets::Global(Ratios {
            prune: 0.7,
            unify: 0.2,
        }),
        rounds: 0,
        dense_epochs: 1,
        retrain_epochs: 1,
        ..AdmmConfig::demo()
    };
    let out = pipeline::run(&cfg, &gpu, &train, &test, None, &mut pipeline::Quiet).unwrap();
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

/// A train-gpu command with `args`, with `OMP_NUM_THREADS=1` unless the caller set it:
/// libtorch must not spin on a busy machine.
fn command<S: AsRef<OsStr>>(args: &[S]) -> Command {
    let mut c = Command::new(EXE);
    c.args(args);
    if std::env::var_os("OMP_NUM_THREADS").is_none() {
        c.env("OMP_NUM_THREADS", "1");
    }
    // Errors without a captured backtrace: shorter to read, and quicker to print.
    c.env("RUST_LIB_BACKTRACE", "0");
    // Only the tests that mean to kill a process set a kill point.
    c.env_remove(microunify::fsio::KILL_AT_ENV);
    c
}

/// Runs train-gpu with `args` in `cwd` (the package root by default).
fn train_gpu_in<S: AsRef<OsStr>>(cwd: Option<&Path>, args: &[S]) -> Output {
    let mut c = command(args);
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    c.output().unwrap_or_else(|e| panic!("running {EXE}: {e}"))
}

fn train_gpu<S: AsRef<OsStr>>(args: &[S]) -> Output {
    train_gpu_in(None, args)
}

/// The binary must fail (non-zero exit), without a panic, with `needle` in its stderr,
/// which is returned.
fn fails_with<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S], needle: &str) -> String {
    let out = train_gpu(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: expected {needle:?} in stderr, got: {stderr}"
    );
    stderr
}

/// The binary must succeed; returns its stderr (the progress lines).
fn succeeds<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let out = train_gpu(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    stderr
}

#[test]
fn bad_input_gets_a_clear_error() {
    let tmp = std::env::temp_dir().join(format!("train-gpu-errors-{}", std::process::id()));
    let run = tmp.join("run");
    let out = run.to_str().unwrap();
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
    assert!(stderr.contains("ADMM round 2:"), "{stderr}");
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
    for f in [
        "config.toml",
        "report.md",
        "final.ot",
        "dense.ot",
        "epochs.csv",
        "rounds.csv",
        "accuracy.png",
        "residuals.png",
        "block-states.png",
    ] {
        assert!(tmp.join(f).is_file(), "{f}");
    }
    assert!(!tmp.join("final.ot.tmp").exists());
    assert!(
        !tmp.join("checkpoint.safetensors").exists(),
        "a finished run drops its checkpoint"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

// ---------------------------------------------------------------------------------------
// The run folder's life: --resume, config files, datasets, devices, --init, plots. Every
// run is tiny (LeNet-300-100 on 1000 training / 300 test images, 1–2 epochs per phase) and
// reads a tiny copy of MNIST written once, so a process spends its time training rather
// than decompressing 60 000 images.
// ---------------------------------------------------------------------------------------

/// A fresh (emptied) folder `name` in this test binary's scratch space,
/// `target/tmp/train-gpu-PID` (folders of earlier, finished test processes are removed).
fn scratch(name: &str) -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    let root = ROOT.get_or_init(|| {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
        if cfg!(target_os = "linux")
            && let Ok(entries) = std::fs::read_dir(base)
        {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("train-gpu-")
                    && pid.parse::<u32>().is_ok()
                    && !Path::new("/proc").join(pid).exists()
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let root = base.join(format!("train-gpu-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        root
    });
    let p = root.join(name);
    let _ = std::fs::remove_dir_all(&p);
    p
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

/// The first 1000 training and 300 test images of MNIST as plain IDX files (written once).
fn tiny_mnist() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let (train, test) = load_mnist_dir(&mnist()).unwrap();
        let dir = scratch("tiny-mnist");
        std::fs::create_dir_all(&dir).unwrap();
        for (set, n, prefix) in [(&train, 1000, "train"), (&test, 300, "t10k")] {
            let px = set.rows * set.cols;
            let images = idx(&[n, set.rows, set.cols], &set.images[..n * px]);
            std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
            let labels = idx(&[n], &set.labels[..n]);
            std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
        }
        dir
    })
}

/// The tiny run's flags (the limits are no-ops on the tiny copy, but travel in config.toml).
const TINY: [&str; 10] = [
    "--model",
    "lenet-300-100",
    "--prune",
    "0.5",
    "--unify",
    "0.3",
    "--limit-train",
    "1000",
    "--limit-test",
    "300",
];

/// The phases of the resume tests. Checkpoints: 1–2 after the dense epochs, 3–4 after the
/// ADMM rounds, 5 after the hard projection, 6–7 after the retraining epochs.
const PHASES: [&str; 6] = [
    "--dense-epochs",
    "2",
    "--rounds",
    "2",
    "--retrain-epochs",
    "2",
];

/// A tiny run on the tiny MNIST into `out`, with `extra` flags.
fn tiny_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = TINY.iter().map(|s| s.to_string()).collect();
    v.push("--data-dir".into());
    v.push(tiny_mnist().display().to_string());
    v.push("--out".into());
    v.push(out.display().to_string());
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// The uninterrupted run (with the per-epoch evaluation, so that the accuracies a resume
/// restores are checked too) that every resumed run must match; run once per binary.
fn baseline() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let out = scratch("baseline");
        succeeds(&tiny_args(&out, &PHASES));
        out
    })
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn read_text(path: &Path) -> String {
    String::from_utf8(read(path)).unwrap()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&read(path))
        .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// Data rows of a CSV file (the header excluded).
fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    read_text(path)
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

/// Equal floats, or (unless `exact`) floats a few ulps apart.
fn close(a: f64, b: f64, exact: bool) -> bool {
    a == b || (!exact && (a - b).abs() <= 4.0 * f64::EPSILON * a.abs().max(b.abs()))
}

fn same_json(a: &serde_json::Value, b: &serde_json::Value, exact: bool, at: &str) {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => assert!(
            close(x.as_f64().unwrap(), y.as_f64().unwrap(), exact),
            "{at}: {x} vs {y}"
        ),
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}: lengths");
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                same_json(x, y, exact, &format!("{at}[{i}]"));
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            let keys = |m: &serde_json::Map<String, Value>| m.keys().cloned().collect::<Vec<_>>();
            assert_eq!(keys(x), keys(y), "{at}: keys");
            for (k, v) in x {
                same_json(v, &y[k], exact, &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

/// Same CSV apart from the column `skip`: same header, rows and fields (floats as `close`).
fn same_csv(a: &Path, b: &Path, skip: Option<&str>, exact: bool) {
    let (ta, tb) = (read_text(a), read_text(b));
    let (ha, hb) = (ta.lines().next().unwrap(), tb.lines().next().unwrap());
    assert_eq!(ha, hb, "{}: header", b.display());
    let skip = skip.map(|c| ha.split(',').position(|h| h == c).expect("column"));
    let (ra, rb) = (csv_rows(a), csv_rows(b));
    assert_eq!(ra.len(), rb.len(), "{}: rows", b.display());
    for (i, (x, y)) in ra.iter().zip(&rb).enumerate() {
        assert_eq!(x.len(), y.len());
        for (c, (x, y)) in x.iter().zip(y).enumerate() {
            if Some(c) == skip || x == y {
                continue;
            }
            let num = |s: &str| s.parse::<f64>().ok();
            let ok = matches!((num(x), num(y)), (Some(p), Some(q)) if close(p, q, exact));
            assert!(ok, "{} row {} column {c}: {x} vs {y}", b.display(), i + 1);
        }
    }
}

/// Run folder `b` ended exactly where `a` did: the same report.json apart from `timings`,
/// the same compressed.safetensors byte for byte, the same
/// epochs.csv apart from `seconds`, and the same rounds.csv and residuals.csv.
fn assert_same_end(a: &Path, b: &Path, exact: bool) {
    let report = |d: &Path| {
        let mut v = json(&d.join("report.json"));
        v.as_object_mut()
            .unwrap()
            .remove("timings")
            .expect("timings");
        v
    };
    same_json(&report(a), &report(b), exact, "report.json");
    let compressed = |d: &Path| read(&d.join("compressed.safetensors"));
    assert!(
        compressed(a) == compressed(b),
        "{} and {} differ in compressed.safetensors",
        a.display(),
        b.display()
    );
    same_csv(
        &a.join("epochs.csv"),
        &b.join("epochs.csv"),
        Some("seconds"),
        exact,
    );
    for f in ["rounds.csv", "residuals.csv"] {
        same_csv(&a.join(f), &b.join(f), None, exact);
    }
    assert!(b.join("dense.ot").is_file() && b.join("final.ot").is_file());
    assert!(!b.join("checkpoint.safetensors").exists());
}

/// Runs the baseline's configuration into a fresh folder, stopped after `k` checkpoints
/// with `epochs` epochs done; returns the folder (unfinished).
fn stopped_run(name: &str, k: usize, epochs: usize, extra: &[&str]) -> PathBuf {
    let out = scratch(name);
    let k_s = k.to_string();
    let mut flags = PHASES.to_vec();
    flags.extend(["--stop-after", &k_s]);
    flags.extend(extra);
    fails_with(
        &tiny_args(&out, &flags),
        &format!("stopped after {k} checkpoint(s) as --stop-after asked; continue with --resume"),
    );
    assert!(out.join("checkpoint.safetensors").is_file());
    assert!(!out.join("report.json").exists());
    assert_eq!(
        csv_rows(&out.join("epochs.csv")).len(),
        epochs,
        "epochs.csv after {k} checkpoints"
    );
    out
}

/// `--resume out` succeeds, saying where it resumed.
fn resume(out: &Path, epochs_done: usize) {
    let stderr = succeeds(&["--resume", out.to_str().unwrap()]);
    let said = format!("resumed after {epochs_done} epochs");
    assert!(stderr.contains(&said), "no {said:?} in {stderr}");
}

/// Stops after `k` checkpoints (`epochs` epochs done), resumes, and compares with the
/// uninterrupted run.
fn stop_and_resume(k: usize, epochs: usize) {
    if gpu().is_none() {
        return;
    }
    let out = stopped_run(&format!("resume-{k}"), k, epochs, &[]);
    resume(&out, epochs);
    assert_same_end(baseline(), &out, true);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn resume_in_the_dense_phase() {
    stop_and_resume(1, 1);
}

#[test]
fn resume_in_the_admm_phase() {
    stop_and_resume(3, 3);
}

#[test]
fn resume_right_after_the_hard_projection() {
    stop_and_resume(5, 4);
}

/// With `--rescale-dual`, U is rescaled on the GPU (where it lives) each time ρ grows and
/// read back with Z: a run stopped after its first ADMM round (U rescaled, in the
/// checkpoint) and resumed ends exactly where the uninterrupted rescaled run ends, and
/// that run is not the plain baseline (the rescale did something).
#[test]
fn resume_after_a_round_that_rescaled_the_dual() {
    if gpu().is_none() {
        return;
    }
    let rescale = ["--rescale-dual", "true"];
    let whole = scratch("rescaled-baseline");
    let mut flags = PHASES.to_vec();
    flags.extend(rescale);
    succeeds(&tiny_args(&whole, &flags));
    let residuals = |dir: &Path| read(&dir.join("residuals.csv"));
    assert_ne!(residuals(&whole), residuals(baseline()));
    let out = stopped_run("resume-rescaled", 3, 3, &rescale);
    resume(&out, 3);
    assert_same_end(&whole, &out, true);
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&whole);
}

#[test]
fn resume_twice_the_second_time_in_the_retraining() {
    if gpu().is_none() {
        return;
    }
    // Stopped at the end of dense training (its accuracy not reported yet), resumed and
    // stopped again 4 checkpoints later, in the middle of the retraining (checkpoint 6 of 7).
    let out = stopped_run("resume-twice", 2, 2, &[]);
    let dir = out.to_str().unwrap();
    fails_with(
        &["--resume", dir, "--stop-after", "4"],
        "stopped after 4 checkpoint(s)",
    );
    assert!(out.join("checkpoint.safetensors").is_file());
    assert_eq!(csv_rows(&out.join("epochs.csv")).len(), 5);
    resume(&out, 5);
    assert_same_end(baseline(), &out, true);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn resume_refuses_what_it_cannot_continue() {
    let dir = scratch("resume-errors");
    let missing = dir.join("missing");
    fails_with(
        &["--resume".as_ref(), missing.as_os_str()],
        &format!("--resume {}: no such folder", missing.display()),
    );
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    fails_with(
        &["--resume".as_ref(), empty.as_os_str()],
        "not a train-gpu run folder (no config.toml)",
    );
    // A finished run: its finished.json vouches for its config.toml and report.json.
    let done = finished_folder(&dir.join("finished"));
    fails_with(
        &["--resume".as_ref(), done.as_os_str()],
        &format!(
            "--resume {}: this run has finished (its finished.json vouches for report.json)",
            done.display()
        ),
    );
    // Flags that change what the run computes are refused, by name.
    fails_with(
        &["--resume", done.to_str().unwrap(), "--lr", "0.1"],
        "--resume continues with the run's own config.toml; drop --lr",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unfinished_run_is_kept_and_a_bad_checkpoint_named() {
    if gpu().is_none() {
        return;
    }
    // Stopped in the ADMM phase (dense training done, one round), so dense.ot is there.
    let out = stopped_run("unfinished", 3, 3, &[]);
    let ckpt = out.join("checkpoint.safetensors");
    let saved = read(&ckpt);
    let config = read(&out.join("config.toml"));
    // A new run into the folder is refused, and the folder left as it was.
    fails_with(
        &tiny_args(&out, &PHASES),
        &format!(
            "{} holds an unfinished run: continue it with --resume",
            out.display()
        ),
    );
    assert!(read(&ckpt) == saved && read(&out.join("config.toml")) == config);
    let dir = out.to_str().unwrap();
    let dense = out.join("dense.ot");
    let corrupt = |needle: &str| {
        let e = fails_with(
            &["--resume", dir],
            &format!("error: {} is corrupt: {needle}", ckpt.display()),
        );
        for advice in [
            "It was this run's only saved state (each checkpoint replaces the previous one), so \
             the run cannot continue: start it again from the beginning with --force"
                .to_string(),
            format!(
                "or, as dense training had finished, from its dense model: --force --init {} \
                 --dense-epochs 0",
                dense.display()
            ),
        ] {
            assert!(e.contains(&advice), "{advice:?} in {e}");
        }
        assert_eq!(e.lines().count(), 1, "one line: {e}");
    };
    // One flipped bit in the tensor data.
    let mut b = saved.clone();
    let n = b.len();
    b[n - 100] ^= 0x04;
    std::fs::write(&ckpt, &b).unwrap();
    corrupt("its contents do not match their checksum");
    // Truncated to half its length.
    std::fs::write(&ckpt, &saved[..saved.len() / 2]).unwrap();
    corrupt("not a complete safetensors file");
    // Re-encoded with a valid checksum over contents out of range: the range checks.
    let good = Checkpoint::from_bytes(&saved, &ckpt).unwrap();
    let mut c = good.clone();
    c.progress.rounds_done = 99;
    std::fs::write(&ckpt, c.to_bytes().unwrap()).unwrap();
    corrupt("rounds_done is 99, but the run has 2 ADMM rounds");
    let mut c = good.clone();
    c.progress.rho = -1.0;
    std::fs::write(&ckpt, c.to_bytes().unwrap()).unwrap();
    corrupt("rho is -1, outside (0, rho_max = 1]");
    let mut c = good.clone();
    c.tensors.get_mut("z.fc2").unwrap().data[3] = f32::NAN;
    std::fs::write(&ckpt, c.to_bytes().unwrap()).unwrap();
    corrupt("tensor z.fc2 holds NaN at index 3");
    let mut c = good.clone();
    c.tensors.remove("u.fc1");
    std::fs::write(&ckpt, c.to_bytes().unwrap()).unwrap();
    corrupt("tensor u.fc1 is missing");
    // Another safetensors file in the checkpoint's place.
    std::fs::copy(baseline().join("compressed.safetensors"), &ckpt).unwrap();
    fails_with(
        &["--resume", dir],
        &format!(
            "{} is not a train-gpu checkpoint (no microunify.train_gpu.checkpoint metadata)",
            ckpt.display()
        ),
    );
    // What the error says to do works: a new run there from the dense model (which
    // --force keeps, as the new run's --init), with the dense accuracy of the same model.
    let d = dense.to_str().unwrap();
    let args = tiny_args(
        &out,
        &[
            "--rounds",
            "2",
            "--retrain-epochs",
            "2",
            "--dense-epochs",
            "0",
            "--init",
            d,
            "--force",
        ],
    );
    succeeds(&args);
    let acc = |d: &Path| json(&d.join("report.json"))["dense_accuracy"].as_f64();
    assert_eq!(acc(&out), acc(baseline()));
    assert!(dense.is_file() && !ckpt.exists());
    let _ = std::fs::remove_dir_all(&out);
}

/// Writes `text` as `dir/name` and returns the path.
fn toml_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn config_file_errors_name_the_file() {
    let dir = scratch("config-errors");
    let out = dir.join("run");
    let out = out.to_str().unwrap();
    let with = |file: &Path| -> Vec<String> {
        vec![
            "--config".into(),
            file.display().to_string(),
            "--out".into(),
            out.into(),
        ]
    };
    let f = toml_file(&dir, "unknown.toml", "rounds = 1\nroundz = 2\n");
    let e = fails_with(&with(&f), "unknown field `roundz`");
    assert!(e.contains(&f.display().to_string()), "{e}");
    let f = toml_file(&dir, "wrong-type.toml", "rounds = \"two\"\n");
    let e = fails_with(&with(&f), "invalid type: string \"two\"");
    assert!(e.contains(&f.display().to_string()), "{e}");
    // Ratios out of range: the same error as on the command line.
    let bad = "invalid ratios for layer fc1: prune 1.2, unify 0 (prune must lie in [0, 1])";
    fails_with(
        &[
            "--model",
            "lenet-300-100",
            "--ratios",
            "fc1=1.2/0,fc2=0.5/0.3,fc3=0.5/0.3",
            "--out",
            out,
        ],
        bad,
    );
    let f = toml_file(
        &dir,
        "range.toml",
        "model = \"lenet-300-100\"\n[ratios]\nfc1 = [1.2, 0.0]\nfc2 = [0.5, 0.3]\nfc3 = [0.5, 0.3]\n",
    );
    fails_with(&with(&f), bad);
    // `uniform` is checked like --prune 0.7 --unify 0.5 (see bad_input_gets_a_clear_error).
    let f = toml_file(&dir, "sum.toml", "uniform = [0.7, 0.5]\n");
    fails_with(&with(&f), "prune + unify must not exceed 1");
    assert!(
        !Path::new(out).exists(),
        "a refused config made a run folder"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn flags_override_the_config_file_and_global_targets_work() {
    if gpu().is_none() {
        return;
    }
    let dir = scratch("config-override");
    let f = toml_file(
        &dir,
        "global.toml",
        &format!(
            "model = \"lenet-300-100\"\ndata_dir = {:?}\nuniform = [0.5, 0.3]\nglobal = true\n\
             rounds = 1\ndense_epochs = 1\nretrain_epochs = 1\neval_every_epoch = false\n",
            tiny_mnist().display().to_string()
        ),
    );
    let out = dir.join("run");
    succeeds(&[
        "--config".as_ref(),
        f.as_os_str(),
        "--rounds".as_ref(),
        "2".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    let report = json(&out.join("report.json"));
    assert_eq!(
        report["admm"].as_array().unwrap().len(),
        2,
        "--rounds 2 wins"
    );
    assert_eq!(csv_rows(&out.join("rounds.csv")).len(), 2);
    assert_eq!(csv_rows(&out.join("epochs.csv")).len(), 1 + 2 + 1);
    let blocks = &report["blocks"];
    let n = |k: &str| blocks[k].as_u64().unwrap() as usize;
    let total = 75 * 196 + 25 * 75 + 3 * 25;
    assert_eq!(n("dense") + n("unified") + n("pruned"), total);
    assert_eq!(
        (n("pruned"), n("unified")),
        cfg_counts(0.5, 0.3, total),
        "global counts are exact"
    );
    let saved = read_text(&out.join("config.toml"));
    for line in ["rounds = 2", "global = true", "uniform = [0.5, 0.3]"] {
        assert!(saved.lines().any(|l| l == line), "{line:?} in {saved}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn per_layer_ratios_from_the_config_file() {
    if gpu().is_none() {
        return;
    }
    let dir = scratch("config-ratios");
    let f = toml_file(
        &dir,
        "ratios.toml",
        &format!(
            "model = \"lenet-300-100\"\ndata_dir = {:?}\nrounds = 1\ndense_epochs = 1\n\
             retrain_epochs = 1\neval_every_epoch = false\n\
             [ratios]\nfc1 = [0.6, 0.3]\nfc2 = [0.5, 0.2]\nfc3 = [0.2, 0.1]\n",
            tiny_mnist().display().to_string()
        ),
    );
    let out = dir.join("run");
    succeeds(&[
        "--config".as_ref(),
        f.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    let report = json(&out.join("report.json"));
    let want = [("fc1", 0.6, 0.3), ("fc2", 0.5, 0.2), ("fc3", 0.2, 0.1)];
    let layers = report["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    for (l, (name, p, u)) in layers.iter().zip(want) {
        assert_eq!(l["name"], name);
        let n = |k: &str| l[k].as_u64().unwrap() as usize;
        let total = n("dense") + n("unified") + n("pruned");
        assert_eq!(
            (n("pruned"), n("unified")),
            cfg_counts(p, u, total),
            "{name}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_saved_config_repeats_the_run() {
    if gpu().is_none() {
        return;
    }
    let base = baseline();
    let out = scratch("config-repeat");
    let config = base.join("config.toml");
    succeeds(&[
        "--config".as_ref(),
        config.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert_eq!(read_text(&out.join("config.toml")), read_text(&config));
    let acc = |d: &Path| json(&d.join("report.json"))["final_accuracy"].as_f64();
    assert_eq!(acc(&out), acc(base));
    // Nothing went through a checkpoint here: every digit is the same.
    assert_same_end(base, &out, true);
    let _ = std::fs::remove_dir_all(&out);
}

const FASHION: &str = "/usr/share/datasets/fashion-mnist";

#[test]
fn fashion_mnist_from_the_debian_package() {
    let out = scratch("fashion");
    let mut args: Vec<&str> = TINY.to_vec();
    let o = out.to_str().unwrap();
    args.extend([
        "--dataset",
        "fashion-mnist",
        "--dense-epochs",
        "1",
        "--rounds",
        "1",
        "--retrain-epochs",
        "1",
        "--no-epoch-eval",
        "--out",
        o,
    ]);
    if !Path::new(FASHION).is_dir() {
        eprintln!("{FASHION} is absent: checking the error only");
        fails_with(&args, "install Debian's dataset-fashion-mnist package");
        assert!(!out.exists());
        return;
    }
    if gpu().is_none() {
        return;
    }
    let stderr = succeeds(&args);
    assert!(stderr.contains(&format!("from {FASHION}")), "{stderr}");
    let report = json(&out.join("report.json"));
    let acc = report["final_accuracy"].as_f64().unwrap();
    assert!(acc > 30.0, "Fashion-MNIST final accuracy {acc}");
    let saved = read_text(&out.join("config.toml"));
    for line in [
        "dataset = \"fashion-mnist\"".to_string(),
        format!("data_dir = \"{FASHION}\""),
    ] {
        assert!(saved.lines().any(|l| l == line), "{line:?} in {saved}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn truncated_dataset_files_are_named() {
    let dir = scratch("truncated-data");
    let out = dir.join("run");
    let copy_tiny = |name: &str| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in std::fs::read_dir(tiny_mnist()).unwrap().flatten() {
            std::fs::copy(f.path(), d.join(f.file_name())).unwrap();
        }
        d
    };
    let load = |d: &Path, needle: &str| {
        fails_with(
            &[
                "--model".as_ref(),
                "lenet-300-100".as_ref(),
                "--prune".as_ref(),
                "0.5".as_ref(),
                "--unify".as_ref(),
                "0.3".as_ref(),
                "--data-dir".as_ref(),
                d.as_os_str(),
                "--out".as_ref(),
                out.as_os_str(),
            ],
            needle,
        )
    };
    // A gzip stream cut short (the real file's first 4 KiB).
    let d = copy_tiny("gz");
    std::fs::remove_file(d.join("train-images-idx3-ubyte")).unwrap();
    let gz = d.join("train-images-idx3-ubyte.gz");
    let whole = read(&mnist().join("train-images-idx3-ubyte.gz"));
    std::fs::write(&gz, &whole[..4096]).unwrap();
    let e = load(&d, "corrupt gzip stream");
    assert!(e.contains(&gz.display().to_string()), "{e}");
    // IDX bodies cut short: the training images, and the test labels (read last).
    let d = copy_tiny("idx");
    let f = d.join("train-images-idx3-ubyte");
    let bytes = read(&f);
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let e = load(
        &d,
        "truncated: shape [1000, 28, 28] needs 784000 bytes, file has 391992",
    );
    assert!(e.contains(&f.display().to_string()), "{e}");
    std::fs::write(&f, bytes).unwrap();
    let f = d.join("t10k-labels-idx1-ubyte");
    std::fs::write(&f, &read(&f)[..100]).unwrap();
    let e = load(&d, "truncated: shape [300] needs 300 bytes, file has 92");
    assert!(e.contains(&f.display().to_string()), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn devices_libtorch_cannot_use_are_refused() {
    let out = scratch("device");
    let o = out.to_str().unwrap();
    if !tch::Cuda::is_available() {
        fails_with(
            &["--device", "cuda", "--out", o],
            "--device cuda:0: libtorch cannot use CUDA",
        );
    }
    if !tch::utils::has_mps() {
        fails_with(
            &["--device", "mps", "--out", o],
            "--device mps: libtorch cannot use Metal (MPS) here",
        );
    }
    fails_with(
        &["--device", "tpu", "--out", o],
        "--device \"tpu\": expected cpu, cuda, cuda:N or mps",
    );
    assert!(!out.exists(), "a refused device made a run folder");
}

#[test]
fn init_from_a_dense_checkpoint_skips_dense_training() {
    if gpu().is_none() {
        return;
    }
    let out = scratch("init-missing");
    fails_with(
        &tiny_args(&out, &["--init", "/nonexistent.ot", "--no-epoch-eval"]),
        "--init /nonexistent.ot: no such file",
    );
    let base = baseline();
    let dense = base.join("dense.ot");
    let out = scratch("init");
    let stderr = succeeds(&tiny_args(
        &out,
        &[
            "--init",
            dense.to_str().unwrap(),
            "--dense-epochs",
            "0",
            "--rounds",
            "1",
            "--retrain-epochs",
            "1",
        ],
    ));
    assert!(!stderr.contains("dense phase"), "{stderr}");
    let rows = csv_rows(&out.join("epochs.csv"));
    let phases: Vec<&str> = rows.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(phases, ["admm", "retrain"]);
    let acc = |d: &Path| {
        json(&d.join("report.json"))["dense_accuracy"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(
        acc(&out),
        acc(base),
        "the dense accuracy of {}",
        dense.display()
    );
    let saved = read_text(&out.join("config.toml"));
    assert!(
        saved.contains(&format!("init = {:?}", dense.display().to_string())),
        "{saved}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn the_run_folder_holds_the_plots_and_metrics() {
    if gpu().is_none() {
        return;
    }
    let base = baseline();
    for f in ["accuracy.png", "residuals.png", "block-states.png"] {
        let bytes = read(&base.join(f));
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{f} is not a PNG");
        assert!(bytes.len() > 1000, "{f}: {} bytes", bytes.len());
    }
    let header = read_text(&base.join("epochs.csv"));
    assert_eq!(
        header.lines().next(),
        Some("epoch,phase,phase_epoch,lr,rho,loss,test_accuracy,seconds")
    );
    let rows = csv_rows(&base.join("epochs.csv"));
    let got: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| (r[0].as_str(), r[1].as_str(), r[2].as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("1", "dense", "1"),
            ("2", "dense", "2"),
            ("3", "admm", "1"),
            ("4", "admm", "2"),
            ("5", "retrain", "1"),
            ("6", "retrain", "2"),
        ]
    );
    for r in &rows {
        let rho_given = !r[4].is_empty();
        assert_eq!(rho_given, r[1] == "admm", "rho only in ADMM epochs: {r:?}");
        let acc: f64 = r[6].parse().expect("an accuracy after every epoch");
        assert!((0.0..=100.0).contains(&acc));
        assert!(r[5].parse::<f64>().unwrap().is_finite());
    }
    let rounds = csv_rows(&base.join("rounds.csv"));
    assert_eq!(rounds.len(), 2);
    assert_eq!((rounds[0][0].as_str(), rounds[1][0].as_str()), ("1", "2"));
    assert_eq!(csv_rows(&base.join("residuals.csv")).len(), 2 * 3);
    let report = json(&base.join("report.json"));
    assert_eq!(report["admm"].as_array().unwrap().len(), 2);
    assert!(!base.join("checkpoint.safetensors").exists());
}

// ---- Regressions: each of these once failed. ----

#[test]
fn compressed_files_are_byte_for_byte_reproducible() {
    if gpu().is_none() {
        return;
    }
    let path = baseline().join("compressed.safetensors");
    let bytes = read(&path);
    let file = CompressedFile::from_bytes(&bytes).unwrap();
    for _ in 0..8 {
        assert!(
            file.to_bytes().unwrap() == bytes,
            "re-encoding {} gives other bytes",
            path.display()
        );
    }
    let out = scratch("bytes-again");
    let config = baseline().join("config.toml");
    succeeds(&[
        "--config".as_ref(),
        config.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert!(read(&out.join("compressed.safetensors")) == bytes);
}

#[test]
fn resume_keeps_every_digit() {
    if gpu().is_none() {
        return;
    }
    // The first dense epoch's loss here is 1.5727130250930785, read back as …783.
    let out = stopped_run("digits", 1, 1, &[]);
    resume(&out, 1);
    assert_same_end(baseline(), &out, true);
}

#[test]
fn resume_accepts_any_float_in_the_config() {
    if gpu().is_none() {
        return;
    }
    // Fails with "the checkpoint was made with another configuration".
    let out = stopped_run(
        "float-config",
        1,
        1,
        &["--gamma", "1.5727130250930785", "--no-epoch-eval"],
    );
    resume(&out, 1);
}

#[test]
fn resume_from_another_working_directory() {
    if gpu().is_none() {
        return;
    }
    let out = scratch("elsewhere");
    let o = train_gpu_in(
        Some(Path::new(env!("CARGO_MANIFEST_DIR"))),
        &[
            "--model",
            "lenet-300-100",
            "--prune",
            "0.5",
            "--unify",
            "0.3",
            "--limit-train",
            "1000",
            "--limit-test",
            "300",
            "--dense-epochs",
            "1",
            "--rounds",
            "0",
            "--retrain-epochs",
            "1",
            "--no-epoch-eval",
            "--stop-after",
            "1",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(out.join("checkpoint.safetensors").is_file(), "{o:?}");
    let o = train_gpu_in(
        Some(out.parent().unwrap()),
        &["--resume", out.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
}

/// `train-gpu sweep` on a tiny budget: one dense model, the planned sub-runs, sweep.csv /
/// sweep.md / sweep.png; a second call reuses every finished sub-run; a changed
/// configuration is refused rather than mixed with the old results.
#[test]
fn a_tiny_sweep_writes_its_outputs_and_reuses_finished_runs() {
    if gpu().is_none() {
        return;
    }
    let out = scratch("sweep");
    let sweep = |extra: &[&str]| {
        let mut v = vec!["sweep".to_string()];
        v.extend(tiny_args(
            &out,
            &["--no-epoch-eval", "--rounds", "1", "--retrain-epochs", "1"],
        ));
        v.extend(
            [
                "--methods",
                "mixed,prune-only",
                "--trainings",
                "admm,one-shot",
            ]
            .map(String::from),
        );
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let first = succeeds(&sweep(&[]));
    assert!(first.contains("4 sub-runs"), "{first}");
    let csv = read_text(&out.join("sweep.csv"));
    assert_eq!(csv.lines().count(), 1 + 4, "{csv}");
    for name in [
        "mixed,admm",
        "mixed,one-shot",
        "prune-only,admm",
        "prune-only,one-shot",
    ] {
        assert!(csv.contains(name), "no {name} row in {csv}");
    }
    assert!(read(&out.join("sweep.png")).starts_with(b"\x89PNG\r\n\x1a\n"));
    assert!(read_text(&out.join("sweep.md")).contains("one-shot"));
    assert!(out.join("dense/dense.ot").is_file());
    let again = succeeds(&sweep(&[]));
    assert_eq!(again.matches("finished before").count(), 5, "{again}");
    assert_eq!(read_text(&out.join("sweep.csv")), csv);
    // Other files in the sweep's folder: refused, or kept with --force.
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    fails_with(
        &sweep(&[]),
        &format!(
            "{} holds files a sweep does not write (notes.txt)",
            out.display()
        ),
    );
    let forced = succeeds(&sweep(&["--force"]));
    assert_eq!(forced.matches("finished before").count(), 5, "{forced}");
    assert_eq!(read_text(&out.join("notes.txt")), "mine");
    std::fs::remove_file(out.join("notes.txt")).unwrap();
    fails_with(
        &sweep(&["--lr", "0.002"]),
        "holds a finished run of another configuration",
    );
    let _ = std::fs::remove_dir_all(&out);
}

// ---------------------------------------------------------------------------------------
// Run folders: one process at a time, what a new run may replace, a run killed before its
// first checkpoint, stale temporary files, planted links. Datasets that do not fit the
// model; settings that would be ignored; one error line.
// ---------------------------------------------------------------------------------------

/// A tiny configuration as a `config.toml`.
fn tiny_config_toml() -> String {
    format!(
        "model = \"lenet-300-100\"\ndata_dir = {:?}\nuniform = [0.5, 0.3]\nrounds = 1\n\
         dense_epochs = 1\nretrain_epochs = 1\nlimit_train = 1000\nlimit_test = 300\n",
        tiny_mnist().display().to_string()
    )
}

/// A folder as a finished run leaves it, for the tests that only read its state: a tiny
/// config.toml, a report.json, and the finished.json that ties them together.
fn finished_folder(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let config = tiny_config_toml();
    let report = "{}";
    std::fs::write(dir.join("config.toml"), &config).unwrap();
    std::fs::write(dir.join("report.json"), report).unwrap();
    let evidence = serde_json::json!({
        "config_sha256": sha256_hex(config.as_bytes()),
        "report_sha256": sha256_hex(report.as_bytes()),
    });
    std::fs::write(dir.join("finished.json"), evidence.to_string()).unwrap();
    dir.to_path_buf()
}

/// Names in a folder, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// A folder held by another process (here: this test process) is refused to a new run,
/// to --resume and to a sweep, naming the folder and the holder, before anything in it
/// is read or written; released, it is usable again.
#[test]
fn a_locked_folder_is_refused_by_name() {
    let dir = scratch("locked");
    let run = finished_folder(&dir.join("run"));
    let lock = microunify::fsio::FolderLock::acquire(&run).unwrap();
    let before = names(&run);
    let held = format!(
        "{} is in use by another process (process {})",
        run.display(),
        std::process::id()
    );
    fails_with(&tiny_args(&run, &["--force"]), &held);
    fails_with(&["--resume".as_ref(), run.as_os_str()], &held);
    assert_eq!(names(&run), before, "a refused process changed the folder");
    // A sweep's sub-run folder held: refused by its name; the sweep folder itself too.
    let sweep = dir.join("sweep");
    let sub = sweep.join("dense");
    std::fs::create_dir_all(&sub).unwrap();
    let sub_lock = microunify::fsio::FolderLock::acquire(&sub).unwrap();
    let mut args = vec!["sweep".to_string()];
    args.extend(tiny_args(
        &sweep,
        &["--rounds", "1", "--retrain-epochs", "1"],
    ));
    if gpu().is_some() {
        fails_with(
            &args,
            &format!("{} is in use by another process", sub.display()),
        );
    }
    drop(sub_lock);
    let sweep_lock = microunify::fsio::FolderLock::acquire(&sweep).unwrap();
    fails_with(
        &args,
        &format!("{} is in use by another process", sweep.display()),
    );
    drop(sweep_lock);
    drop(lock);
    // Released: the folder is a finished run again, as --resume says.
    fails_with(
        &["--resume".as_ref(), run.as_os_str()],
        "this run has finished",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two real train-gpu processes: while the first trains into D, a second run into D and
/// a --resume of D are refused, naming D; once the first is killed, D is usable.
#[test]
fn a_second_process_is_refused_while_the_first_runs() {
    if gpu().is_none() {
        return;
    }
    let out = scratch("two-processes");
    let mut first = command(&tiny_args(
        &out,
        &["--dense-epochs", "2000", "--no-epoch-eval"],
    ))
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    // Wait for the first checkpoint: the first process holds the lock and has trained.
    let start = std::time::Instant::now();
    while !out.join("epochs.csv").is_file() {
        assert!(start.elapsed().as_secs() < 120, "no checkpoint after 120 s");
        assert!(first.try_wait().unwrap().is_none(), "the first run ended");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let held = format!(
        "{} is in use by another process (process {})",
        out.display(),
        first.id()
    );
    fails_with(&tiny_args(&out, &["--seed", "2"]), &held);
    fails_with(&tiny_args(&out, &["--seed", "2", "--force"]), &held);
    fails_with(&["--resume".as_ref(), out.as_os_str()], &held);
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first run ended early"
    );
    first.kill().unwrap();
    first.wait().unwrap();
    // The kernel released the lock: the folder continues.
    fails_with(
        &[
            "--resume".as_ref(),
            out.as_os_str(),
            "--stop-after".as_ref(),
            "1".as_ref(),
        ],
        "stopped after 1 checkpoint(s) as --stop-after asked",
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// A new run starts only in a missing or empty folder; a finished run, other files, or
/// both are refused, saying what is there; `--force` replaces train-gpu's own files
/// (its earlier outputs go first: no stale report.json beside the new config) and keeps
/// the others.
#[test]
fn a_new_run_replaces_nothing_without_force_and_only_its_own_files_with_it() {
    let dir = scratch("folder-rules");
    // A finished run.
    let done = finished_folder(&dir.join("finished"));
    let e = fails_with(
        &tiny_args(&done, &[]),
        &format!(
            "{} holds a finished run: use another --out, or --force to replace it",
            done.display()
        ),
    );
    assert!(e.contains("keeps every other"), "{e}");
    // The user's own files, one named like ours.
    let user = dir.join("user");
    std::fs::create_dir_all(&user).unwrap();
    std::fs::write(user.join("notes.txt"), "mine").unwrap();
    std::fs::write(user.join("report.md"), "my report").unwrap();
    fails_with(
        &tiny_args(&user, &[]),
        &format!(
            "{} is not empty (it holds notes.txt, report.md): a new run starts only in a \
             missing or empty folder; use another --out, or --force to run there (it replaces \
             report.md and keeps notes.txt)",
            user.display()
        ),
    );
    assert_eq!(read_text(&user.join("report.md")), "my report");
    assert_eq!(names(&user), [".microunify.lock", "notes.txt", "report.md"]);
    if gpu().is_none() {
        return;
    }
    let quick = [
        "--dense-epochs",
        "1",
        "--rounds",
        "1",
        "--retrain-epochs",
        "1",
        "--no-epoch-eval",
        "--force",
    ];
    succeeds(&tiny_args(&user, &quick));
    assert_eq!(read_text(&user.join("notes.txt")), "mine");
    assert!(read_text(&user.join("report.md")).starts_with("# "));
    // A finished run with a stray file of the user's, replaced by a run killed before its
    // first checkpoint: none of the old run's outputs survive beside the new config.
    std::fs::write(done.join("notes.txt"), "mine").unwrap();
    let o = command(&tiny_args(&done, &["--seed", "3", "--force"]))
        .env(microunify::fsio::KILL_AT_ENV, "epoch:dense")
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(o.status.signal(), Some(9), "killed at epoch:dense: {o:?}");
    assert_eq!(
        names(&done),
        [".microunify.lock", "config.toml", "notes.txt"],
        "the old report.json and finished.json went before the new config came"
    );
    assert!(read_text(&done.join("config.toml")).contains("seed = 3"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A run killed before its first checkpoint leaves its config.toml and no checkpoint:
/// --resume starts that run from the beginning with that config (a report.json left
/// beside it by another run, as older versions did, proves nothing), and ends where an
/// uninterrupted run ends.
#[test]
fn resume_starts_a_run_killed_before_its_first_checkpoint_from_the_beginning() {
    if gpu().is_none() {
        return;
    }
    let out = scratch("killed-early");
    let o = command(&tiny_args(&out, &PHASES))
        .env(microunify::fsio::KILL_AT_ENV, "epoch:dense")
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(o.status.signal(), Some(9), "{o:?}");
    assert!(out.join("config.toml").is_file() && !out.join("checkpoint.safetensors").exists());
    // What older versions left: another run's report beside this config, and the
    // evidence of that other run.
    let other = finished_folder(&scratch("killed-early-other"));
    for f in ["report.json", "finished.json"] {
        std::fs::copy(other.join(f), out.join(f)).unwrap();
    }
    std::fs::copy(baseline().join("dense.ot"), out.join("dense.ot")).unwrap();
    let stderr = succeeds(&["--resume", out.to_str().unwrap()]);
    assert!(
        stderr.contains("stopped before its first checkpoint: starting the run from the beginning"),
        "{stderr}"
    );
    assert_same_end(baseline(), &out, true);
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&other);
}

/// The temporary files of writers killed mid-write (old and new names) are removed by the
/// next process that holds the folder; the user's files, even ones named like temporary
/// files, stay. One of them is left by a real process, killed through a kill point right
/// before renaming its checkpoint into place; the resumed run still ends where the
/// uninterrupted one ends.
#[test]
fn stale_temporary_files_are_removed_and_nothing_else() {
    if gpu().is_none() {
        return;
    }
    let out = scratch("stale-temps");
    let o = command(&tiny_args(&out, &PHASES))
        .env(
            microunify::fsio::KILL_AT_ENV,
            "write:checkpoint.safetensors:2",
        )
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(o.status.signal(), Some(9), "{o:?}");
    let left: Vec<String> = names(&out)
        .into_iter()
        .filter(|n| n.starts_with(".checkpoint.safetensors.") && n.ends_with(".tmp"))
        .collect();
    assert_eq!(left.len(), 1, "the killed writer's temp: {:?}", names(&out));
    let planted = [
        ".checkpoint.safetensors.4242.tmp",
        ".compressed.safetensors.4243.tmp",
        ".final.ot.17.Ab12Cd.tmp",
    ];
    for f in planted {
        std::fs::write(out.join(f), "stale").unwrap();
    }
    for f in [".notes.txt.1.tmp", "notes.txt"] {
        std::fs::write(out.join(f), "mine").unwrap();
    }
    resume(&out, 1);
    let now = names(&out);
    for f in planted.iter().map(|s| s.to_string()).chain(left) {
        assert!(!now.contains(&f), "{f} is still there: {now:?}");
    }
    assert!(
        !now.iter()
            .any(|n| n.ends_with(".tmp") && n != ".notes.txt.1.tmp"),
        "{now:?}"
    );
    for f in [".notes.txt.1.tmp", "notes.txt"] {
        assert_eq!(read_text(&out.join(f)), "mine", "{f}");
    }
    assert_same_end(baseline(), &out, true);
    let _ = std::fs::remove_dir_all(&out);
}

/// A symlink planted at a temporary name, fixed (`dense.ot.tmp`, as save_vars once used)
/// or of our pattern (`.dense.ot.PID.tmp`), is never written through: the victim stays as
/// it was, `dense.ot` is a regular file, and `--force` leaves the user's links alone.
#[test]
fn planted_links_are_not_followed() {
    if gpu().is_none() {
        return;
    }
    let dir = scratch("links");
    let out = dir.join("run");
    std::fs::create_dir_all(&out).unwrap();
    let victim = dir.join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let mut links = vec!["dense.ot.tmp".to_string(), "final.ot.tmp".to_string()];
    // The child's pid is not known in advance: the next few hundred.
    let me = std::process::id();
    links.extend((me..me + 300).map(|p| format!(".dense.ot.{p}.tmp")));
    links.extend((me..me + 300).map(|p| format!(".checkpoint.safetensors.{p}.tmp")));
    for l in &links {
        std::os::unix::fs::symlink(&victim, out.join(l)).unwrap();
    }
    fails_with(&tiny_args(&out, &[]), "is not empty");
    succeeds(&tiny_args(
        &out,
        &[
            "--dense-epochs",
            "1",
            "--rounds",
            "1",
            "--retrain-epochs",
            "1",
            "--no-epoch-eval",
            "--force",
        ],
    ));
    assert!(
        read(&victim) == b"precious",
        "the link's target was written"
    );
    for f in ["dense.ot", "final.ot"] {
        let m = std::fs::symlink_metadata(out.join(f)).unwrap();
        assert!(m.file_type().is_file(), "{f} is not a regular file");
    }
    for l in &links {
        let p = out.join(l);
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert!(m.file_type().is_symlink(), "{l} was replaced");
        assert_eq!(std::fs::read_link(&p).unwrap(), victim);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes the four IDX files of a set of `n_train`/`n_test` images of `rows × cols`
/// into `dir`, with labels `label(i)`.
fn idx_set(dir: &Path, rows: usize, cols: usize, n: [usize; 2], label: impl Fn(usize) -> u8) {
    std::fs::create_dir_all(dir).unwrap();
    for (prefix, count) in [("train", n[0]), ("t10k", n[1])] {
        let px: Vec<u8> = (0..count * rows * cols)
            .map(|i| (i * 7 % 256) as u8)
            .collect();
        std::fs::write(
            dir.join(format!("{prefix}-images-idx3-ubyte")),
            idx(&[count, rows, cols], &px),
        )
        .unwrap();
        let labels: Vec<u8> = (0..count).map(&label).collect();
        std::fs::write(
            dir.join(format!("{prefix}-labels-idx1-ubyte")),
            idx(&[count], &labels),
        )
        .unwrap();
    }
}

/// A valid IDX dataset whose images or labels do not suit the model is a clear error,
/// naming the file and both shapes, before anything trains (no panic inside libtorch, and
/// 14×56 = 784 pixels does not train as if it were 28×28).
#[test]
fn datasets_that_do_not_fit_the_model_are_refused() {
    let dir = scratch("shapes");
    let run = |data: &Path, model: &str, needle: &str| {
        let out = dir.join("run");
        let mut args = vec![
            "--model".to_string(),
            model.into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--out".into(),
            out.display().to_string(),
            "--dense-epochs".into(),
            "1".into(),
        ];
        if model != "lenet5" {
            args.extend(["--prune", "0.5", "--unify", "0.3"].map(String::from));
        }
        let e = fails_with(&args, needle);
        assert!(!e.contains("tensor"), "a dataset file is not a tensor: {e}");
        assert!(!e.contains("epoch"), "it trained: {e}");
        assert!(
            !out.join("config.toml").exists(),
            "a refused dataset started a run"
        );
        let _ = std::fs::remove_dir_all(&out);
    };
    for (rows, cols) in [(32, 32), (14, 56)] {
        let d = dir.join(format!("{rows}x{cols}"));
        idx_set(&d, rows, cols, [20, 10], |i| (i % 10) as u8);
        for model in ["lenet5", "lenet-300-100"] {
            run(
                &d,
                model,
                &format!(
                    "error: the dataset's images are 1×{rows}×{cols} (from {}), but model {model} \
                     takes 1×28×28",
                    d.join("train-images-idx3-ubyte").display()
                ),
            );
        }
    }
    // The test set alone of another size.
    let d = dir.join("test-32");
    idx_set(&d, 28, 28, [20, 10], |i| (i % 10) as u8);
    let t = idx(&[10, 32, 32], &vec![0; 10 * 32 * 32]);
    std::fs::write(d.join("t10k-images-idx3-ubyte"), t).unwrap();
    run(
        &d,
        "lenet5",
        &format!(
            "{}: the test images are 1×32×32, but the training images ({}) are 1×28×28",
            d.join("t10k-images-idx3-ubyte").display(),
            d.join("train-images-idx3-ubyte").display()
        ),
    );
    // A label past the model's classes; an empty set.
    let d = dir.join("labels");
    idx_set(&d, 28, 28, [20, 10], |i| if i == 13 { 10 } else { 3 });
    run(
        &d,
        "lenet5",
        &format!(
            "label 10 at index 13 of {} is not a class of model lenet5 (it has 10: labels 0 to 9)",
            d.join("train-labels-idx1-ubyte").display()
        ),
    );
    let d = dir.join("empty");
    idx_set(&d, 28, 28, [0, 10], |_| 0);
    run(
        &d,
        "lenet5",
        &format!(
            "{}: holds no images",
            d.join("train-images-idx3-ubyte").display()
        ),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Settings that would be ignored or silently changed are errors, in the flag and the
/// TOML form, refused before a run folder is made.
#[test]
fn settings_that_would_be_ignored_are_errors() {
    let dir = scratch("ignored-settings");
    let out = dir.join("run");
    let o = out.to_str().unwrap();
    let demo_ratios = "conv1=0.2/0.4,conv2=0.7/0.2,fc1=0.95/0.04,fc2=0.5/0.3";
    let flags: [(&[&str], &str); 7] = [
        (
            &["--global", "--ratios", demo_ratios],
            "the argument '--global' cannot be used with '--ratios",
        ),
        (
            &[
                "--ratios",
                "conv1=0.2/0.4,conv1=0.3/0.4,conv2=0.7/0.2,fc1=0.95/0.04,fc2=0.5/0.3",
            ],
            "--ratios names layer \"conv1\" twice",
        ),
        (
            &["--layer-blocks", "fc1=2x8,fc1=4x4"],
            "--layer-blocks names layer \"fc1\" twice",
        ),
        (
            &[
                "--ratios",
                "conv1=0.2/0.4,conv2=0.7/0.2,fc1=0.95/0.04,fc2=0.5/0.3,fc3=0.1/0.1",
            ],
            "ratios name layer \"fc3\", which lenet5 does not have (layers: conv1, conv2, fc1, fc2)",
        ),
        (
            &["--momentum", "0.5"],
            "momentum is SGD's (--optimizer sgd)",
        ),
        (
            &["--rounds", "1000000"],
            "rounds is 1000000; at most 100000 epochs per phase",
        ),
        (
            &["--seed", "9223372036854775807"],
            "seed 9223372036854775807 is out of range",
        ),
    ];
    // Tiny in every other way: were a case accepted, it would fail in seconds.
    let data = tiny_mnist().display().to_string();
    let quick = |given: &[&str]| {
        let mut v: Vec<String> = given.iter().map(|s| s.to_string()).collect();
        v.extend(
            [
                "--data-dir",
                &data,
                "--limit-train",
                "50",
                "--limit-test",
                "50",
                "--dense-epochs",
                "1",
                "--retrain-epochs",
                "0",
                "--no-epoch-eval",
                "--out",
                o,
            ]
            .map(String::from),
        );
        if !given.contains(&"--rounds") {
            v.extend(["--rounds", "0"].map(String::from));
        }
        v
    };
    for (args, needle) in flags {
        fails_with(&quick(args), needle);
    }
    let files = [
        (
            "three.toml",
            "[ratios]\nconv1 = [0.2, 0.4, 0.1]\nconv2 = [0.7, 0.2]\nfc1 = [0.95, 0.04]\nfc2 = [0.5, 0.3]\n",
            "three.toml, line 2, column 9: expected [prune, unify] (two numbers), got 3 values",
        ),
        (
            "one.toml",
            "uniform = [0.5]\n",
            "one.toml, line 1, column 11: expected [prune, unify] (two numbers), got 1 value",
        ),
        (
            "global.toml",
            "global = true\n[ratios]\nconv1 = [0.2, 0.4]\n",
            "`global` ranks blocks across layers with one pair",
        ),
        ("momentum.toml", "momentum = 0.5\n", "momentum is SGD's"),
        (
            "float.toml",
            "rounds = 2.5\n",
            "float.toml, line 1, column 10: invalid type: floating point `2.5`, expected usize",
        ),
        (
            "nan.toml",
            "rho0 = nan\n",
            "rho0 must be a positive number, got NaN",
        ),
    ];
    for (name, text, needle) in files {
        let f = toml_file(&dir, name, text);
        let e = fails_with(&quick(&["--config", f.to_str().unwrap()]), needle);
        assert!(e.contains(&f.display().to_string()), "{e}");
    }
    assert!(!out.exists(), "a refused setting made a run folder");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A user error is one `error: ` line naming the problem and the file, with no backtrace
/// even under RUST_BACKTRACE=1.
#[test]
fn a_bad_config_is_one_error_line_without_a_backtrace() {
    let dir = scratch("one-line");
    let f = toml_file(&dir, "bad.toml", "rounds = 1\nroundz = 2\n");
    let o = command(&[
        "--config".as_ref(),
        f.as_os_str(),
        "--out".as_ref(),
        dir.join("run").as_os_str(),
    ])
    .env("RUST_BACKTRACE", "1")
    .env_remove("RUST_LIB_BACKTRACE")
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with(&format!(
            "error: {}, line 2, column 1: unknown field `roundz`",
            f.display()
        )),
        "{stderr}"
    );
    let lower = stderr.to_lowercase();
    assert!(
        !lower.contains("backtrace") && !lower.contains("panicked"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `kill -9` at seven moments of one run, each time followed by `--resume` in a new
/// process: in the dense phase, while `dense.ot` is written, after an ADMM round's
/// projection, while the hard projection's checkpoint is written, in the retraining, while
/// the compressed file is exported and while `final.ot` is written. The run that survives
/// them all ends exactly where the uninterrupted one ends, and no temporary file is left.
#[test]
fn killed_seven_times_the_run_ends_where_an_uninterrupted_one_ends() {
    if gpu().is_none() {
        return;
    }
    use std::os::unix::process::ExitStatusExt;
    let out = scratch("crash");
    let resume_args = vec!["--resume".to_string(), out.display().to_string()];
    // (kill point, epochs done by the checkpoint the next process resumes from).
    let kills = [
        ("epoch:dense:2", 1),
        ("write:dense.ot", 1),
        ("round:2", 3),
        ("write:checkpoint.safetensors:2", 4),
        ("epoch:retrain", 4),
        ("write:compressed.safetensors", 6),
        ("write:final.ot", 6),
    ];
    let mut resumed_after = None;
    for (i, (point, done)) in kills.iter().enumerate() {
        let args = if i == 0 {
            tiny_args(&out, &PHASES)
        } else {
            resume_args.clone()
        };
        let o = command(&args)
            .env(microunify::fsio::KILL_AT_ENV, point)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.signal(),
            Some(9),
            "not killed at {point}: {stderr}"
        );
        if let Some(n) = resumed_after {
            let said = format!("resumed after {n} epochs");
            assert!(
                stderr.contains(&said),
                "at {point}: no {said:?} in {stderr}"
            );
        }
        resumed_after = Some(*done);
    }
    resume(&out, resumed_after.unwrap());
    let left: Vec<String> = names(&out)
        .into_iter()
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    assert_same_end(baseline(), &out, true);
    let _ = std::fs::remove_dir_all(&out);
}
