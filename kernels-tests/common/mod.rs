//! Shared helpers of the tests: the device (or a loud skip), seeded inputs, and running a
//! built binary that must refuse bad input cleanly.

#![allow(dead_code)] // each test binary uses a different subset

use microunify::gpu::{Gpu, GpuOptions};
use microunify::{LayerSpec, Ratios, SelectionMode};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::process::{Command, Output};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// The one device of a test binary, opened on first use and never dropped.
static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();
/// Held by the test using the device: GPU tests run one at a time.
static GPU_LOCK: Mutex<()> = Mutex::new(());

/// Seconds a GPU test may hold the device before the watchdog aborts the binary.
const WATCHDOG_ENV: &str = "MICROUNIFY_TEST_WATCHDOG_S";
/// Above the library's own bound on one wait (120 s by default), so that a hung kernel
/// is normally reported by the library's timeout error, naming the kernel, first.
const WATCHDOG_DEFAULT_S: u64 = 300;

/// The test's exclusive use of the binary's device (derefs to [`Gpu`]).
///
/// One device per binary, used by one test at a time: the library's users (train-gpu,
/// the CLI) hold one device in one thread, and so do the tests. Several devices opened
/// and driven from parallel test threads are what a real driver sees least often (a
/// suspect of the hang seen on an H200, where 16 test threads ran them side by side).
/// A watchdog aborts the binary, naming the test, if the test holds the device too long:
/// a hang then ends with a message instead of silence.
pub struct GpuGuard {
    gpu: &'static Gpu,
    _watchdog: Watchdog,
    _lock: MutexGuard<'static, ()>,
}

impl std::ops::Deref for GpuGuard {
    type Target = Gpu;
    fn deref(&self) -> &Gpu {
        self.gpu
    }
}

/// Aborts the process unless dropped within the limit.
struct Watchdog(Option<mpsc::Sender<()>>);

impl Watchdog {
    fn start() -> Self {
        let secs = std::env::var(WATCHDOG_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(WATCHDOG_DEFAULT_S);
        let test = std::thread::current()
            .name()
            .unwrap_or("<unnamed test>")
            .to_string();
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(secs)) {
                // Straight to stderr: the test harness captures `eprintln!` of test threads.
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** WATCHDOG: test {test} still holds the GPU after {secs} s ({WATCHDOG_ENV}); aborting ***\n"
                );
                std::process::abort();
            }
        });
        Self(Some(tx))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.take(); // disconnects: the watchdog thread ends
    }
}

/// The test adapter. Without one the test prints a loud notice and returns `None`, unless
/// `MICROUNIFY_REQUIRE_GPU=1` (set by scripts/test), where a missing adapter fails.
pub fn gpu() -> Option<GpuGuard> {
    let lock = GPU_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let opened = GPU.get_or_init(|| {
        // Kernels as the static choice picks them, whatever a user's autotune cache holds.
        microunify::gpu::autotune::force_mode(microunify::gpu::autotune::Mode::Off);
        Gpu::new(&GpuOptions::default())
            .inspect(|g| eprintln!("adapter: {g:?}"))
            .map_err(|e| e.to_string())
    });
    match opened {
        Ok(gpu) => Some(GpuGuard {
            gpu,
            _watchdog: Watchdog::start(),
            _lock: lock,
        }),
        Err(e) => {
            if std::env::var("MICROUNIFY_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("MICROUNIFY_REQUIRE_GPU=1 but no adapter: {e}");
            }
            eprintln!("\n*** SKIPPING GPU TEST: no GPU device ({e}) ***\n");
            None
        }
    }
}

/// Whether `gpu` runs on wgpu's GL backend, where the calling test's premise cannot hold
/// (`why`); then prints a loud skip notice naming the test. Elsewhere the test runs.
pub fn skip_on_gl(gpu: &Gpu, why: &str) -> bool {
    let gl = gpu.info.backend == wgpu::Backend::Gl;
    if gl {
        let test = std::thread::current()
            .name()
            .unwrap_or("<unnamed test>")
            .to_string();
        // Straight to stderr, so that the skip shows in a passing run too.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPING {test} on GL: {why} ***\n"
        );
    }
    gl
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
        // Kernels as the static choice picks them, whatever a user's autotune cache holds.
        .env("MICROUNIFY_AUTOTUNE", "off")
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

