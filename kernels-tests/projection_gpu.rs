//! The batched GPU projection against the CPU reference (src/cpu/projection.rs) on random
//! networks: exact counts, exact states except at proven near-ties, values within f32
//! rounding (the verdict of src/cpu/agreement.rs).

mod common;

use microunify::block::{BlockShape, BlockState, ConvLayout, LayerSpec, Ratios, SelectionMode};
use microunify::cpu::agreement;
use microunify::cpu::projection as cpu;
use microunify::format::{CompressedFile, CompressedLayer};
use microunify::gpu::buffers::POISON;
use microunify::gpu::projection::{NetworkProjection, Tensor};
use microunify::gpu::{Gpu, ProjectedLayer};
use microunify::layout::PackLimits;
use rand::Rng;
use rand::rngs::SmallRng;

struct Case {
    layers: Vec<LayerSpec>,
    mode: SelectionMode,
    w: Vec<Vec<f32>>,
    u: Vec<Vec<f32>>,
}

fn random_layer(rng: &mut SmallRng, i: usize) -> LayerSpec {
    let dims = [1usize, 2, 3, 5, 7, 11, 13, 16, 17, 31, 64, 97];
    // The method's shapes, odd and prime ones, and the 32-per-side limit and around it.
    let blocks = [
        (1, 1),
        (1, 8),
        (2, 8),
        (4, 4),
        (8, 8),
        (16, 16),
        (32, 32),
        (3, 5),
        (31, 32),
        (32, 31),
        (1, 32),
        (32, 1),
        (29, 31),
        (7, 13),
    ];
    let (br, bc) = blocks[rng.random_range(0..blocks.len())];
    let block = BlockShape::new(br, bc).unwrap();
    let shape = if rng.random_bool(0.3) {
        // A conv: [Cout, Cin, 3, 3] or 1x1.
        let k = if rng.random_bool(0.7) { 3 } else { 1 };
        vec![
            dims[rng.random_range(0..dims.len())],
            rng.random_range(1..9),
            k,
            k,
        ]
    } else {
        vec![
            dims[rng.random_range(0..dims.len())],
            dims[rng.random_range(0..dims.len())],
        ]
    };
    LayerSpec::new(format!("layer{i}"), &shape, block).unwrap()
}

fn random_case(rng: &mut SmallRng, max_layers: usize) -> Case {
    let n = rng.random_range(1..=max_layers);
    let layers: Vec<LayerSpec> = (0..n).map(|i| random_layer(rng, i)).collect();
    let mode = common::selection_mode(rng, &layers, 0.25);
    let w = layers
        .iter()
        .map(|l| common::weights(rng, l.view.len()))
        .collect();
    let u = layers
        .iter()
        .map(|l| {
            if rng.random_bool(0.5) {
                vec![0.0; l.view.len()]
            } else {
                common::weights(rng, l.view.len())
            }
        })
        .collect();
    Case { layers, mode, w, u }
}

/// Projects `case` on the GPU (outputs poisoned first) and returns what it produced.
fn project(gpu: &Gpu, case: &Case, limits: Option<PackLimits>) -> Vec<ProjectedLayer> {
    let net = match limits {
        Some(l) => NetworkProjection::with_limits(gpu, case.layers.clone(), case.mode.clone(), l),
        None => NetworkProjection::new(gpu, case.layers.clone(), case.mode.clone()),
    }
    .unwrap();
    net.poison(gpu, POISON);
    for l in 0..case.layers.len() {
        net.write(gpu, Tensor::W, l, &case.w[l]).unwrap();
        net.write(gpu, Tensor::U, l, &case.u[l]).unwrap();
    }
    net.run(gpu).unwrap();
    outputs(gpu, &net)
}

/// The GPU result of `case` against the CPU reference on the same V = W + U (the same f32
/// additions the GPU does): exact counts, states up to proven near-ties, values within
/// rounding (src/cpu/agreement.rs).
fn run_case(gpu: &Gpu, case: &Case, limits: Option<PackLimits>) {
    let out = project(gpu, case, limits);
    let v: Vec<Vec<f32>> = case
        .w
        .iter()
        .zip(&case.u)
        .map(|(w, u)| w.iter().zip(u).map(|(a, b)| a + b).collect())
        .collect();
    let refs: Vec<&[f32]> = v.iter().map(Vec::as_slice).collect();
    let verdict = agreement::projection(&case.layers, &case.mode, &refs, &out).unwrap();
    assert!(verdict.agrees(), "{}", verdict.failures(10));
    assert_eq!(verdict.flushed_subnormals, 0, "{verdict:?}");
}

