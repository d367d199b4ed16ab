//! `microunify infer`: bad networks and files get errors naming the layer, before any GPU
//! is opened; and (with libtorch) a short train-gpu run of LeNet-5 on a slice of MNIST,
//! whose recorded layer list and normalisation `infer` runs to the run's own accuracy, with
//! logits that match libtorch's forward pass of the run's final.ot.

#[path = "../kernels-tests/common/mod.rs"]
mod common;

use microunify::format::{CompressedFile, RawTensor};
use std::path::{Path, PathBuf};

const EXE: &str = env!("CARGO_BIN_EXE_microunify");

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("infer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn f32_tensor(shape: &[usize], v: &[f32]) -> RawTensor {
    RawTensor {
        dtype: safetensors::Dtype::F32,
        shape: shape.to_vec(),
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// A file with one plain linear layer over MNIST images (nothing compressed).
fn linear_file(dir: &Path) -> PathBuf {
    let mut f = CompressedFile::default();
    let w: Vec<f32> = (0..7840)
        .map(|i| ((i * 37) % 101) as f32 / 101.0 - 0.5)
        .collect();
    f.passthrough
        .insert("fc.weight".into(), f32_tensor(&[10, 784], &w));
    f.passthrough
        .insert("fc.bias".into(), f32_tensor(&[10], &[0.0; 10]));
    let path = dir.join("linear.safetensors");
    f.write(&path).unwrap();
    path
}

fn network(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn bad_networks_are_errors_naming_the_layer() {
    let dir = scratch("errors");
    let model = linear_file(&dir);
    let model = model.to_str().unwrap();
    let fails = |net: Option<&str>, needle: &str| {
        let mut args = vec!["infer", "--model", model, "--limit", "10"];
        if let Some(n) = net {
            args.extend(["--network", n]);
        }
        common::fails_with(EXE, &args, needle);
    };
    fails(None, "records no layer list");
    let n = network(
        &dir,
        "a.toml",
        "[[layer]]\ntype = \"linear\"\nweight = \"fc.weight\"\n",
    );
    fails(Some(&n), "layer \"#1 linear fc.weight\"");
    fails(Some(&n), "put a flatten layer before it");
    let n = network(
        &dir,
        "b.toml",
        "[[layer]]\ntype = \"flatten\"\n[[layer]]\ntype = \"linear\"\nweight = \"fc2.weight\"\n",
    );
    fails(Some(&n), "layer \"#2 linear fc2.weight\"");
    fails(Some(&n), "no tensor \"fc2.weight\"");
    let n = network(&dir, "c.toml", "[[layer]]\ntype = \"dropout\"\n");
    fails(Some(&n), "layer 1: unknown variant `dropout`");
    let n = network(
        &dir,
        "d.toml",
        "[[layer]]\ntype = \"conv\"\nweight = \"fc.weight\"\n",
    );
    fails(Some(&n), "a conv weight is [Cout, Cin, kh, kw]");
    let n = network(
        &dir,
        "e.toml",
        "[[layer]]\ntype = \"maxpool\"\nkernel = 40\n",
    );
    fails(Some(&n), "each side must be 1 to 32");
    let n = network(
        &dir,
        "f.toml",
        "[[layer]]\ntype = \"flatten\"\n[[layer]]\ntype = \"linear\"\nweight = \"fc.weight\"\nbias = \"fc.weight\"\n",
    );
    fails(
        Some(&n),
        "bias \"fc.weight\" has shape [10, 784], expected [10]",
    );
    // The network ends before the logits are one per class.
    let n = network(&dir, "g.toml", "[[layer]]\ntype = \"relu\"\n");
    fails(Some(&n), "not one logit per class");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_format_keeps_and_checks_the_network_and_normalization() {
    use microunify::format::{NETWORK_KEY, NORMALIZATION_KEY};
    use microunify::infer::network::NetworkDef;
    let def = NetworkDef::parse(
        "[[layer]]\ntype = \"flatten\"\n[[layer]]\ntype = \"linear\"\nweight = \"fc.weight\"\n",
        "net",
    )
    .unwrap();
    let mut f = CompressedFile::default();
    f.set_network(&def);
    f.set_normalization(&[[0.5, 0.25]]);
    let back = CompressedFile::from_bytes(&f.to_bytes().unwrap()).unwrap();
    assert_eq!(back.stored_network().unwrap(), Some(def));
    assert_eq!(
        back.stored_normalization().unwrap(),
        Some(vec![[0.5, 0.25]])
    );
    for (key, value, needle) in [
        (NORMALIZATION_KEY, "[[0.5, 0]]", "positive finite"),
        (NORMALIZATION_KEY, "0.5", "not a JSON list"),
        (
            NETWORK_KEY,
            "{\"layer\": [{\"type\": \"dropout\"}]}",
            "dropout",
        ),
        ("microunify.other", "1", "reserved"),
    ] {
        let mut bad = CompressedFile::default();
        bad.metadata.insert(key.into(), value.into());
        let e = bad.to_bytes().unwrap_err().to_string();
        assert!(e.contains(needle), "{key}={value}: {e}");
    }
}

#[cfg(feature = "train")]
mod trained {
    use super::*;
    use microunify::data::DataSource;
    use microunify::infer::host::{Plan, WeightMode};
    use microunify::infer::network::Network;
    use microunify::infer::{Images, evaluate};
    use microunify::train::models::{Builtin, ModelKind};
    use std::process::Command;

    const TRAIN_GPU: &str = env!("CARGO_BIN_EXE_train-gpu");
    const TEST_IMAGES: usize = 500;

    fn mnist() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/mnist")
    }

    #[test]
    fn a_trained_lenet5_runs_to_its_own_accuracy_and_logits() {
        let Some(gpu) = common::gpu() else { return };
        let dir = scratch("trained");
        let run = dir.join("run");
        let n = TEST_IMAGES.to_string();
        let out = Command::new(TRAIN_GPU)
            .env("OMP_NUM_THREADS", "1")
            .args([
                "--model",
                "lenet5",
                "--limit-train",
                "2000",
                "--limit-test",
                &n,
            ])
            .args([
                "--dense-epochs",
                "1",
                "--rounds",
                "1",
                "--retrain-epochs",
                "1",
            ])
            .arg("--out")
            .arg(&run)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("report.json")).unwrap()).unwrap();
        let want = report["final_accuracy"].as_f64().unwrap();

        // The file records the built-in's layer list and the normalisation it trained with.
        let model = run.join("compressed.safetensors");
        let file = CompressedFile::read(&model).unwrap();
        let def = file.stored_network().unwrap().expect("a layer list");
        assert_eq!(def, ModelKind::Lenet5.network());
        let stats = file
            .stored_normalization()
            .unwrap()
            .expect("a normalisation");
        let recorded: Vec<[f64; 2]> =
            serde_json::from_value(report["normalization"].clone()).unwrap();
        assert_eq!(stats, recorded);

        // The CLI's accuracy is the run's.
        let json = dir.join("infer.json");
        let o = Command::new(EXE)
            .args([
                "infer", "--batch", "64", "--dense", "--limit", &n, "--model",
            ])
            .arg(&model)
            .arg("--json")
            .arg(&json)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let got: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        for key in ["accuracy", "dense_accuracy"] {
            let a = got[key].as_f64().unwrap();
            assert!((a - want).abs() <= 0.05, "{key} {a}, report.json {want}");
        }
        assert!(got["speedup"].as_f64().unwrap() > 0.0);

        // Logits against libtorch's forward pass of final.ot on the same images.
        let (_, test) = DataSource::IdxDir(mnist()).load().unwrap();
        let images = Images::normalised(&test, &stats, Some(TEST_IMAGES));
        let net = Network::resolve(&def, &file, test.shape).unwrap();
        let mut torch = Builtin::new(ModelKind::Lenet5, tch::Device::Cpu, 1);
        torch.load(&run.join("final.ot")).unwrap();
        let x = tch::Tensor::from_slice(&images.values).view([TEST_IMAGES as i64, 1, 28, 28]);
        let t = tch::no_grad(|| torch.forward(&x));
        let want_logits: Vec<f32> = Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
        for batch in [1, 7, 64] {
            for mode in [WeightMode::Compressed, WeightMode::Dense] {
                let plan = Plan::new(&gpu, &net, batch, mode).unwrap();
                for start in (0..TEST_IMAGES).step_by(batch).take(3) {
                    let end = (start + batch).min(TEST_IMAGES);
                    let got = plan
                        .logits(&gpu, &images.values[start * 784..end * 784])
                        .unwrap();
                    let want = &want_logits[start * 10..end * 10];
                    for (i, (g, w)) in got.iter().zip(want).enumerate() {
                        let row = &want[i / 10 * 10..i / 10 * 10 + 10];
                        let top = row.iter().fold(1.0f32, |a, v| a.max(v.abs()));
                        assert!(
                            (g - w).abs() <= 1e-4 * top,
                            "batch {batch}, {mode:?}, image {}: logit {}: GPU {g}, libtorch {w}",
                            start + i / 10,
                            i % 10
                        );
                    }
                }
            }
        }
        // And the library's evaluation agrees with the CLI's.
        let plan = Plan::new(&gpu, &net, 100, WeightMode::Compressed).unwrap();
        let m = evaluate(&gpu, &plan, &images, |_, _| {}).unwrap();
        assert!((m.accuracy() - want).abs() <= 0.05, "{}", m.accuracy());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
