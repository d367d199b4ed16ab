//! The `microunify` binary refuses bad input with a clear message and a non-zero exit,
//! never a panic.

use std::process::Output;

const EXE: &str = env!("CARGO_BIN_EXE_microunify");

fn run(args: &[&str]) -> Output {
    common::run_bin(EXE, args)
}

fn fails_with(args: &[&str], needle: &str) {
    common::fails_with(EXE, args, needle)
}

#[test]
fn ratios_out_of_range_are_refused() {
    fails_with(
        &["bench", "projection", "--prune", "1.5"],
        "prune must lie in [0, 1]",
    );
    fails_with(
        &["bench", "projection", "--unify", "-0.1"],
        "unify must lie in [0, 1]",
    );
    fails_with(
        &["bench", "projection", "--prune", "0.7", "--unify", "0.4"],
        "must not exceed 1",
    );
}

#[test]
fn zero_block_shape_is_refused() {
    fails_with(&["demo", "--block", "0x4"], "invalid block shape");
    fails_with(&["demo", "--block", "4"], "invalid block shape");
}

#[test]
fn unknown_adapter_or_network_is_named() {
    fails_with(
        &["--adapter", "no-such-gpu-anywhere", "demo"],
        "no-such-gpu-anywhere",
    );
    fails_with(&["--backend", "vulkan", "demo", "--net", "vgg99"], "vgg99");
}

/// Guard of the tests that run the binary's GPU path: the library's own adapter choice, with
/// the loud-skip / `MICROUNIFY_REQUIRE_GPU=1` semantics of the shader tests.
#[path = "../kernels-tests/common/mod.rs"]
mod common;

mod compress {
    use super::{common, run};
    use microunify::block::{ConvLayout, LayerSpec, to_gemm};
    use microunify::compressed::CompressedMatrix;
    use microunify::cpu::projection as cpu;
    use microunify::format::{CompressedFile, CompressedLayer};
    use safetensors::Dtype;
    use safetensors::tensor::TensorView;
    use std::path::{Path, PathBuf};