#[test]
fn random_networks_match_the_cpu_reference() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(0x5eed);
    for case_no in 0..100 {
        let max_layers = if case_no % 10 == 9 { 50 } else { 8 };
        let case = random_case(&mut rng, max_layers);
        eprintln!(
            "case {case_no}: {} layers, {:?}",
            case.layers.len(),
            match &case.mode {
                SelectionMode::Global(r) => format!("global {r:?}"),
                SelectionMode::PerLayer(_) => "per layer".into(),
            }
        );
        run_case(&gpu, &case, None);
    }
}

#[test]
fn networks_larger_than_one_binding_are_split() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(7);
    let block = |r, c| BlockShape::new(r, c).unwrap();
    let layers = vec![
        LayerSpec::new("big", &[203, 301], block(4, 4)).unwrap(),
        LayerSpec::new("small", &[5, 7], block(2, 8)).unwrap(),
        LayerSpec::new("conv", &[64, 32, 3, 3], block(8, 8)).unwrap(),
    ];
    let mode = SelectionMode::PerLayer(vec![
        Ratios::new(0.5, 0.3, "big").unwrap(),
        Ratios::new(0.2, 0.2, "small").unwrap(),
        Ratios::new(0.0, 0.9, "conv").unwrap(),
    ]);
    let w = layers
        .iter()
        .map(|l| common::weights(&mut rng, l.view.len()))
        .collect();
    let u = layers
        .iter()
        .map(|l| common::weights(&mut rng, l.view.len()))
        .collect();
    let case = Case { layers, mode, w, u };
    // 64 KiB bindings: "big" alone needs four chunks.
    let limits = PackLimits {
        max_binding_bytes: 64 << 10,
        offset_alignment: 256,
    };
    let net = NetworkProjection::with_limits(&gpu, case.layers.clone(), case.mode.clone(), limits)
        .unwrap();
    assert!(
        net.layout.chunks.len() >= 4,
        "{} chunks",
        net.layout.chunks.len()
    );
    run_case(&gpu, &case, Some(limits));
}

#[test]
fn non_finite_input_names_layer_and_index() {
    let Some(gpu) = common::gpu() else { return };
    // 10 columns take the scalar path of the kernels, 12 the vec4 path.
    for cols in [10usize, 12] {
        let layers = vec![
            LayerSpec::new("ok", &[4, 4], BlockShape::default()).unwrap(),
            LayerSpec::new("bad", &[6, cols], BlockShape::default()).unwrap(),
        ];
        let mode = cpu::per_layer(&layers, 0.5, 0.25).unwrap();
        let net = NetworkProjection::new(&gpu, layers, mode).unwrap();
        net.write(&gpu, Tensor::W, 0, &[0.5; 16]).unwrap();
        let mut w = vec![1.0f32; 6 * cols];
        w[2 * cols + 7] = f32::NAN;
        w[4 * cols + 5] = f32::INFINITY;
        net.write(&gpu, Tensor::W, 1, &w).unwrap();
        net.zero_dual(&gpu).unwrap();
        let e = net.run(&gpu).unwrap_err().to_string();
        let want = format!("index {} (row 2, col 7)", 2 * cols + 7);
        assert!(e.contains("\"bad\"") && e.contains(&want), "{e}");
    }
}

#[test]
fn wrong_lengths_are_errors() {
    let Some(gpu) = common::gpu() else { return };
    let layers = vec![LayerSpec::new("fc", &[3, 5], BlockShape::default()).unwrap()];
    let mode = cpu::per_layer(&layers, 0.5, 0.0).unwrap();
    let net = NetworkProjection::new(&gpu, layers.clone(), mode).unwrap();
    assert!(net.write(&gpu, Tensor::W, 0, &[0.0; 14]).is_err());
    assert!(net.write(&gpu, Tensor::W, 1, &[0.0; 15]).is_err());
    let two = SelectionMode::PerLayer(vec![Ratios::default(); 2]);
    assert!(NetworkProjection::new(&gpu, layers, two).is_err());
}

/// Everything a projection produces, per layer.
fn outputs(gpu: &Gpu, net: &NetworkProjection) -> Vec<ProjectedLayer> {
    (0..net.layout.layers.len())
        .map(|l| net.read_layer(gpu, l).unwrap())
        .collect()
}

