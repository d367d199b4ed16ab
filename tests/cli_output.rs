//! What the `microunify` binary prints around its work: nothing but its own output on
//! success (no driver noise), one `error: ` chain on failure (no backtrace, no cause printed
//! twice), and a quiet end when its reader closes the pipe.

use std::process::{Command, Output, Stdio};

const EXE: &str = env!("CARGO_BIN_EXE_microunify");

/// The binary with a bare environment for the variables these tests are about: the
/// program itself must cope, not a wrapper script.
fn command(args: &[&str]) -> Command {
    let mut c = Command::new(EXE);
    c.args(args)
        .env_remove("NODEVICE_SELECT")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("MICROUNIFY_ADAPTER")
        .env_remove("MICROUNIFY_BACKEND");
    c
}

fn output(args: &[&str]) -> Output {
    command(args).output().expect("running microunify")
}

/// A small valid compressed file, written by the library.
fn compressed_file(dir: &std::path::Path) -> std::path::PathBuf {
    use microunify::block::{ConvLayout, LayerSpec};
    use microunify::compressed::CompressedMatrix;
    use microunify::format::{CompressedFile, CompressedLayer};
    let spec = LayerSpec::new("fc.weight", &[6, 8], "2x4".parse().unwrap()).unwrap();
    let w: Vec<f32> = (0..48).map(|i| (i as f32 - 20.0) / 7.0).collect();
    let p = microunify::cpu::projection::project(
        std::slice::from_ref(&spec),
        &[&w],
        &microunify::SelectionMode::PerLayer(vec![
            microunify::Ratios::new(0.3, 0.3, "fc").unwrap(),
        ]),
    )
    .unwrap();
    let m = CompressedMatrix::from_dense(spec.view, spec.block, &p[0].z, &p[0].states).unwrap();
    let file = CompressedFile {
        layers: vec![
            CompressedLayer::new("fc.weight", &[6, 8], ConvLayout::ChannelMajor, m).unwrap(),
        ],
        ..Default::default()
    };
    let path = dir.join("small.safetensors");
    file.write(&path).unwrap();
    path
}

/// Runs the binary with stdout a pipe whose reading end is already closed, so that its
/// first write fails with a broken pipe, whatever the timing.
fn with_closed_stdout(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    command(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("running microunify")
}

#[test]
fn a_closed_pipe_ends_the_program_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let file = compressed_file(dir.path());
    for args in [vec!["inspect", file.to_str().unwrap()], vec!["adapters"]] {
        let out = with_closed_stdout(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("failed printing"), "{args:?}: {stderr}");
        assert!(!stderr.contains("error"), "{args:?}: {stderr}");
        // `adapters` finds no adapter on a machine without any: that is its own error,
        // not a pipe problem, and is allowed to fail loudly.
        if args[0] == "inspect" || common::gpu().is_some() {
            assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        }
    }
}

#[test]
fn success_prints_no_driver_noise() {
    if common::gpu().is_none() {
        return;
    }
    let out = output(&["adapters"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("XDG_RUNTIME_DIR"), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
}

#[test]
fn user_errors_print_one_chain_without_backtrace_or_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.safetensors");
    let cases: [(Vec<&str>, &str); 3] = [
        (
            vec!["inspect", missing.to_str().unwrap()],
            "absent.safetensors",
        ),
        (vec!["inspect", dir.path().to_str().unwrap()], "is a folder"),
        (vec!["inspect", "/dev/zero"], "not a regular file"),
    ];
    for (args, needle) in cases {
        let out = command(&args)
            .env("RUST_BACKTRACE", "1")
            .output()
            .expect("running microunify");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("backtrace"), "{args:?}: {stderr}");
        // An OS error's text appears once, however many layers wrap it.
        if let Some(at) = stderr.find("(os error") {
            assert!(
                !stderr[at + 1..].contains("(os error"),
                "{args:?}: {stderr}"
            );
        }
    }
}

#[test]
fn adapter_filters_are_applied_and_explained() {
    let out = output(&["adapters", "--adapter", "no-such-gpu-anywhere"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no adapter name contains \"no-such-gpu-anywhere\"")
            || stderr.contains("no adapter at all"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "listed adapters despite the filter");

    // A backend this operating system cannot have is named as such, not blamed on a
    // missing driver.
    let foreign = if cfg!(target_os = "macos") {
        "dx12"
    } else {
        "metal"
    };
    let out = output(&["--backend", foreign, "adapters"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("does not exist on this operating system"),
        "{stderr}"
    );
    assert!(!stderr.contains("install"), "{stderr}");
}

#[path = "../kernels-tests/common/mod.rs"]
mod common;