/// A compute pipeline for a test's own WGSL (`main` entry point, layout derived from it).
pub fn raw_pipeline(gpu: &Gpu, label: &str, src: &str) -> wgpu::ComputePipeline {
    let module = gpu
        .device
        .create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(label),
            source: wgpu::ShaderSource::Wgsl(src.into()),
        });
    gpu.device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(label),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        })
}

/// Whether the adapter keeps subnormal results of f32 arithmetic (WGSL lets it flush them
/// to zero; lavapipe keeps them): 1e-40 + 0 computed in a shader, compared bit for bit.
pub fn keeps_subnormals(gpu: &Gpu) -> bool {
    use wgpu::util::DeviceExt;
    const SRC: &str = "@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@compute @workgroup_size(1) fn main() { x[0] = x[0] + x[1]; }";
    let pipeline = raw_pipeline(gpu, "subnormal probe", SRC);
    let buf = gpu
        .device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("subnormal probe"),
            contents: bytemuck::cast_slice(&[1e-40f32, 0.0]),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        });
    let bind = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[wgpu::BindGroupEntry {
            binding: 0,
            resource: buf.as_entire_binding(),
        }],
    });
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }
    gpu.submit_and_wait("subnormal probe", encoder.finish())
        .unwrap();
    let x: Vec<f32> =
        microunify::gpu::buffers::read_ranges(gpu, "subnormal probe", &[(&buf, 0, 4)])
            .unwrap()
            .remove(0);
    x[0].to_bits() == 1e-40f32.to_bits()
}

/// A random selection mode for `layers`: global with probability `p_global`, else per
/// layer, every pair from [`ratios`].
pub fn selection_mode(rng: &mut SmallRng, layers: &[LayerSpec], p_global: f64) -> SelectionMode {
    if rng.random_bool(p_global) {
        SelectionMode::Global(ratios(rng, "network"))
    } else {
        SelectionMode::PerLayer(layers.iter().map(|l| ratios(rng, &l.name)).collect())
    }
}

/// Prune/unify ratios for `scope`: 0, 1 or random for each, their sum at most 1.
pub fn ratios(rng: &mut SmallRng, scope: &str) -> Ratios {
    let pick = |rng: &mut SmallRng| -> f64 {
        match rng.random_range(0..4) {
            0 => 0.0,
            1 => 1.0,
            _ => rng.random_range(0.0..1.0),
        }
    };
    let p = pick(rng);
    let u = pick(rng).min(1.0 - p);
    Ratios::new(p, u, scope).unwrap()
}

/// Magnitude regimes: (name, smallest and largest binary exponent of the values).
pub const REGIMES: [(&str, i32, i32); 8] = [
    ("near f32's largest", 100, 125),
    ("around 3e19", 60, 68),
    ("around 2^32", 29, 35),
    ("ordinary", -8, 3),
    ("around 2^-32", -35, -29),
    ("near f32's smallest normal", -127, -118),
    ("subnormal", -149, -127),
    ("the smallest subnormals", -149, -146),
];

/// A value `±m·2^e`, `m ∈ [1, 2)`, `e` drawn from the regime; some exact zeros and repeats.
pub fn regime_value(rng: &mut SmallRng, (_, lo, hi): (&str, i32, i32)) -> f32 {
    match rng.random_range(0..20) {
        0 => 0.0,
        1 => 2f64.powi(lo) as f32,
        _ => {
            let m: f64 = rng.random_range(1.0..2.0);
            let s = if rng.random_bool(0.5) { -1.0 } else { 1.0 };
            (s * m * 2f64.powi(rng.random_range(lo..=hi))) as f32
        }
    }
}