/// A network over several chunks (64 KiB bindings), vec4 and scalar layers, non-zero U,
/// random per-layer or global ratios.
fn split_case(rng: &mut SmallRng) -> (Case, PackLimits) {
    let block = |r, c| BlockShape::new(r, c).unwrap();
    let layers = vec![
        LayerSpec::new("big", &[203, 301], block(4, 4)).unwrap(),
        LayerSpec::new("small", &[5, 7], block(2, 8)).unwrap(),
        LayerSpec::new("conv", &[64, 32, 3, 3], block(8, 8)).unwrap(),
        LayerSpec::new("odd", &[37, 13], block(3, 5)).unwrap(),
    ];
    let mode = common::selection_mode(rng, &layers, 0.5);
    let w = layers
        .iter()
        .map(|l| common::weights(rng, l.view.len()))
        .collect();
    let u = layers
        .iter()
        .map(|l| common::weights(rng, l.view.len()))
        .collect();
    let limits = PackLimits {
        max_binding_bytes: 64 << 10,
        offset_alignment: 32,
    };
    (Case { layers, mode, w, u }, limits)
}

#[test]
fn stepwise_run_is_bit_identical_to_one_submission() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(0x57e9);
    for _ in 0..6 {
        let (case, limits) = split_case(&mut rng);
        let net =
            NetworkProjection::with_limits(&gpu, case.layers.clone(), case.mode.clone(), limits)
                .unwrap();
        assert!(net.layout.chunks.len() >= 2);
        let mut results = Vec::new();
        for stepwise in [false, true] {
            net.poison(&gpu, POISON);
            for l in 0..case.layers.len() {
                net.write(&gpu, Tensor::W, l, &case.w[l]).unwrap();
                net.write(&gpu, Tensor::U, l, &case.u[l]).unwrap();
            }
            if stepwise {
                net.run_stepwise(&gpu).unwrap();
            } else {
                net.run(&gpu).unwrap();
            }
            results.push(outputs(&gpu, &net));
        }
        // Bit patterns, so that NaN-free results compare exactly and any drift shows.
        let bits = |r: &Vec<ProjectedLayer>| -> Vec<Vec<u32>> {
            r.iter()
                .map(|o| {
                    o.z.iter()
                        .chain(&o.u)
                        .chain(&o.magnitudes)
                        .map(|x| x.to_bits())
                        .chain(o.signs.iter().copied())
                        .chain(o.states.iter().map(|s| *s as u32))
                        .collect()
                })
                .collect()
        };
        let (one, steps) = (bits(&results[0]), bits(&results[1]));
        for (l, (a, b)) in one.iter().zip(&steps).enumerate() {
            let first = a.iter().zip(b).position(|(x, y)| x != y);
            assert_eq!(first, None, "{}: first difference", case.layers[l].name);
        }
    }
}

/// Two ADMM steps recorded into one command buffer give what two separate runs give:
/// each recorded projection resets its selection state, dispatch arguments and markers
/// inside the command stream (a queue write would land once, before both).
#[test]
fn projections_recorded_together_each_start_afresh() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(0x2bad);
    for _ in 0..6 {
        let (case, limits) = split_case(&mut rng);
        let net =
            NetworkProjection::with_limits(&gpu, case.layers.clone(), case.mode.clone(), limits)
                .unwrap();
        let load = |net: &NetworkProjection| {
            for l in 0..case.layers.len() {
                net.write(&gpu, Tensor::W, l, &case.w[l]).unwrap();
                net.write(&gpu, Tensor::U, l, &case.u[l]).unwrap();
            }
        };
        load(&net);
        net.run(&gpu).unwrap();
        // The second step projects W + U' with the dual U' the first one left, so its
        // keys, and usually its selection thresholds, differ from the first step's.
        net.run(&gpu).unwrap();
        let separate = outputs(&gpu, &net);

        load(&net);
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        net.record(&mut encoder);
        net.record(&mut encoder);
        gpu.submit_and_wait("two recorded projections", encoder.finish())
            .unwrap();
        net.check_finite(&gpu).unwrap();
        let together = outputs(&gpu, &net);
        for (l, (a, b)) in separate.iter().zip(&together).enumerate() {
            let name = &case.layers[l].name;
            let moved = a
                .states
                .iter()
                .zip(&b.states)
                .filter(|(x, y)| x != y)
                .count();
            assert_eq!(moved, 0, "{name}: {moved} block states differ");
            assert!(a == b, "{name}: Z, U, magnitudes or signs differ");
        }
    }
}

/// One slice of a long computation: each invocation advances its own state by `steps`
/// dependent steps of a recurrence and stores it back, so that many dispatches in one
/// submission run as long as the test needs while every dispatch keeps within the loop
/// budget of CPU drivers (src/gpu/loops.rs), which would silently cut a longer loop.
const SPIN: &str = r#"
@group(0) @binding(0) var<storage, read_write> state: array<u32>;
@group(0) @binding(1) var<storage, read> steps: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    var x = state[gid.x];
    for (var i = 0u; i < steps[0]; i++) {
        x = x * 1664525u + 1013904223u;
        x ^= x >> 15u;
    }
    state[gid.x] = x;
}
"#;
const SPIN_WORKGROUPS: u32 = 64;
const SPIN_INVOCATIONS: u32 = SPIN_WORKGROUPS * 64;

