//! `train-gpu --model FILE.pt`: the user's own TorchScript networks (the fixtures in
//! assets/models, made by scripts/fixtures/make_fixtures.py) trained, compressed, exported
//! as TorchScript that runs and scores what the report says, resumed bit-exactly with
//! BatchNorm, and every bad input a clear error.

use microunify::data::{DataSource, Normalization};
use microunify::format::CompressedFile;
use microunify::train::data::{TensorSet, load};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tch::{CModule, Device, Kind, Tensor};

const EXE: &str = env!("CARGO_BIN_EXE_train-gpu");

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> String {
    root()
        .join("assets/models")
        .join(name)
        .display()
        .to_string()
}

fn gpu_ok() -> bool {
    microunify::gpu::Gpu::new(&Default::default()).is_ok()
        || std::env::var_os("MICROUNIFY_REQUIRE_GPU").is_some()
}

fn scratch(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("torchscript-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    p
}

fn train_gpu<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let mut c = Command::new(EXE);
    c.args(args)
        .env("OMP_NUM_THREADS", "1")
        .env("RUST_LIB_BACKTRACE", "0")
        .env_remove(microunify::fsio::KILL_AT_ENV);
    c.output().unwrap()
}

fn succeeds<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let out = train_gpu(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    stderr
}

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

