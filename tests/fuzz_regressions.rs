//! Replays, on the stable toolchain, every input the fuzzers (fuzz/, nightly) ever found a
//! bug with: each file under `fuzz/regressions/<target>/` goes through the same entry
//! point as its fuzz target and must come back as `Ok` or `Err`, never a panic. The seeds
//! the fuzzers start from (`fuzz/seeds/<target>/`) are replayed too, so a seed that no
//! longer parses as the valid file it was made to be shows up here.

use std::path::{Path, PathBuf};

/// The entry point of each fuzz target, as its `fuzz_targets/<target>.rs` calls it; true
/// when the input was accepted.
fn entry(target: &str) -> Option<fn(&[u8]) -> bool> {
    Some(match target {
        "compressed_file" => |d| {
            use microunify::format::{CompressedFile, reseal};
            let sealed = reseal(d).is_some_and(|b| CompressedFile::from_bytes(&b).is_ok());
            CompressedFile::from_bytes(d).is_ok() | sealed
        },
        "project_input" => |d| {
            use microunify::format::input::{ProjectInput, Selection};
            ProjectInput::parse(d, &Selection::default())
                .and_then(|input| input.specs(microunify::BlockShape::default()))
                .is_ok()
        },
        "idx" => |d| {
            let path = Path::new("fuzz.idx");
            let decode = |dims| microunify::data::idx::decode_idx_u8(path, d, dims, 64 << 20);
            // Either dimension count is a valid file; the fuzz target tries both.
            decode(3).is_ok() | decode(1).is_ok()
        },
        #[cfg(feature = "train")]
        "settings_toml" => |d| {
            use microunify::train::settings::FileConfig;
            std::str::from_utf8(d).is_ok_and(|text| {
                FileConfig::parse(text, Path::new("fuzz.toml"))
                    .and_then(|f| f.resolve())
                    .and_then(|s| s.to_toml())
                    .is_ok()
            })
        },
        #[cfg(feature = "train")]
        "checkpoint" => |d| {
            use microunify::train::checkpoint::{Checkpoint, reseal};
            // Accepted: decoded and range-checked. The check against the model runs too,
            // but the small seeds fail it on purpose (see `train_seeds::checkpoints`).
            let read = |b: &[u8]| {
                Checkpoint::from_bytes(b, Path::new("fuzz.safetensors"))
                    .map(|c| {
                        // A TorchScript run's module is libtorch's to parse; the built-ins' is ours.
                        if c.module.is_none()
                            && let Ok(info) = c.model_info(&c.progress.config)
                        {
                            let _ = c.check_against(&c.progress.config, &info);
                        }
                    })
                    .is_ok()
            };
            let sealed = reseal(d).is_some_and(|b| read(&b));
            read(d) | sealed
        },
        _ => return None,
    })
}

/// The entries of `dir` that `keep` accepts, sorted (none when `dir` does not exist).
fn entries(dir: &Path, keep: fn(&Path) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| keep(p))
        .collect();
    v.sort();
    v
}

fn replay(kind: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind);
    let mut n = 0;
    for dir in entries(&root, Path::is_dir) {
        let target = dir.file_name().unwrap().to_str().unwrap().to_string();
        let Some(run) = entry(&target) else {
            // A target of the `train` feature in a build without it.
            if cfg!(feature = "train") {
                panic!("fuzz/{kind}/{target}: no entry point for this target");
            }
            continue;
        };
        for f in entries(&dir, Path::is_file) {
            let bytes = std::fs::read(&f).unwrap();
            let result = std::panic::catch_unwind(|| run(&bytes));
            let accepted = result.unwrap_or_else(|_| panic!("{} panics", f.display()));
            // Seeds are valid files by construction.
            assert!(
                accepted || kind != "seeds",
                "seed {} is refused",
                f.display()
            );
            n += 1;
        }
    }
    n
}

#[test]
fn fuzz_crashers_stay_fixed() {
    let n = replay("regressions");
    eprintln!("replayed {n} minimised crashers");
}