/// The recurrence of [`SPIN`] on the CPU.
fn spin_step(x: u32) -> u32 {
    let x = x.wrapping_mul(1664525).wrapping_add(1013904223);
    x ^ (x >> 15)
}

fn spin_start(invocation: u32) -> u32 {
    invocation ^ 0x9e37_79b9
}

/// Steps per dispatch: the longest loop the budget's share allows.
fn spin_steps_per_dispatch() -> u32 {
    use microunify::gpu::loops::{SHARE, active, lp};
    let steps = SHARE - 1;
    assert!(active(&[lp("spin steps", steps, vec![])]) <= SHARE);
    steps as u32
}

/// Dispatches in the one submission: about 2^24 steps per invocation (a tenth of a second
/// on a large GPU, far above the test's 5 ms bound); on a CPU adapter, where the 4096
/// invocations share a few cores, a handful (about a second on lavapipe).
fn spin_dispatches(device: wgpu::DeviceType) -> u32 {
    match device {
        wgpu::DeviceType::Cpu => 12,
        _ => (1 << 24) / spin_steps_per_dispatch() + 1,
    }
}

/// Reads a storage buffer with the raw device (the `Gpu`'s own waits refuse once it is
/// lost), waiting without the `Gpu`'s bound.
fn read_raw(gpu: &Gpu, buf: &wgpu::Buffer) -> Vec<u32> {
    let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("spin readback"),
        size: buf.size(),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(buf, 0, &staging, 0, buf.size());
    gpu.queue.submit([encoder.finish()]);
    staging
        .slice(..)
        .map_async(wgpu::MapMode::Read, |r| r.unwrap());
    gpu.device
        .poll(wgpu::PollType::Wait {
            submission_index: None,
            timeout: Some(std::time::Duration::from_secs(120)),
        })
        .unwrap();
    let v = bytemuck::pod_collect_to_vec(&staging.slice(..).get_mapped_range().unwrap());
    staging.unmap();
    v
}

#[test]
fn a_wait_that_runs_out_is_an_error_naming_the_step() {
    let Some(shared) = common::gpu() else { return };
    if common::skip_on_gl(
        &shared,
        "GL's submit blocks until the work is done, so no wait can run out",
    ) {
        return;
    }
    use microunify::Error;
    use std::time::{Duration, Instant};
    use wgpu::util::DeviceExt;
    // A device of its own: this one is lost at the end, the binary's shared one stays usable.
    let gpu = Gpu::from_adapter(shared.adapter.clone()).unwrap();
    let pipeline = common::raw_pipeline(&gpu, "spin", SPIN);
    let start_state: Vec<u32> = (0..SPIN_INVOCATIONS).map(spin_start).collect();
    let state = gpu
        .device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("spin state"),
            contents: bytemuck::cast_slice(&start_state),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        });
    let steps = spin_steps_per_dispatch();
    let steps_buf = gpu
        .device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("spin steps"),
            contents: bytemuck::cast_slice(&[steps]),
            usage: wgpu::BufferUsages::STORAGE,
        });
    let bind = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("spin"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: state.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: steps_buf.as_entire_binding(),
            },
        ],
    });
    let dispatches = spin_dispatches(gpu.info.device_type);
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    for _ in 0..dispatches {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(SPIN_WORKGROUPS, 1, 1);
    }
    let index = gpu.submit("spin", encoder.finish()).unwrap();
    let start = Instant::now();
    let e = gpu
        .wait_timeout("spin kernel", Some(index.clone()), Duration::from_millis(5))
        .unwrap_err();
    let waited = start.elapsed();
    assert!(
        matches!(&e, Error::GpuTimeout { step, .. } if step == "spin kernel"),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("spin kernel")
            && msg.contains("0.005 s")
            && msg.contains("MICROUNIFY_GPU_TIMEOUT_S"),
        "{msg}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "the bounded wait took {waited:?}"
    );
    eprintln!("timed out after {waited:?}");

    // The device is lost now: later waits and submissions fail at once, naming the stall.
    assert_eq!(gpu.lost().as_deref(), Some("spin kernel"));
    let refused = Instant::now();
    let later = gpu.wait("a later step").unwrap_err();
    assert!(
        matches!(&later, Error::GpuLost { step, now } if step == "spin kernel" && now.contains("a later step")),
        "{later:?}"
    );
    let empty = gpu.device.create_command_encoder(&Default::default());
    let submit = gpu.submit("more work", empty.finish()).unwrap_err();
    assert!(
        matches!(&submit, Error::GpuLost { step, now } if step == "spin kernel" && now.contains("more work")),
        "{submit:?}"
    );
    let msg = submit.to_string();
    assert!(
        msg.contains("spin kernel") && msg.contains("more work"),
        "{msg}"
    );
    assert!(
        refused.elapsed() < Duration::from_millis(500),
        "refusing took {:?}",
        refused.elapsed()
    );
    assert!(shared.lost().is_none(), "the binary's own device was lost");

    // The work itself finishes, in full: a loop cut short leaves other states.
    let end = read_raw(&gpu, &state);
    eprintln!(
        "{dispatches} dispatches of {steps} steps finished after {:?}",
        start.elapsed()
    );
    let total = u64::from(dispatches) * u64::from(steps);
    for i in (0..SPIN_INVOCATIONS).step_by(SPIN_INVOCATIONS as usize / 8 - 1) {
        let want = (0..total).fold(spin_start(i), |x, _| spin_step(x));
        assert_eq!(
            end[i as usize], want,
            "invocation {i}: the GPU's state differs from {total} steps on the CPU (a loop cut short?)"
        );
    }
}