    fn scratch(test: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("microunify-cli-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn f32_bytes(n: usize, seed: u64) -> Vec<u8> {
        common::weights(&mut common::rng(seed), n)
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect()
    }

    /// A small checkpoint: a linear and an F16 conv weight to compress, and tensors that
    /// must pass through (a bias, a BF16 embedding excluded by the tests, a 3-D tensor, I64).
    fn checkpoint(path: &Path) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
        let f16: Vec<u8> = common::weights(&mut common::rng(3), 8 * 27)
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect();
        let t = vec![
            (
                "fc1.weight".to_string(),
                Dtype::F32,
                vec![20, 30],
                f32_bytes(600, 1),
            ),
            ("fc1.bias".into(), Dtype::F32, vec![20], f32_bytes(20, 2)),
            ("conv.weight".into(), Dtype::F16, vec![8, 3, 3, 3], f16),
            (
                "emb.weight".into(),
                Dtype::BF16,
                vec![10, 12],
                (0..240).map(|i| i as u8).collect(),
            ),
            ("ln".into(), Dtype::F32, vec![2, 3, 4], f32_bytes(24, 4)),
            (
                "steps".into(),
                Dtype::I64,
                vec![1],
                vec![7, 0, 0, 0, 0, 0, 0, 0],
            ),
        ];
        let views: Vec<(String, TensorView<'_>)> = t
            .iter()
            .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
        t
    }

    /// `out` is a refusal: status 1, no panic, `needle` in stderr.
    fn refused(args: &[&str], out: &std::process::Output, needle: &str) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: expected {needle:?} in: {stderr}"
        );
    }

    fn fails_1(args: &[&str], needle: &str) {
        refused(args, &run(args), needle);
    }

    #[test]
    fn bad_project_input_is_refused_before_any_gpu() {
        let d = scratch("refuse");
        let input = d.join("in.safetensors");
        checkpoint(&input);
        let (i, o) = (input.to_str().unwrap(), d.join("out.safetensors"));
        let o = o.to_str().unwrap();
        let base = |extra: &[&'static str]| {
            let mut a = vec![
                "project", "--input", i, "--output", o, "--prune", "0.5", "--unify", "0.3",
            ];
            a.extend_from_slice(extra);
            a
        };
        let missing = d.join("absent.safetensors");
        let mut a = base(&[]);
        a[2] = missing.to_str().unwrap();
        fails_1(&a, "absent.safetensors");
        let garbage = d.join("garbage.safetensors");
        std::fs::write(&garbage, b"\xff\xff\xff\xff not a file").unwrap();
        a[2] = garbage.to_str().unwrap();
        fails_1(&a, "not a valid safetensors file");
        let not_json = d.join("not-json.safetensors");
        std::fs::write(&not_json, b"\x08\0\0\0\0\0\0\0not json").unwrap();
        a[2] = not_json.to_str().unwrap();
        fails_1(&a, "the header is not valid JSON");
        fails_1(
            &base(&["--include", "fc("]),
            "--include \"fc(\" is not a valid regex",
        );
        fails_1(
            &base(&["--exclude", "["]),
            "--exclude \"[\" is not a valid regex",
        );
        // The block limit is part of the block model: clap refuses it as a bad value.
        let out = run(&base(&["--block", "64x64"]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("at most 32 per side"), "{stderr}");
        fails_1(&base(&["--include", "^nothing$"]), "no tensor selected");
        let mut a = base(&[]);
        a[6] = "1.5";
        fails_1(&a, "prune must lie in [0, 1]");
        a[6] = "0.8";
        fails_1(&a, "must not exceed 1");
        fails_1(
            &base(&["--adapter", "no-such-gpu-anywhere"]),
            "no-such-gpu-anywhere",
        );
        assert!(!Path::new(o).exists(), "an output was written");
        fails_1(&["inspect", i], "not a microunify compressed file");
        fails_1(
            &["inspect", garbage.to_str().unwrap()],
            "is not a valid compressed file",
        );
        fails_1(
            &["inspect", missing.to_str().unwrap()],
            "absent.safetensors",
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Runs the binary; a run still going after `secs` (a read that blocks, or one that
    /// never ends) is killed and fails the test.
    fn run_bounded(args: &[&str], secs: u64) -> std::process::Output {
        use std::process::{Command, Stdio};
        use std::time::{Duration, Instant};
        let mut child = Command::new(super::EXE)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(secs);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{args:?} still running after {secs} s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    }

    fn fails_quickly(args: &[&str], needle: &str) {
        refused(args, &run_bounded(args, 30), needle);
    }

    #[test]
    fn only_regular_files_are_read_and_headers_are_bounded() {
        let d = scratch("irregular");
        let out = d.join("out.safetensors");
        let o = out.to_str().unwrap();
        let huge = d.join("huge.safetensors");
        let mut bytes = (1u64 << 60).to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}      ");
        std::fs::write(&huge, bytes).unwrap();
        let mut cases = vec![
            (d.clone(), "is a folder"),
            (huge, "more than safetensors' limit of 100000000"),
        ];
        #[cfg(unix)]
        {
            let fifo = d.join("fifo");
            let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            cases.push((fifo, "not a regular file"));
            cases.push((PathBuf::from("/dev/zero"), "not a regular file"));
        }
        for (path, needle) in &cases {
            let p = path.to_str().unwrap();
            fails_quickly(&["inspect", p], needle);
            let project = [
                "project",
                "--input",
                p,
                "--output",
                o,
                "--prune",
                "0.5",
                "--unify",
                "0",
                "--adapter",
                "no-such-gpu-anywhere",
            ];
            fails_quickly(&project, needle);
        }
        assert!(!out.exists(), "an output was written");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_output_is_checked_before_the_input_and_any_gpu() {
        let d = scratch("output");
        let input = d.join("in.safetensors");
        checkpoint(&input);
        let i = input.to_str().unwrap();
        let project = |o: &Path, needle: &str| {
            let args = [
                "project",
                "--input",
                i,
                "--output",
                o.to_str().unwrap(),
                "--prune",
                "0.5",
                "--unify",
                "0.3",
                "--adapter",
                "no-such-gpu-anywhere",
            ];
            // The output's error, not the adapter's: it came first.
            fails_1(&args, needle);
            fails_1(&args, "--output cannot be written");
        };
        project(&d.join("no/such/folder/out.safetensors"), "does not exist");
        let taken = d.join("taken");
        std::fs::create_dir(&taken).unwrap();
        project(&taken, "is a folder");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if unsafe { libc::geteuid() } == 0 {
                eprintln!(
                    "*** skipping the read-only folder case: running as root, where folder permissions do not bind ***"
                );
            } else {
                let ro = d.join("ro");
                std::fs::create_dir(&ro).unwrap();
                std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
                project(&ro.join("out.safetensors"), "ermission denied");
                std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_non_finite_weight_is_named_by_kind_before_any_gpu() {
        let d = scratch("inf");
        let (input, out) = (d.join("in.safetensors"), d.join("out.safetensors"));
        for (v, word) in [
            (f32::INFINITY, "+inf"),
            (f32::NEG_INFINITY, "-inf"),
            (f32::NAN, "NaN"),
        ] {
            let mut w = [0.5f32; 32];
            w[5] = v;
            let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
            let view = TensorView::new(Dtype::F32, vec![4, 8], &bytes).unwrap();
            std::fs::write(&input, safetensors::serialize([("w", view)], None).unwrap()).unwrap();
            fails_1(
                &[
                    "project",
                    "--input",
                    input.to_str().unwrap(),
                    "--output",
                    out.to_str().unwrap(),
                    "--prune",
                    "0.5",
                    "--unify",
                    "0",
                    "--adapter",
                    "no-such-gpu-anywhere",
                ],
                &format!("tensor \"w\": non-finite value {word} at flat index 5"),
            );
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_compressed_file_can_be_projected_again() {
        if common::gpu().is_none() {
            return;
        }
        let d = scratch("again");
        let input = d.join("in.safetensors");
        checkpoint(&input);
        let project = |from: &Path, to: &Path, extra: &[&str]| {
            let mut a = vec![
                "project",
                "--input",
                from.to_str().unwrap(),
                "--output",
                to.to_str().unwrap(),
            ];
            a.extend_from_slice(extra);
            let out = run(&a);
            assert!(
                out.status.success(),
                "{a:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            CompressedFile::read(to).unwrap()
        };
        // First fc1 alone; the F16 conv weight passes through.
        let once_path = d.join("once.safetensors");
        let once = project(
            &input,
            &once_path,
            &[
                "--prune",
                "0.5",
                "--unify",
                "0.3",
                "--exclude",
                "^emb|^conv",
            ],
        );
        assert_eq!(once.layers.len(), 1);
        assert!(once.passthrough.contains_key("conv.weight"));
        // Again, with another block shape and ratios: fc1 from its dense reconstruction,
        // its old compact tensors replaced, and the conv weight selected now.
        let twice_path = d.join("twice.safetensors");
        let twice = project(
            &once_path,
            &twice_path,
            &[
                "--block",
                "2x8",
                "--prune",
                "0.2",
                "--unify",
                "0.5",
                "--exclude",
                "^emb",
            ],
        );
        let names: Vec<&str> = twice.layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["fc1.weight", "conv.weight"]);
        assert!(
            twice
                .layers
                .iter()
                .all(|l| l.matrix.block().to_string() == "2x8")
        );
        // fc1: 20x30 in 2x8 blocks is 10 x 4 = 40 blocks -> 8 pruned, 20 unified.
        assert_eq!(twice.layers[0].matrix.counts(), [12, 20, 8]);
        let mut passed = once.passthrough.clone();
        passed.remove("conv.weight");
        assert_eq!(twice.passthrough, passed);
        check_inspect(&twice_path, &twice);
        // Only fc1: the conv keeps its compressed form, bit for bit.
        let part_path = d.join("part.safetensors");
        let part = project(
            &twice_path,
            &part_path,
            &[
                "--include",
                "^fc1",
                "--block",
                "8x8",
                "--prune",
                "0.6",
                "--unify",
                "0.2",
            ],
        );
        assert_eq!(part.layer("conv.weight"), twice.layer("conv.weight"));
        assert_eq!(
            part.layer("fc1.weight").unwrap().matrix.block().to_string(),
            "8x8"
        );
        assert_eq!(part.passthrough, twice.passthrough);
        check_inspect(&part_path, &part);
        // Projected again with nothing pruned or unified, a layer is its stored
        // reconstruction: that is what is projected.
        let same = project(
            &twice_path,
            &d.join("same.safetensors"),
            &["--include", "^fc1", "--prune", "0", "--unify", "0"],
        );
        assert_eq!(
            same.layer("fc1.weight").unwrap().dense(),
            twice.layer("fc1.weight").unwrap().dense()
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Checks `inspect`'s table against the library's own numbers for the same file.
    fn check_inspect(path: &Path, f: &CompressedFile) {
        let out = run(&["inspect", path.to_str().unwrap()]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (mut bits, mut weights) = (0u64, 0u64);
        for l in &f.layers {
            let m = &l.matrix;
            let line = stdout
                .lines()
                .find(|s| s.split_whitespace().next() == Some(l.name.as_str()))
                .unwrap_or_else(|| panic!("no line for {} in:\n{stdout}", l.name));
            let tok: Vec<&str> = line.split_whitespace().collect();
            let c = m.counts();
            let want = [
                c[0].to_string(),
                c[1].to_string(),
                c[2].to_string(),
                m.bits().to_string(),
                format!("{:.2}x", m.compression_ratio()),
            ];
            assert_eq!(tok[5..10], want, "{line}");
            assert_eq!(tok[3], m.block().to_string(), "{line}");
            bits += m.bits();
            weights += m.view().len() as u64;
        }
        let total = stdout
            .lines()
            .find(|s| s.starts_with("total"))
            .expect("a total line");
        assert!(total.contains(&format!("bits {bits} ")), "{total}");
        assert!(total.contains(&format!("{weights} weights")), "{total}");
        // The file's size on disk against the dense checkpoint it stands for.
        let size = std::fs::metadata(path).unwrap().len();
        // Every tensor at its own dtype: the layers' weights and the pass-through bytes.
        let layers: usize = (f.layers.iter())
            .map(|l| l.shape.iter().product::<usize>() * l.dtype.bitsize() / 8)
            .sum();
        let rest: usize = f.passthrough.values().map(|t| t.data.len()).sum();
        let dense = layers + rest;
        let line = stdout
            .lines()
            .find(|s| s.starts_with("size "))
            .expect("a size line");
        let want = format!(
            "size {size} bytes on disk, dense {dense} bytes (tensors at their original dtypes), {:.2}x smaller",
            dense as f64 / size as f64
        );
        assert_eq!(line, want);
    }

    #[test]
    fn inspect_reports_what_the_library_reads() {
        let d = scratch("inspect");
        let mut f = CompressedFile::default();
        for (name, shape, block, layout) in [
            ("fc", vec![13, 22], "4x4", ConvLayout::ChannelMajor),
            ("conv", vec![6, 3, 3, 3], "2x8", ConvLayout::PositionMajor),
        ] {
            let spec = LayerSpec::new(name, &shape, block.parse().unwrap()).unwrap();
            let w = common::weights(&mut common::rng(9), spec.view.len());
            let g = to_gemm(&w, &shape, layout);
            let mode = cpu::per_layer(std::slice::from_ref(&spec), 0.4, 0.3).unwrap();
            let p = cpu::project(std::slice::from_ref(&spec), &[&g], &mode)
                .unwrap()
                .remove(0);
            let m = CompressedMatrix::from_dense(spec.view, spec.block, &p.z, &p.states).unwrap();
            f.layers
                .push(CompressedLayer::new(name, &shape, layout, m).unwrap());
        }
        let path = d.join("c.safetensors");
        f.write(&path).unwrap();
        check_inspect(&path, &f);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A compressed file of an F16 conv and a BF16 linear layer, a pass-through bias and
    /// metadata of its own; returns it with the names, dtypes and shapes it stands for.
    fn half_precision_file(path: &Path) -> (CompressedFile, Vec<(String, Dtype, Vec<usize>)>) {
        let mut f = CompressedFile::default();
        let layers = [
            ("conv.weight", vec![6, 3, 3, 3], Dtype::F16),
            ("fc.weight", vec![10, 27], Dtype::BF16),
        ];
        for (name, shape, dtype) in &layers {
            let spec = LayerSpec::new(*name, shape, "4x4".parse().unwrap()).unwrap();
            let w = common::weights(&mut common::rng(5), spec.view.len());
            let mode = cpu::per_layer(std::slice::from_ref(&spec), 0.3, 0.3).unwrap();
            let p = cpu::project(std::slice::from_ref(&spec), &[&w], &mode)
                .unwrap()
                .remove(0);
            let m = CompressedMatrix::from_dense(spec.view, spec.block, &p.z, &p.states).unwrap();
            let l = CompressedLayer::new(*name, shape, ConvLayout::ChannelMajor, m).unwrap();
            f.layers.push(l.with_dtype(*dtype).unwrap());
        }
        f.passthrough.insert(
            "fc.bias".into(),
            microunify::format::RawTensor {
                dtype: Dtype::F32,
                shape: vec![10],
                data: f32_bytes(10, 6),
            },
        );
        f.metadata.insert("format".into(), "pt".into());
        f.write(path).unwrap();
        let mut want: Vec<(String, Dtype, Vec<usize>)> = layers
            .into_iter()
            .map(|(n, s, d)| (n.to_string(), d, s))
            .collect();
        want.push(("fc.bias".into(), Dtype::F32, vec![10]));
        (f, want)
    }

    #[test]
    fn decompress_writes_the_dense_checkpoint_and_never_over_its_input() {
        let d = scratch("decompress");
        let input = d.join("c.safetensors");
        let (f, want) = half_precision_file(&input);
        check_inspect(&input, &f);
        let (i, o) = (input.to_str().unwrap(), d.join("dense.safetensors"));
        let out = run(&["decompress", i, "--output", o.to_str().unwrap()]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("decompressed 2 layers"), "{stdout}");
        let bytes = std::fs::read(&o).unwrap();
        assert_eq!(bytes, f.to_dense_bytes().unwrap());
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut have: Vec<(String, Dtype, Vec<usize>)> = st
            .tensors()
            .into_iter()
            .map(|(n, t)| (n, t.dtype(), t.shape().to_vec()))
            .collect();
        have.sort_by(|a, b| a.0.cmp(&b.0));
        let mut want = want;
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(have, want);
        let conv = st.tensor("conv.weight").unwrap();
        let l = f.layer("conv.weight").unwrap();
        let halves: Vec<u8> = l
            .dense()
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        assert_eq!(conv.data(), &halves[..]);

        // Never over its own input, by the same path or another way to the same file.
        let before = std::fs::read(&input).unwrap();
        fails_1(
            &["decompress", i, "--output", i],
            "is the input file itself",
        );
        #[cfg(unix)]
        {
            let link = d.join("link.safetensors");
            std::os::unix::fs::symlink(&input, &link).unwrap();
            fails_1(
                &["decompress", i, "--output", link.to_str().unwrap()],
                "is the input file itself",
            );
        }
        assert_eq!(std::fs::read(&input).unwrap(), before);
        // A file that is no compressed file is named as such, and nothing is written.
        let plain = d.join("plain.safetensors");
        std::fs::write(&plain, &bytes).unwrap();
        let none = d.join("none.safetensors");
        let (p, n) = (plain.to_str().unwrap(), none.to_str().unwrap());
        fails_1(
            &["decompress", p, "--output", n],
            "is not a valid compressed file",
        );
        fails_1(
            &[
                "decompress",
                i,
                "--output",
                d.join("no/such/dir/x").to_str().unwrap(),
            ],
            "--output cannot be written",
        );
        assert!(!none.exists());
        let names: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn project_then_inspect() {
        if common::gpu().is_none() {
            return;
        }
        let d = scratch("project");
        let (input, output) = (d.join("in.safetensors"), d.join("out.safetensors"));
        let tensors = checkpoint(&input);
        let (i, o) = (input.to_str().unwrap(), output.to_str().unwrap());
        let out = run(&[
            "project",
            "--input",
            i,
            "--output",
            o,
            "--block",
            "4x4",
            "--prune",
            "0.5",
            "--unify",
            "0.3",
            "--exclude",
            "^emb",
            "--layout",
            "position-major",
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let f = CompressedFile::read(&output).unwrap();
        let names: Vec<&str> = f.layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["fc1.weight", "conv.weight"]);
        // fc1: 5 x 8 = 40 blocks -> 20 pruned, 12 unified; conv: 2 x 7 = 14 -> 7, 5.
        assert_eq!(f.layers[0].matrix.counts(), [8, 12, 20]);
        assert_eq!(f.layers[1].matrix.counts(), [2, 5, 7]);
        assert_eq!(f.layers[1].layout, ConvLayout::PositionMajor);
        for (name, dtype, shape, bytes) in &tensors {
            if let Some(t) = f.passthrough.get(name) {
                assert_eq!(
                    (t.dtype, &t.shape, &t.data),
                    (*dtype, shape, bytes),
                    "{name}"
                );
            }
        }
        assert_eq!(f.passthrough.len(), 4);
        assert_eq!(
            f.layers[0].layout,
            ConvLayout::ChannelMajor,
            "2-D: no layout"
        );
        check_inspect(&output, &f);

        // With nothing pruned or unified the dense tensors are the input itself, in PyTorch
        // order although the conv was projected in its position-major view.
        let out = run(&[
            "project",
            "--input",
            i,
            "--output",
            o,
            "--prune",
            "0",
            "--unify",
            "0",
            "--layout",
            "position-major",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let f = CompressedFile::read(&output).unwrap();
        assert_eq!(f.layers.len(), 3, "fc1, conv and emb");
        for l in &f.layers {
            let (_, dtype, _, _) = tensors.iter().find(|t| t.0 == l.name).unwrap();
            assert_eq!(l.dtype, *dtype, "{}: the dtype it came in", l.name);
        }
        // Nothing pruned or unified, decompression gives back the checkpoint itself:
        // every tensor's name, shape, dtype and bytes.
        let dense = d.join("dense.safetensors");
        let out = run(&["decompress", o, "--output", dense.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bytes = std::fs::read(&dense).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.len(), tensors.len());
        for (name, dtype, shape, data) in &tensors {
            let t = st.tensor(name).unwrap();
            assert_eq!(
                (t.dtype(), t.shape(), t.data()),
                (*dtype, &shape[..], &data[..]),
                "{name}"
            );
        }
        // A NaN in a weight is named by layer and index, and nothing is written.
        let poisoned = d.join("nan.safetensors");
        let mut nan = tensors[0].3.clone();
        nan[4 * 37..4 * 38].copy_from_slice(&f32::NAN.to_le_bytes());
        let view = TensorView::new(Dtype::F32, vec![20, 30], &nan).unwrap();
        std::fs::write(
            &poisoned,
            safetensors::serialize([("fc1.weight", view)], None).unwrap(),
        )
        .unwrap();
        let none = d.join("none.safetensors");
        let (p, n) = (poisoned.to_str().unwrap(), none.to_str().unwrap());
        let a = [
            "project", "--input", p, "--output", n, "--prune", "0.5", "--unify", "0",
        ];
        fails_1(
            &a,
            "tensor \"fc1.weight\": non-finite value NaN at flat index 37",
        );
        assert!(!none.exists());
        for l in &f.layers {
            let (_, dtype, _, bytes) = tensors.iter().find(|t| t.0 == l.name).unwrap();
            let input: Vec<f32> = match dtype {
                Dtype::F32 => bytes
                    .chunks(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                Dtype::F16 => bytes
                    .chunks(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                _ => bytes
                    .chunks(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            };
            assert_eq!(l.dense(), input, "{}", l.name);
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
