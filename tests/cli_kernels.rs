//! The `microunify` binary's kernel commands: one block-size limit everywhere, `demo`
//! failing on any difference from the CPU reference that is not a proven near-tie,
//! `project` ranking blocks correctly at any magnitude, `bench gemm` checking its results.

#[path = "../kernels-tests/common/mod.rs"]
mod common;

use microunify::block::{BlockState, MAX_BLOCK_SIDE};
use microunify::format::CompressedFile;
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use std::path::PathBuf;
use std::process::Output;

const EXE: &str = env!("CARGO_BIN_EXE_microunify");

fn run(args: &[&str]) -> Output {
    common::run_bin(EXE, args)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The command must be refused by argument parsing (exit 2, before any GPU), naming the
/// shape and the limit.
fn refused_by_the_block_limit(args: &[&str], shape: &str) {
    let out = run(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    let limit = format!("at most {MAX_BLOCK_SIDE} per side");
    assert!(
        err.contains(shape) && err.contains(&limit),
        "{args:?}: expected {shape:?} and {limit:?} in: {err}"
    );
}

#[test]
fn every_command_refuses_blocks_past_the_limit() {
    for shape in ["500x500", "256x257", "33x32", "1x33"] {
        refused_by_the_block_limit(&["demo", "--block", shape], shape);
        refused_by_the_block_limit(&["bench", "projection", "--block", shape], shape);
    }
    for shape in ["33x33", "64x64"] {
        refused_by_the_block_limit(&["bench", "gemm", "--blocks", shape], shape);
        refused_by_the_block_limit(
            &["bench", "gemm", "--blocks", &format!("4x4,{shape}")],
            shape,
        );
        let args = [
            "project",
            "--input",
            "in.safetensors",
            "--output",
            "out.safetensors",
            "--prune",
            "0.5",
            "--unify",
            "0",
            "--block",
            shape,
        ];
        refused_by_the_block_limit(&args, shape);
    }
}

#[test]
fn demo_agrees_with_the_reference_on_lenet5() {
    if common::gpu().is_none() {
        return;
    }
    for block in ["4x4", "32x32", "31x32", "7x13"] {
        let out = run(&["demo", "--net", "lenet5", "--block", block]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{block}: {stdout}\n{}", stderr(&out));
        assert!(
            stdout.contains("agrees with the CPU reference"),
            "{block}: {stdout}"
        );
        assert!(!stdout.contains("WRONG"), "{block}: {stdout}");
    }
}

fn scratch(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "microunify-cli-kernels-{}-{test}",
        std::process::id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `project --block 4x4 --prune 0.25 --unify 0` of an 8×8 weight whose four 4×4 blocks hold
/// 3c, c, 3c, 3c: block 1 has the smallest Σv² and must be the one pruned, also where the
/// squares overflow f32 (3e19, 1e38) or the weights are subnormal (1e-40).
#[test]
fn project_prunes_the_smallest_block_at_any_magnitude() {
    if common::gpu().is_none() {
        return;
    }
    let d = scratch("magnitudes");
    for (c, three) in [(1e19f32, 3e19f32), (1e38, 3e38), (1e-40, 3e-40)] {
        let consts = [three, c, three, three];
        let w: Vec<f32> = (0..64)
            .map(|i| consts[(i / 32) * 2 + (i % 8) / 4])
            .collect();
        let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
        let view = TensorView::new(Dtype::F32, vec![8, 8], &bytes).unwrap();
        let (input, output) = (d.join("in.safetensors"), d.join("out.safetensors"));
        std::fs::write(
            &input,
            safetensors::serialize([("w.weight", view)], None).unwrap(),
        )
        .unwrap();
        let out = run(&[
            "project",
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--block",
            "4x4",
            "--prune",
            "0.25",
            "--unify",
            "0",
        ]);
        assert!(out.status.success(), "c = {c:e}: {}", stderr(&out));
        let f = CompressedFile::read(&output).unwrap();
        let m = &f.layer("w.weight").expect("w.weight compressed").matrix;
        use BlockState::{Dense, Pruned};
        assert_eq!(m.states(), [Dense, Pruned, Dense, Dense], "c = {c:e}");
        let dense = m.to_dense();
        let kept: Vec<f32> = (0..64)
            .map(|i| {
                if (i / 32) * 2 + (i % 8) / 4 == 1 {
                    0.0
                } else {
                    w[i]
                }
            })
            .collect();
        assert_eq!(dense, kept, "c = {c:e}: the kept blocks pass unchanged");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bench_gemm_checks_every_case_against_the_reference() {
    if common::gpu().is_none() {
        return;
    }
    let out = run(&[
        "bench",
        "gemm",
        "--quick",
        "--sizes",
        "72",
        "--n",
        "1,9",
        "--blocks",
        "4x4,3x5",
        "--ratios",
        "0.5:0.4,0:0",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", stderr(&out));
    assert!(
        stdout.contains("8 cases checked against the CPU reference"),
        "{stdout}"
    );
}

/// `bench gemm` with the autotuner on: the winners go to `$XDG_CACHE_HOME`'s cache file
/// (named in the output), and a corrupt cache file costs one warning and is rewritten.
#[test]
fn bench_gemm_autotunes_into_the_cache_folder() {
    if common::gpu().is_none() {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let file = cache.path().join("microunify").join("autotune.json");
    let bench = |mode: &str| {
        std::process::Command::new(EXE)
            .args(["bench", "gemm", "--quick", "--sizes", "40", "--n", "3"])
            .args(["--blocks", "4x4", "--ratios", "0.5:0.4"])
            .env("MICROUNIFY_AUTOTUNE", mode)
            .env("XDG_CACHE_HOME", cache.path())
            .output()
            .unwrap()
    };
    let out = bench("on");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", stderr(&out));
    let text = std::fs::read_to_string(&file).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let winners = json["winners"].as_object().unwrap();
    // The dense and the 4x4 micro family, of the one shape class.
    assert_eq!(winners.len(), 2, "{text}");
    assert!(winners.keys().any(|k| k.contains("| dense |")), "{text}");
    assert!(
        winners.keys().any(|k| k.contains("| micro-4x4 |")),
        "{text}"
    );
    for name in winners.values() {
        assert!(stdout.contains(name.as_str().unwrap()), "{stdout}");
    }
    std::fs::write(&file, "{ corrupt").unwrap();
    let out = bench("on");
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        err.matches("ignoring the GEMM autotune cache").count(),
        1,
        "{err}"
    );
    let rewritten: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(rewritten["winners"].as_object().unwrap().len(), 2);
    let out = bench("sometimes");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("MICROUNIFY_AUTOTUNE"),
        "{}",
        stderr(&out)
    );
}

/// The limit holds only if every block shape is made by `BlockShape::new` (or its parsers):
/// no code outside tests may build the struct literally.
#[test]
fn no_block_shape_is_built_around_the_limit() {
    let literal = regex::Regex::new(r"\bBlockShape\s*\{\s*rows\s*:").unwrap();
    let mut stack = vec![PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                assert!(
                    !literal.is_match(code),
                    "{}: builds a BlockShape literally, bypassing BlockShape::new and its limit",
                    path.display()
                );
                seen += 1;
            }
        }
    }
    assert!(seen > 20, "{seen} source files");
}

fn f32_view(shape: &[usize], values: &[f32]) -> (Vec<usize>, Vec<u8>) {
    assert_eq!(shape.iter().product::<usize>(), values.len());
    let bytes = values.iter().flat_map(|x| x.to_le_bytes()).collect();
    (shape.to_vec(), bytes)
}

/// `bench file` on a projected file of a linear layer, a conv layer (ragged edge tiles)
/// and a bias: one case per compressed layer and batch size, both kernels checked against
/// the reference, totals the sums of the layers; a layer taller than the adapter's
/// workgroup grid allows at N = 9 is reported as skipped, not a failure.
#[test]
fn bench_file_measures_every_compressed_layer() {
    let Some(gpu) = common::gpu() else {
        return;
    };
    let max_dim = gpu.limits().max_compute_workgroups_per_dimension as usize;
    drop(gpu);
    // 8 rows per workgroup of the tiled kernels: one more workgroup row than the grid has.
    let tall_rows = (max_dim <= 1 << 16).then_some(8 * (max_dim + 1));
    let d = scratch("bench-file");
    let mut rng = common::rng(7);
    let mut tensors = vec![
        (
            "fc.weight",
            f32_view(&[40, 24], &common::weights(&mut rng, 960)),
        ),
        ("fc.bias", f32_view(&[40], &common::weights(&mut rng, 40))),
        (
            "conv.weight",
            f32_view(&[6, 3, 3, 3], &common::weights(&mut rng, 162)),
        ),
    ];
    if let Some(rows) = tall_rows {
        tensors.push((
            "tall.weight",
            f32_view(&[rows, 4], &common::weights(&mut rng, rows * 4)),
        ));
    }
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|(n, (s, b))| (*n, TensorView::new(Dtype::F32, s.clone(), b).unwrap()))
        .collect();
    let (input, file, json) = (
        d.join("in.safetensors"),
        d.join("mu.safetensors"),
        d.join("out/bench.json"),
    );
    std::fs::write(&input, safetensors::serialize(views, None).unwrap()).unwrap();
    let out = run(&[
        "project",
        "--input",
        input.to_str().unwrap(),
        "--output",
        file.to_str().unwrap(),
        "--block",
        "4x4",
        "--prune",
        "0.5",
        "--unify",
        "0.25",
    ]);
    assert!(out.status.success(), "project: {}", stderr(&out));
    let out = run(&[
        "bench",
        "file",
        file.to_str().unwrap(),
        "--n",
        "1,9",
        "--runs",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(report["adapter"]["name"].is_string(), "{report}");
    let cases = report["cases"].as_array().unwrap();
    let skipped = report["skipped"].as_array().unwrap();
    let num = |v: &serde_json::Value, f: &str| {
        v[f].as_f64()
            .unwrap_or_else(|| panic!("{f} missing or not a number in {v}"))
    };
    let views = [("fc.weight", 40.0, 24.0), ("conv.weight", 6.0, 27.0)];
    for (layer, m, k) in views {
        for n in [1.0, 9.0] {
            let c = cases
                .iter()
                .find(|c| c["layer"] == layer && num(c, "n") == n)
                .unwrap_or_else(|| panic!("no case for {layer} at N = {n}: {report}"));
            assert_eq!((num(c, "m"), num(c, "k")), (m, k), "{c}");
            assert_eq!(num(c, "checked_rows"), m, "every row of a small layer: {c}");
            for f in ["dense_ms", "micro_ms", "gflops_dense", "gflops_micro"] {
                assert!(num(c, f) > 0.0 && num(c, f).is_finite(), "{f}: {c}");
            }
            let ratio = num(c, "dense_ms") / num(c, "micro_ms");
            assert!((num(c, "speedup") - ratio).abs() < 1e-9 * ratio, "{c}");
            let flops = 2.0 * m * k * n;
            let gflops = flops / (num(c, "dense_ms") * 1e6);
            assert!(
                (num(c, "gflops_dense") - gflops).abs() < 1e-9 * gflops,
                "{c}"
            );
            assert!(num(c, "bytes_micro") < num(c, "bytes_dense"), "{c}");
            assert!(
                num(c, "bytes_micro") > 4.0 * (k * n + m * n),
                "X and Y: {c}"
            );
            for f in ["dense_err", "micro_err"] {
                assert!(num(c, f) < microunify::cpu::gemm::GEMM_REL, "{f}: {c}");
            }
            let counts = c["counts"].as_array().unwrap();
            assert!(counts[2].as_u64().unwrap() > 0, "blocks pruned: {c}");
        }
    }
    assert!(
        cases.iter().all(|c| c["layer"] != "fc.bias"),
        "a bias is no compressed layer: {report}"
    );
    if tall_rows.is_some() {
        let s = skipped
            .iter()
            .find(|s| s["layer"] == "tall.weight" && num(s, "n") == 9.0)
            .unwrap_or_else(|| panic!("tall.weight at N = 9 not skipped: {report}"));
        assert!(s["reason"].as_str().unwrap().contains("workgroups"), "{s}");
        assert!(stdout.contains("skipped"), "{stdout}");
    } else {
        assert!(skipped.is_empty(), "{report}");
    }
    for t in report["totals"].as_array().unwrap() {
        let of_n: Vec<_> = cases.iter().filter(|c| c["n"] == t["n"]).collect();
        assert_eq!(num(t, "layers"), of_n.len() as f64, "{t}");
        // Process CPU times are known on unix; elsewhere they may be null.
        let cpu_known = cfg!(unix);
        let fields: &[&str] = if cpu_known {
            &["dense_ms", "micro_ms", "dense_cpu_ms", "micro_cpu_ms"]
        } else {
            &["dense_ms", "micro_ms"]
        };
        for &f in fields {
            let sum: f64 = of_n.iter().map(|c| num(c, f)).sum();
            assert!((num(t, f) - sum).abs() < 1e-9 * sum, "{f}: {t}");
        }
    }
    assert_eq!(report["totals"].as_array().unwrap().len(), 2, "{report}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bench_file_refuses_a_file_without_compressed_layers() {
    let d = scratch("bench-file-plain");
    let path = d.join("plain.safetensors");
    let (shape, bytes) = f32_view(&[4, 4], &[0.5; 16]);
    let view = TensorView::new(Dtype::F32, shape, &bytes).unwrap();
    std::fs::write(&path, safetensors::serialize([("w", view)], None).unwrap()).unwrap();
    let p = path.to_str().unwrap();
    if common::gpu().is_some() {
        common::fails_with(EXE, &["bench", "file", p], p);
        common::fails_with(EXE, &["bench", "file", p, "--n", "0"], "at least 1");
    }
    std::fs::remove_dir_all(&d).unwrap();
}