/// An 8×8 weight whose four 4×4 blocks (row-major) hold the constants `c`.
fn four_blocks(c: [f32; 4]) -> Vec<f32> {
    (0..64).map(|i| c[(i / 8 / 4) * 2 + (i % 8) / 4]).collect()
}

/// Projects one 8×8 layer of four constant 4×4 blocks with `--prune 0.25 --unify 0` and
/// checks the verdict; returns the GPU's states.
fn project_four_blocks(gpu: &Gpu, c: [f32; 4], global: bool) -> Vec<BlockState> {
    let layers = vec![LayerSpec::new("w", &[8, 8], BlockShape::new(4, 4).unwrap()).unwrap()];
    let r = Ratios::new(0.25, 0.0, "w").unwrap();
    let mode = if global {
        SelectionMode::Global(r)
    } else {
        SelectionMode::PerLayer(vec![r])
    };
    let w = four_blocks(c);
    let case = Case {
        layers,
        mode,
        u: vec![vec![0.0; 64]],
        w: vec![w.clone()],
    };
    let out = project(gpu, &case, None);
    let verdict = agreement::projection(&case.layers, &case.mode, &[&w], &out).unwrap();
    assert!(verdict.agrees(), "{c:?}: {}", verdict.failures(10));
    out[0].states.clone()
}

/// Blocks of 3c, c, 3c, 3c: block 1 has the smallest Σv² at every magnitude, including
/// where the squares overflow f32 (3e19, 1e38), where they underflow it (1e-38) and where
/// the weights themselves are subnormal (1e-40, and multiples of the smallest, 2^-149).
#[test]
fn huge_tiny_and_subnormal_weights_prune_the_smallest_block() {
    let Some(gpu) = common::gpu() else { return };
    let tiniest = f32::from_bits(1);
    for c in [1.0f32, 1e19, 1e38, 1e-38, 1e-40, tiniest] {
        let three = if c == 1e38 { 3e38 } else { 3.0 * c };
        for global in [false, true] {
            let states = project_four_blocks(&gpu, [three, c, three, three], global);
            assert_eq!(
                states,
                [
                    BlockState::Dense,
                    BlockState::Pruned,
                    BlockState::Dense,
                    BlockState::Dense
                ],
                "c = {c:e}, global {global}"
            );
        }
    }
}

/// A layer whose block rows each take one regime (one regime throughout when `mixed` is
/// false), so that huge, ordinary and tiny blocks meet in one selection.
fn regime_layer(rng: &mut SmallRng, i: usize, mixed: bool) -> (LayerSpec, Vec<f32>, Vec<f32>) {
    let mut spec = random_layer(rng, i);
    spec.name = format!("layer{i}");
    let one = common::REGIMES[rng.random_range(0..common::REGIMES.len())];
    let br = spec.block.rows;
    let row_regimes: Vec<_> = (0..spec.view.rows.div_ceil(br))
        .map(|_| {
            if mixed {
                common::REGIMES[rng.random_range(0..common::REGIMES.len())]
            } else {
                one
            }
        })
        .collect();
    let n = spec.view.len();
    let cols = spec.view.cols;
    let w: Vec<f32> = (0..n)
        .map(|i| common::regime_value(rng, row_regimes[i / cols / br]))
        .collect();
    // U of the same magnitude (half the time): W + U stays finite, since no regime reaches
    // 2^126.
    let u: Vec<f32> = if rng.random_bool(0.5) {
        vec![0.0; n]
    } else {
        (0..n)
            .map(|i| common::regime_value(rng, row_regimes[i / cols / br]))
            .collect()
    };
    (spec, w, u)
}