#[test]
fn fuzz_seeds_do_not_panic() {
    let n = replay("seeds");
    assert!(n > 0, "no seeds under fuzz/seeds");
}

/// Small valid compressed files: a linear and a conv layer with every state, ragged edges,
/// three block shapes, the dtypes a layer may stand for, a pass-through tensor.
fn compressed_seeds() -> Vec<(String, Vec<u8>)> {
    use microunify::block::{ConvLayout, LayerSpec};
    use microunify::compressed::CompressedMatrix;
    use microunify::format::{CompressedFile, CompressedLayer, RawTensor};
    use microunify::{Ratios, SelectionMode};
    let mut out = Vec::new();
    use safetensors::Dtype;
    let cases = [
        ("2x4", 0.3, 0.3, [Dtype::F32, Dtype::F16]),
        ("4x4", 0.5, 0.4, [Dtype::BF16, Dtype::F32]),
        ("1x8", 0.0, 1.0, [Dtype::F64, Dtype::F32]),
    ];
    for (i, (block, prune, unify, dtypes)) in cases.into_iter().enumerate() {
        let shapes: [(&str, Vec<usize>); 2] = [
            ("fc.weight", vec![6, 10]),
            ("conv.weight", vec![5, 2, 3, 3]),
        ];
        let specs: Vec<LayerSpec> = shapes
            .iter()
            .map(|(n, s)| LayerSpec::new(*n, s, block.parse().unwrap()).unwrap())
            .collect();
        let data: Vec<Vec<f32>> = specs
            .iter()
            .map(|s| {
                (0..s.view.len())
                    .map(|j| ((j * 7919 % 97) as f32 - 48.0) / 13.0)
                    .collect()
            })
            .collect();
        let refs: Vec<&[f32]> = data.iter().map(Vec::as_slice).collect();
        let ratios = Ratios::new(prune, unify, "seed").unwrap();
        let p = microunify::cpu::projection::project(
            &specs,
            &refs,
            &SelectionMode::PerLayer(vec![ratios; specs.len()]),
        )
        .unwrap();
        let mut file = CompressedFile::default();
        for (((spec, (name, shape)), p), dtype) in specs.iter().zip(&shapes).zip(&p).zip(dtypes) {
            let m = CompressedMatrix::from_dense(spec.view, spec.block, &p.z, &p.states).unwrap();
            let l = CompressedLayer::new(*name, shape, ConvLayout::ChannelMajor, m).unwrap();
            file.layers.push(l.with_dtype(dtype).unwrap());
        }
        file.passthrough.insert(
            "fc.bias".into(),
            RawTensor {
                dtype: Dtype::F32,
                shape: vec![6],
                data: vec![0; 24],
            },
        );
        out.push((format!("small-{i}.safetensors"), file.to_bytes().unwrap()));
    }
    out
}

