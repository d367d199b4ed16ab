//! Shared helpers of the shader tests: the device (or a loud skip) and seeded inputs.

#![allow(dead_code)] // each test binary uses a different subset

use microunify::gpu::{Gpu, GpuOptions};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

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