/// Random layers at every magnitude regime, alone and mixed within a layer and across
/// layers, per layer and global: the verdict against the f64 reference must hold, and on
/// an adapter that keeps subnormals nothing may come back flushed.
#[test]
fn every_magnitude_regime_matches_the_reference() {
    let Some(gpu) = common::gpu() else { return };
    let keeps = common::keeps_subnormals(&gpu);
    let mut rng = common::rng(0x9e19);
    for case_no in 0..60 {
        let n = rng.random_range(1..=5);
        let mixed = case_no % 2 == 1;
        let (mut layers, mut w, mut u) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            let (l, wl, ul) = regime_layer(&mut rng, i, mixed);
            layers.push(l);
            w.push(wl);
            u.push(ul);
        }
        let mode = common::selection_mode(&mut rng, &layers, 0.4);
        let case = Case { layers, mode, w, u };
        let out = project(&gpu, &case, None);
        let v: Vec<Vec<f32>> = case
            .w
            .iter()
            .zip(&case.u)
            .map(|(w, u)| w.iter().zip(u).map(|(a, b)| a + b).collect())
            .collect();
        let refs: Vec<&[f32]> = v.iter().map(Vec::as_slice).collect();
        let verdict = agreement::projection(&case.layers, &case.mode, &refs, &out).unwrap();
        assert!(
            verdict.agrees(),
            "case {case_no} (mixed {mixed}): {}",
            verdict.failures(10)
        );
        if keeps {
            assert_eq!(verdict.flushed_subnormals, 0, "case {case_no}");
        }
    }
}

/// The loop budget's worst case (kernels-tests/loop_budget.rs) on the GPU: blocks at the
/// 32-per-side limit and one short of it, every lane's 8 blocks real, ragged edge blocks
/// (1 column, or 1 row, wide) beside full ones in the same workgroups, the scalar layout
/// (columns not a multiple of 4) and the vec4 one, and values small enough that every
/// block also takes the scaled pass; per layer and global.
#[test]
fn blocks_at_the_side_limit_with_every_loop_at_its_longest() {
    let Some(gpu) = common::gpu() else { return };
    let keeps = common::keeps_subnormals(&gpu);
    let mut rng = common::rng(0x3232);
    let cases = [
        // (block rows, block cols, matrix rows, matrix cols): 16 x 33 = 528 blocks.
        (32, 32, 512, 1025),
        (32, 32, 481, 1028),
        (31, 32, 497, 1025),
        (32, 31, 512, 993),
        (1, 32, 17, 1025),
        (32, 1, 513, 32),
    ];
    for (i, &(br, bc, rows, cols)) in cases.iter().enumerate() {
        let spec = LayerSpec::new(
            format!("limit{i}"),
            &[rows, cols],
            BlockShape::new(br, bc).unwrap(),
        )
        .unwrap();
        let tiny = ("subnormal and tiny", -149, -120);
        let w: Vec<f32> = (0..rows * cols)
            .map(|_| common::regime_value(&mut rng, tiny))
            .collect();
        let u: Vec<f32> = (0..rows * cols)
            .map(|_| common::regime_value(&mut rng, tiny))
            .collect();
        for global in [false, true] {
            let r = Ratios::new(0.3, 0.4, &spec.name).unwrap();
            let mode = if global {
                SelectionMode::Global(r)
            } else {
                SelectionMode::PerLayer(vec![r])
            };
            // A normal layer beside it, in global mode ranked against it.
            let other =
                LayerSpec::new("ordinary", &[37, 70], BlockShape::new(br, bc).unwrap()).unwrap();
            let mode = match mode {
                SelectionMode::PerLayer(mut v) => {
                    v.push(Ratios::new(0.5, 0.2, "ordinary").unwrap());
                    SelectionMode::PerLayer(v)
                }
                g => g,
            };
            let case = Case {
                layers: vec![spec.clone(), other],
                mode,
                w: vec![w.clone(), common::weights(&mut rng, 37 * 70)],
                u: vec![u.clone(), vec![0.0; 37 * 70]],
            };
            let out = project(&gpu, &case, None);
            let v: Vec<Vec<f32>> = case
                .w
                .iter()
                .zip(&case.u)
                .map(|(w, u)| w.iter().zip(u).map(|(a, b)| a + b).collect())
                .collect();
            let refs: Vec<&[f32]> = v.iter().map(Vec::as_slice).collect();
            let verdict = agreement::projection(&case.layers, &case.mode, &refs, &out).unwrap();
            assert!(
                verdict.agrees(),
                "{br}x{bc} blocks of a {rows}x{cols} matrix, global {global}: {}",
                verdict.failures(10)
            );
            if keeps {
                assert_eq!(verdict.flushed_subnormals, 0);
            }
        }
    }
}

