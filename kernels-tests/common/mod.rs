//! Shared helpers of the tests: the device (or a loud skip), seeded inputs, and running a
//! built binary that must refuse bad input cleanly.

#![allow(dead_code)] // each test binary uses a different subset

use microunify::gpu::{Gpu, GpuOptions};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::process::{Command, Output};

/// The test adapter. Without one the test prints a loud notice and returns `None`, unless
/// `MICROUNIFY_REQUIRE_GPU=1` (set by scripts/test), where a missing adapter fails.
pub fn gpu() -> Option<Gpu> {
    match Gpu::new(&GpuOptions::default()) {
        Ok(g) => {
            eprintln!("adapter: {g:?}");
            Some(g)
        }
        Err(e) => {
            if std::env::var("MICROUNIFY_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("MICROUNIFY_REQUIRE_GPU=1 but no adapter: {e}");
            }
            eprintln!("\n*** SKIPPING GPU TEST: no adapter ({e}) ***\n");
            None
        }
    }
}

pub fn rng(seed: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed)
}

/// Values with a spread of magnitudes and signs, some exact zeros and repeated magnitudes,
/// so that ties and sign-of-zero cases occur.
pub fn weights(rng: &mut SmallRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| match rng.random_range(0..20) {
            0 => 0.0,
            1 => 0.25,
            2 => -0.25,
            _ => rng.random_range(-1.0f32..1.0) * 10f32.powi(rng.random_range(-2..2)),
        })
        .collect()
}

/// Runs the binary at `exe` with `args`.
pub fn run_bin(exe: &str, args: &[&str]) -> Output {
    Command::new(exe)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {exe}: {e}"))
}

/// The binary must fail (non-zero exit), without a panic, with `needle` in its stderr.
pub fn fails_with(exe: &str, args: &[&str], needle: &str) {
    let out = run_bin(exe, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: expected {needle:?} in stderr, got: {stderr}"
    );
}