/// Plain checkpoints as `project` takes them (F32, F16, BF16, F64, linear and conv, tensors
/// that pass through), and one compressed file (which `project` compresses again).
fn project_seeds() -> Vec<(String, Vec<u8>)> {
    use safetensors::Dtype;
    use safetensors::tensor::TensorView;
    let f32s: Vec<u8> = (0..60)
        .flat_map(|i| ((i as f32 - 30.0) / 9.0).to_le_bytes())
        .collect();
    let halves: Vec<u8> = (0..90u16)
        .flat_map(|i| (0x3c00 + i * 13).to_le_bytes())
        .collect();
    let doubles: Vec<u8> = (0..24)
        .flat_map(|i| (f64::from(i) / 7.0 - 1.5).to_le_bytes())
        .collect();
    let tensors: Vec<(&str, Dtype, Vec<usize>, &[u8])> = vec![
        ("deep.weight", Dtype::F64, vec![3, 2, 2, 2], &doubles),
        ("fc.weight", Dtype::F32, vec![6, 10], &f32s),
        ("fc.bias", Dtype::F32, vec![6], &f32s[..24]),
        ("conv.weight", Dtype::F16, vec![5, 2, 3, 3], &halves),
        ("emb.weight", Dtype::BF16, vec![9, 10], &halves[..180]),
        ("steps", Dtype::I64, vec![1], &[7, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let mut out = vec![(
        "checkpoint.safetensors".to_string(),
        safetensors::serialize(views, None).unwrap(),
    )];
    out.extend(compressed_seeds().into_iter().take(1));
    out
}

/// IDX files: images and labels, plain and gzipped.
fn idx_seeds() -> Vec<(String, Vec<u8>)> {
    use std::io::Write;
    let idx = |dims: &[u32], body: &[u8]| {
        let mut v = vec![0, 0, 8, dims.len() as u8];
        dims.iter().for_each(|d| v.extend(d.to_be_bytes()));
        v.extend(body);
        v
    };
    let gz = |b: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    };
    let images = idx(
        &[3, 4, 5],
        &(0..60).map(|i| (i * 37 % 256) as u8).collect::<Vec<_>>(),
    );
    let labels = idx(&[3], &[1, 7, 9]);
    vec![
        ("images-idx3-ubyte".into(), images.clone()),
        ("images-idx3-ubyte.gz".into(), gz(&images)),
        ("labels-idx1-ubyte".into(), labels.clone()),
        ("labels-idx1-ubyte.gz".into(), gz(&labels)),
    ]
}

#[cfg(feature = "train")]
mod train_seeds {
    use microunify::train::checkpoint::{Checkpoint, HostTensor, Progress};
    use microunify::train::config::AdmmConfig;
    use std::collections::BTreeMap;

    /// The TOML schema's corners: the demo's settings written out, per-layer ratios and
    /// blocks, global targets, SGD.
    pub fn settings() -> Vec<(String, Vec<u8>)> {
        let demo = microunify::train::settings::FileConfig::parse("", "seed".as_ref())
            .and_then(|f| f.resolve())
            .and_then(|s| s.to_toml())
            .unwrap();
        let texts = [
            demo,
            "model = \"lenet-300-100\"\nblock = \"2x8\"\nrounds = 3\n\n[ratios]\nfc1 = [0.6, 0.3]\nfc2 = [0.5, 0.3]\nfc3 = [0.2, 0.3]\n\n[layer_blocks]\nfc3 = \"1x8\"\n".to_string(),
            "global = true\nuniform = [0.5, 0.3]\noptimizer = \"sgd\"\nmomentum = 0.8\nlr = 0.01\nschedule = \"constant\"\n".to_string(),
        ];
        texts
            .into_iter()
            .enumerate()
            .map(|(i, t)| (format!("settings-{i}.toml"), t.into_bytes()))
            .collect()
    }

    /// A fresh run's checkpoint with a few small tensors: small, so the fuzzer runs fast;
    /// the check against the model then fails on shapes, behind every check before it.
    pub fn checkpoints() -> Vec<(String, Vec<u8>)> {
        let cfg = AdmmConfig::demo();
        let tensors = BTreeMap::from([
            (
                "var.fc2.weight".to_string(),
                HostTensor {
                    shape: vec![2, 3],
                    data: vec![0.5, -1.0, 2.0, 0.0, 1e-3, -7.0],
                },
            ),
            (
                "opt.first.fc2.weight".to_string(),
                HostTensor {
                    shape: vec![6],
                    data: vec![0.0; 6],
                },
            ),
        ]);
        let c = Checkpoint {
            progress: Progress::new(&cfg),
            tensors,
            states: BTreeMap::new(),
            module: None,
        };
        vec![("fresh.safetensors".into(), c.to_bytes().unwrap())]
    }
}

/// Writes the fuzzers' seed files; run it when a format changes:
/// `cargo test --release --test fuzz_regressions -- --ignored write_seeds`.
#[test]
#[ignore]
fn write_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let all = [
        ("compressed_file", compressed_seeds()),
        ("project_input", project_seeds()),
        ("idx", idx_seeds()),
    ];
    #[cfg(feature = "train")]
    let all = all.into_iter().chain([
        ("settings_toml", train_seeds::settings()),
        ("checkpoint", train_seeds::checkpoints()),
    ]);
    for (target, seeds) in all {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}