/// Blocks whose first weight is 1000 times the others: the magnitude a = mean|v| must
/// stay within rounding (a mean formed as first + Σ(x − first)/n cancels to ~1e-4).
#[test]
fn the_mean_is_accurate_when_a_block_starts_with_its_largest_weight() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(0x1000);
    for (br, bc, cols) in [(32, 32, 96), (32, 32, 97), (8, 8, 40)] {
        let spec = LayerSpec::new("first", &[64, cols], BlockShape::new(br, bc).unwrap()).unwrap();
        let w: Vec<f32> = (0..64 * cols)
            .map(|i| {
                let (r, c) = (i / cols, i % cols);
                if r % br == 0 && c % bc == 0 {
                    1000.0
                } else {
                    rng.random_range(0.5f32..1.0)
                }
            })
            .collect();
        let case = Case {
            layers: vec![spec],
            mode: SelectionMode::PerLayer(vec![Ratios::new(0.0, 1.0, "first").unwrap()]),
            u: vec![vec![0.0; w.len()]],
            w: vec![w.clone()],
        };
        let out = project(&gpu, &case, None);
        let verdict = agreement::projection(&case.layers, &case.mode, &[&w], &out).unwrap();
        assert!(verdict.agrees(), "{br}x{bc}: {}", verdict.failures(5));
    }
}

/// More blocks to rescale than one dispatch dimension holds (65,535 workgroups of
/// kernels::RESCALE_WG): block_stats arms block_rescale's grid in 2-D and every listed
/// block is still recomputed (1×1 blocks of subnormals, all listed).
#[test]
fn rescale_lists_longer_than_one_grid_dimension() {
    let Some(gpu) = common::gpu() else { return };
    let max = gpu.limits().max_compute_workgroups_per_dimension as usize;
    let blocks = max * microunify::gpu::kernels::RESCALE_WG as usize + 4099;
    let side = (blocks as f64).sqrt().ceil() as usize;
    let spec = LayerSpec::new("many", &[side, side], BlockShape::new(1, 1).unwrap()).unwrap();
    let mut rng = common::rng(0x2d2d);
    let subnormal = ("subnormal", -149, -127);
    let w: Vec<f32> = (0..side * side)
        .map(|_| common::regime_value(&mut rng, subnormal))
        .collect();
    let case = Case {
        layers: vec![spec],
        mode: SelectionMode::PerLayer(vec![Ratios::new(0.4, 0.3, "many").unwrap()]),
        u: vec![vec![0.0; w.len()]],
        w: vec![w.clone()],
    };
    let out = project(&gpu, &case, None);
    let verdict = agreement::projection(&case.layers, &case.mode, &[&w], &out).unwrap();
    assert!(verdict.agrees(), "{}", verdict.failures(5));
}

/// block_rescale's list fits wherever the layout fits the keys: 1×1 blocks in 64 KiB
/// bindings project correctly, and a network at the very limit (keys of exactly one
/// binding, the list 16 bytes more) is refused by name rather than by the driver.
#[test]
fn rescale_lists_fit_where_the_keys_do() {
    let Some(gpu) = common::gpu() else { return };
    let limits = PackLimits {
        max_binding_bytes: 64 << 10,
        offset_alignment: 256,
    };
    let mut rng = common::rng(0x64);
    let tiny = ("subnormal", -149, -127);
    let spec = LayerSpec::new("ones", &[100, 100], BlockShape::new(1, 1).unwrap()).unwrap();
    let w: Vec<f32> = (0..10_000)
        .map(|_| common::regime_value(&mut rng, tiny))
        .collect();
    let case = Case {
        layers: vec![spec],
        mode: SelectionMode::PerLayer(vec![Ratios::new(0.5, 0.25, "ones").unwrap()]),
        u: vec![vec![0.0; w.len()]],
        w: vec![w.clone()],
    };
    let out = project(&gpu, &case, Some(limits));
    let verdict = agreement::projection(&case.layers, &case.mode, &[&w], &out).unwrap();
    assert!(verdict.agrees(), "{}", verdict.failures(5));
    // 16,384 blocks: keys of exactly 64 KiB, a list 16 bytes longer.
    let full = LayerSpec::new("full", &[128, 128], BlockShape::new(1, 1).unwrap()).unwrap();
    let mode = SelectionMode::PerLayer(vec![Ratios::new(0.5, 0.0, "full").unwrap()]);
    match NetworkProjection::with_limits(&gpu, vec![full], mode, limits) {
        Err(microunify::Error::TooLarge(msg)) => assert!(msg.contains("block_rescale"), "{msg}"),
        Err(e) => panic!("expected TooLarge, got {e}"),
        Ok(_) => panic!("expected TooLarge"),
    }
}

