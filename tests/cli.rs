//! The `microunify` binary refuses bad input with a clear message and a non-zero exit,
//! never a panic.

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_microunify"))
        .args(args)
        .output()
        .expect("running microunify")
}

fn fails_with(args: &[&str], needle: &str) {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: expected {needle:?} in stderr, got: {stderr}"
    );
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