/// A short run of `model` on 1000 MNIST training and 300 test images.
fn tiny(model: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--model",
        model,
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
        "2",
        "--retrain-epochs",
        "1",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(out.display().to_string());
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The test images the tiny runs score, normalised as train-gpu does by default.
fn test_set() -> TensorSet {
    let source = DataSource::IdxDir(root().join("assets/mnist"));
    let mut d = load(&source, Device::Cpu, &Normalization::Training).unwrap();
    d.limit(None, Some(300));
    d.test
}

/// What a user does with `compressed.pt`: load it, score the test images.
fn accuracy_of(module: &CModule) -> f64 {
    let set = test_set();
    let out = tch::no_grad(|| module.forward_ts(&[&set.images]).unwrap());
    let hits = i64::try_from(
        out.argmax(-1, false)
            .eq_tensor(&set.labels)
            .sum(Kind::Int64),
    )
    .unwrap();
    100.0 * hits as f64 / set.len() as f64
}

/// `compressed.pt` runs, is in evaluation mode, scores `report.json`'s final accuracy,
/// and each compressed weight in it is exactly the compressed file's reconstruction (so
/// it has the block structure the file records).
fn check_export(out: &Path) {
    let module = CModule::load(out.join("compressed.pt")).unwrap();
    let report = json(&out.join("report.json"));
    let reported = report["final_accuracy"].as_f64().unwrap();
    let got = accuracy_of(&module);
    assert!(
        (got - reported).abs() <= 0.05,
        "compressed.pt scores {got}%, report.json says {reported}%"
    );
    let file = CompressedFile::read(&out.join("compressed.safetensors")).unwrap();
    assert!(!file.layers.is_empty());
    let params = module.named_parameters().unwrap();
    for layer in &file.layers {
        let (_, w) = params
            .iter()
            .find(|(n, _)| *n == layer.name)
            .unwrap_or_else(|| panic!("compressed.pt has no parameter {}", layer.name));
        let w: Vec<f32> = Vec::try_from(w.flatten(0, -1)).unwrap();
        assert_eq!(w, layer.dense(), "layer {}", layer.name);
    }
}

#[test]
fn a_scripted_cnn_is_trained_compressed_and_exported() {
    if !gpu_ok() {
        return;
    }
    let out = scratch("scripted");
    succeeds(&tiny(&fixture("tiny_cnn_scripted.pt"), &out, &[]));
    check_export(&out);
    let report = json(&out.join("report.json"));
    let layers: Vec<&str> = report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    // Every 2-D and 4-D float parameter, named as in named_parameters().
    assert_eq!(layers.len(), 3, "{layers:?}");
    assert!(layers.iter().all(|l| l.ends_with(".weight")), "{layers:?}");
    assert!(out.join("dense.pt").is_file());
    assert!(!out.join("final.ot").exists());
}

/// A scripted ResNet with BatchNorm: training mode updates the running statistics, and
/// they are exported beside the weights (a traced module freezes its BatchNorm's mode, as
/// in PyTorch, so only a scripted one shows this).
#[test]
fn batchnorm_statistics_train_and_are_exported() {
    if !gpu_ok() {
        return;
    }
    let model = fixture("fashion_resnet_scripted.pt");
    let out = scratch("bn-scripted");
    let mut args = tiny(&model, &out, &[]);
    for (flag, v) in [
        ("--limit-train", "300"),
        ("--limit-test", "100"),
        ("--rounds", "1"),
    ] {
        let at = args.iter().position(|a| a == flag).unwrap();
        args[at + 1] = v.into();
    }
    succeeds(&args);
    let file = CompressedFile::read(&out.join("compressed.safetensors")).unwrap();
    let vars: Vec<(&String, Vec<f32>)> = file
        .passthrough
        .iter()
        .filter(|(k, _)| k.ends_with("running_var"))
        .map(|(k, t)| (k, bytemuck::pod_collect_to_vec(&t.data)))
        .collect();
    assert!(!vars.is_empty(), "no running_var in the compressed file");
    // A fresh BatchNorm's running variance is all ones; training moves it.
    assert!(
        vars.iter().all(|(_, v)| v.iter().any(|&x| x != 1.0)),
        "the running statistics did not train"
    );
    assert!(
        file.passthrough
            .keys()
            .any(|k| k.ends_with("num_batches_tracked"))
    );
    // Resumed after the dense epoch (statistics trained, in the checkpoint's module): the
    // same end, bit for bit.
    let part = scratch("bn-scripted-stopped");
    let mut stopped = args.clone();
    let at = stopped.iter().position(|a| a == "--out").unwrap();
    stopped[at + 1] = part.display().to_string();
    stopped.extend(["--stop-after".into(), "1".into()]);
    fails_with(&stopped, "stopped after");
    succeeds(&["--resume", part.to_str().unwrap()]);
    let read = |d: &Path| std::fs::read(d.join("compressed.safetensors")).unwrap();
    assert!(
        read(&out) == read(&part),
        "a resumed BatchNorm run ended elsewhere"
    );
}

/// A traced network with BatchNorm and a residual add: its buffers are exported beside the
/// weights, and a resumed run ends bit for bit where an uninterrupted one does.
#[test]
fn batchnorm_trains_exports_and_resumes_exactly() {
    if !gpu_ok() {
        return;
    }
    let model = fixture("tiny_resnet_traced.pt");
    let whole = scratch("bn-whole");
    succeeds(&tiny(&model, &whole, &[]));
    check_export(&whole);
    let file = CompressedFile::read(&whole.join("compressed.safetensors")).unwrap();
    let stats: Vec<&String> = file
        .passthrough
        .keys()
        .filter(|k| k.ends_with("running_mean") || k.ends_with("running_var"))
        .collect();
    assert!(
        !stats.is_empty(),
        "no BatchNorm statistics in the compressed file"
    );
    let before = CModule::load(&model).unwrap();
    let after = CModule::load(whole.join("compressed.pt")).unwrap();
    let _ = (before, after);

    for stop in ["1", "3", "4"] {
        let part = scratch(&format!("bn-stopped-{stop}"));
        fails_with(
            &tiny(&model, &part, &["--stop-after", stop]),
            "stopped after",
        );
        succeeds(&["--resume", part.to_str().unwrap()]);
        for f in ["compressed.safetensors", "compressed.pt"] {
            let (a, b) = (
                std::fs::read(whole.join(f)).unwrap(),
                std::fs::read(part.join(f)).unwrap(),
            );
            if f.ends_with(".pt") {
                // The archive's bytes hold a record of where it was written; the tensors
                // must agree exactly.
                let (a, b) = (
                    CModule::load(whole.join(f)).unwrap(),
                    CModule::load(part.join(f)).unwrap(),
                );
                let (a, b) = (a.named_parameters().unwrap(), b.named_parameters().unwrap());
                for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
                    assert_eq!(na, nb);
                    assert!(ta.equal(tb), "{f}: {na} differs after a resume at {stop}");
                }
            } else {
                assert!(a == b, "{f} differs after a resume at checkpoint {stop}");
            }
        }
        let (ra, rb) = (
            json(&whole.join("report.json")),
            json(&part.join("report.json")),
        );
        assert_eq!(ra["final_accuracy"], rb["final_accuracy"]);
    }
}