/// 17.6M 1×1 blocks in one chunk: keys of 70.6 MB fit lavapipe's 128 MiB binding, and so
/// does the rescale list (a list of (block, value) pairs, 141 MB, failed allocation).
#[test]
fn a_chunk_of_millions_of_blocks_allocates_and_runs() {
    let Some(gpu) = common::gpu() else { return };
    let side = 4200;
    let blocks = side * side;
    if (blocks as u64 * 4) > gpu.limits().max_storage_buffer_binding_size {
        eprintln!("{blocks} keys do not fit one binding here; nothing to check");
        return;
    }
    let spec = LayerSpec::new("big", &[side, side], BlockShape::new(1, 1).unwrap()).unwrap();
    let mode = SelectionMode::PerLayer(vec![Ratios::new(0.5, 0.0, "big").unwrap()]);
    let net = NetworkProjection::new(&gpu, vec![spec], mode).unwrap();
    let mut rng = common::rng(0x42);
    net.write(&gpu, Tensor::W, 0, &common::weights(&mut rng, blocks))
        .unwrap();
    net.zero_dual(&gpu).unwrap();
    net.run(&gpu).unwrap();
    let states = net.states(&gpu).unwrap();
    let pruned = states[0]
        .iter()
        .filter(|s| **s == BlockState::Pruned)
        .count();
    assert_eq!(pruned, blocks / 2);
}

/// Sign words are numbered over the full tile (bit r·bc + c) at ragged edges too, in both
/// of block_stats' row layouts and in block_rescale: the GPU's words are the CPU
/// reference's, and the compressed matrix (and so the file and the GEMM) takes them as
/// they are, with nothing renumbered between.
#[test]
fn ragged_edge_signs_use_full_tile_numbering() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(11);
    // (rows, cols, block, scale): vec4 rows (cols and block columns multiples of 4) and
    // scalar rows, each with ragged right and bottom edges, and values far above and below
    // the plain sums' range, which block_rescale sums again.
    let shapes = [
        (13, 22, (4, 4), 1.0),
        (13, 20, (4, 8), 1.0),
        (7, 13, (3, 5), 1.0),
        (9, 17, (8, 8), 1.0),
        (33, 70, (32, 32), 1.0),
        (35, 37, (32, 31), 1.0),
        (7, 13, (3, 5), 1e20),
        (13, 20, (4, 8), 1e-30),
    ];
    let layers: Vec<LayerSpec> = (shapes.iter().enumerate())
        .map(|(i, &(r, c, (br, bc), _))| {
            LayerSpec::new(format!("l{i}"), &[r, c], BlockShape::new(br, bc).unwrap()).unwrap()
        })
        .collect();
    let w: Vec<Vec<f32>> = (layers.iter().zip(&shapes))
        .map(|(l, s)| {
            let w = common::weights(&mut rng, l.view.len());
            w.iter().map(|x| x * s.3).collect()
        })
        .collect();
    let u = layers.iter().map(|l| vec![0.0; l.view.len()]).collect();
    let mode = cpu::per_layer(&layers, 0.2, 0.6).unwrap();
    let case = Case { layers, mode, w, u };
    let out = project(&gpu, &case, None);
    for ((spec, o), w) in case.layers.iter().zip(&out).zip(&case.w) {
        let name = &spec.name;
        assert_eq!(
            o.signs,
            cpu::sign_words(&spec.grid(), w),
            "{name}: GPU vs CPU"
        );
        let m = o.compress(spec).unwrap();
        let wpb = m.words_per_block();
        let unified: Vec<u32> = (o.states.iter().enumerate())
            .filter(|(_, s)| **s == BlockState::Unified)
            .flat_map(|(b, _)| o.signs[b * wpb..(b + 1) * wpb].to_vec())
            .collect();
        assert!(!unified.is_empty(), "{name}: no unified block");
        assert_eq!(m.signs(), unified, "{name}: compressed vs GPU");
        assert_eq!(m.to_dense(), o.z, "{name}: the signs reconstruct Z");
        let layer = CompressedLayer::new(
            name,
            &[spec.view.rows, spec.view.cols],
            ConvLayout::ChannelMajor,
            m.clone(),
        )
        .unwrap();
        let file = CompressedFile {
            layers: vec![layer],
            ..Default::default()
        };
        let back = CompressedFile::from_bytes(&file.to_bytes().unwrap()).unwrap();
        assert_eq!(
            back.layers[0].matrix.signs(),
            m.signs(),
            "{name}: file vs GPU"
        );
    }
}
