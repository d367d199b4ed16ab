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
        "compressed_file" => |d| microunify::format::CompressedFile::from_bytes(d).is_ok(),
        "project_input" => |d| {
            use microunify::format::input::{ProjectInput, Selection};
            ProjectInput::parse(d, &Selection::default())
                .and_then(|input| input.specs(microunify::BlockShape::default()))
                .is_ok()
        },
        _ => return None,
    })
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

fn replay(kind: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(kind);
    let mut n = 0;
    for dir in files_and_dirs(&root) {
        let target = dir.file_name().unwrap().to_str().unwrap().to_string();
        let Some(run) = entry(&target) else {
            // A target of the `train` feature in a build without it.
            if cfg!(feature = "train") {
                panic!("fuzz/{kind}/{target}: no entry point for this target");
            }
            continue;
        };
        for f in files(&dir) {
            let bytes = std::fs::read(&f).unwrap();
            let result = std::panic::catch_unwind(|| run(&bytes));
            let accepted = result.unwrap_or_else(|_| panic!("{} panics", f.display()));
            // Seeds are valid files by construction.
            assert!(accepted || kind != "seeds", "seed {} is refused", f.display());
            n += 1;
        }
    }
    n
}

fn files_and_dirs(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
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
/// two block shapes, a pass-through tensor.
fn compressed_seeds() -> Vec<(String, Vec<u8>)> {
    use microunify::block::{ConvLayout, LayerSpec};
    use microunify::compressed::CompressedMatrix;
    use microunify::format::{CompressedFile, CompressedLayer, RawTensor};
    use microunify::{Ratios, SelectionMode};
    let mut out = Vec::new();
    for (i, (block, prune, unify)) in [("2x4", 0.3, 0.3), ("4x4", 0.5, 0.4), ("1x8", 0.0, 1.0)]
        .into_iter()
        .enumerate()
    {
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
        for ((spec, (name, shape)), p) in specs.iter().zip(&shapes).zip(&p) {
            let m = CompressedMatrix::from_dense(spec.view, spec.block, &p.z, &p.states).unwrap();
            file.layers.push(
                CompressedLayer::new(*name, shape, ConvLayout::ChannelMajor, m).unwrap(),
            );
        }
        file.passthrough.insert(
            "fc.bias".into(),
            RawTensor {
                dtype: safetensors::Dtype::F32,
                shape: vec![6],
                data: vec![0; 24],
            },
        );
        out.push((format!("small-{i}.safetensors"), file.to_bytes().unwrap()));
    }
    out
}

/// Plain checkpoints as `project` takes them (F32, F16, BF16, linear and conv, tensors
/// that pass through), and one compressed file (which `project` compresses again).
fn project_seeds() -> Vec<(String, Vec<u8>)> {
    use safetensors::Dtype;
    use safetensors::tensor::TensorView;
    let f32s: Vec<u8> = (0..60).flat_map(|i| ((i as f32 - 30.0) / 9.0).to_le_bytes()).collect();
    let halves: Vec<u8> = (0..90u16).flat_map(|i| (0x3c00 + i * 13).to_le_bytes()).collect();
    let tensors: Vec<(&str, Dtype, Vec<usize>, &[u8])> = vec![
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

/// Writes the fuzzers' seed files; run it when a format changes:
/// `cargo test --release --test fuzz_regressions -- --ignored write_seeds`.
#[test]
#[ignore]
fn write_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    for (target, seeds) in [
        ("compressed_file", compressed_seeds()),
        ("project_input", project_seeds()),
    ] {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}