#[test]
fn an_autoencoder_reconstructs_and_reports_psnr() {
    if !gpu_ok() {
        return;
    }
    let out = scratch("autoencoder");
    succeeds(&tiny(
        &fixture("tiny_autoencoder_scripted.pt"),
        &out,
        &["--task", "reconstruct"],
    ));
    let r = json(&out.join("report.json"));
    let psnr = r["final_psnr"].as_f64().unwrap();
    assert!(psnr > 5.0 && psnr < 60.0, "PSNR {psnr}");
    assert!(r.get("final_accuracy").is_none());
    assert!(r["final_loss"].as_f64().unwrap() > 0.0);
    // A classifier's labels do not matter; its output shape does.
    fails_with(
        &tiny(
            &fixture("tiny_cnn_scripted.pt"),
            &scratch("ae-bad"),
            &["--task", "reconstruct"],
        ),
        "a reconstruction must have the input's shape",
    );
}

#[test]
fn include_and_exclude_choose_the_layers() {
    if !gpu_ok() {
        return;
    }
    let out = scratch("include");
    succeeds(&tiny(
        &fixture("tiny_cnn_scripted.pt"),
        &out,
        &["--exclude", "^fc|classifier"],
    ));
    let r = json(&out.join("report.json"));
    for l in r["layers"].as_array().unwrap() {
        let name = l["name"].as_str().unwrap();
        assert!(
            !name.starts_with("fc") && !name.contains("classifier"),
            "{name}"
        );
    }
}

#[test]
fn bad_models_and_settings_are_named() {
    let dir = scratch("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("notes.pt");
    std::fs::write(&text, "not a model").unwrap();
    let run = |model: &str, extra: &[&str], needle: &str| {
        fails_with(&tiny(model, &dir.join("out"), extra), needle);
    };
    run(text.to_str().unwrap(), &[], "not a TorchScript module");
    run("no/such/model.pt", &[], "neither a built-in network");
    run(
        &fixture("no_weights_scripted.pt"),
        &[],
        "no compressible parameter",
    );
    let cnn = fixture("tiny_cnn_scripted.pt");
    run(&cnn, &["--include", "nothing-like-this"], "matches none");
    run(&cnn, &["--exclude", "."], "leaves none");
    let t = tiny(&cnn, &dir.join("out"), &[]);
    let mut t: Vec<String> = t
        .into_iter()
        .filter(|a| !["--prune", "--unify", "0.5", "0.3"].contains(&a.as_str()))
        .collect();
    t.extend(["--ratios".into(), "conv7.weight=0.5/0.2".into()]);
    fails_with(&t, "which");
    // 3×32×32 input against MNIST's 1×28×28.
    run(
        &fixture("cnn3x32_scripted.pt"),
        &[],
        "does not take the training images (1×28×28)",
    );
    run(
        &cnn,
        &["--init", &cnn],
        "--init loads weights into a built-in model",
    );
}

/// A pretrained module starts ADMM from its own weights: dense accuracy is theirs.
#[test]
fn zero_dense_epochs_start_from_the_modules_weights() {
    if !gpu_ok() {
        return;
    }
    let model = fixture("tiny_cnn_scripted.pt");
    let out = scratch("pretrained");
    let mut args = tiny(&model, &out, &[]);
    let at = args.iter().position(|a| a == "--dense-epochs").unwrap();
    args[at + 1] = "0".into();
    succeeds(&args);
    let r = json(&out.join("report.json"));
    let own = accuracy_of(&CModule::load(&model).unwrap());
    let dense = r["dense_accuracy"].as_f64().unwrap();
    assert!(
        (dense - own).abs() <= 0.05,
        "dense {dense} vs the module's own {own}"
    );
    let _ = Tensor::zeros([1], (Kind::Float, Device::Cpu));
}
