//! The batched GPU projection against the CPU reference (src/cpu/projection.rs) on random
//! networks: exact counts, exact states except at near-ties, values within 1e-6 relative.

mod common;

use microunify::block::{BlockShape, BlockState, LayerSpec, Ratios, SelectionMode};
use microunify::cpu::projection as cpu;
use microunify::gpu::Gpu;
use microunify::gpu::projection::{NetworkProjection, Tensor};
use microunify::layout::PackLimits;
use rand::Rng;
use rand::rngs::SmallRng;

/// Poison for every output buffer: a NaN bit pattern no kernel would produce.
const POISON: u32 = 0x7fc0_dead;

/// GPU keys are f32 sums of `n` terms (row partials, then rows); CPU keys are f64. A block
/// may legitimately land on either side of the threshold when its key is within
/// `NEAR · n · ε₃₂ · scale` of the threshold key, `scale` being the block's `Σ v²` (the
/// magnitude both errors are made of; normalised like the key in global mode). NEAR = 64
/// covers the shifted-sum cancellation in e_u with a wide margin while staying 10⁴ times
/// tighter than any gap a wrong selection would leave on these random inputs.
const NEAR: f64 = 64.0;

struct Case {
    layers: Vec<LayerSpec>,
    mode: SelectionMode,
    w: Vec<Vec<f32>>,
    u: Vec<Vec<f32>>,
}

fn random_layer(rng: &mut SmallRng, i: usize) -> LayerSpec {
    let dims = [1usize, 2, 3, 5, 7, 11, 13, 16, 17, 31, 64, 97];
    let blocks = [
        (1, 1),
        (1, 8),
        (2, 8),
        (4, 4),
        (8, 8),
        (16, 16),
        (32, 32),
        (3, 5),
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

fn random_ratios(rng: &mut SmallRng, scope: &str) -> Ratios {
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

fn random_case(rng: &mut SmallRng, max_layers: usize) -> Case {
    let n = rng.random_range(1..=max_layers);
    let layers: Vec<LayerSpec> = (0..n).map(|i| random_layer(rng, i)).collect();
    let mode = if rng.random_bool(0.25) {
        SelectionMode::Global(random_ratios(rng, "network"))
    } else {
        SelectionMode::PerLayer(layers.iter().map(|l| random_ratios(rng, &l.name)).collect())
    };
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

/// Checks one selection step: GPU and CPU agree on the chosen set except for blocks whose
/// keys are near-ties with the CPU's threshold.
/// Per-block data every selection check needs: keys, near-tie scale, block sizes, groups.
struct Ranking<'a> {
    keys: &'a [f64],
    scale: &'a [f64],
    lens: &'a [usize],
    groups: &'a [cpu::Group],
}

fn check_selection(
    what: &str,
    rank: &Ranking,
    eligible: &[bool],
    cpu_sel: &[bool],
    gpu_sel: &[bool],
) {
    let Ranking {
        keys,
        scale,
        lens,
        groups,
    } = *rank;
    for (gi, g) in groups.iter().enumerate() {
        let r = g.begin..g.end;
        let n_cpu = cpu_sel[r.clone()].iter().filter(|s| **s).count();
        let n_gpu = gpu_sel[r.clone()].iter().filter(|s| **s).count();
        assert_eq!(
            n_cpu, n_gpu,
            "{what}: group {gi} selects {n_gpu} blocks on the GPU, {n_cpu} on the CPU"
        );
        let lo = r
            .clone()
            .filter(|&b| cpu_sel[b])
            .map(|b| keys[b])
            .fold(f64::NEG_INFINITY, f64::max);
        let hi = r
            .clone()
            .filter(|&b| eligible[b] && !cpu_sel[b])
            .map(|b| keys[b])
            .fold(f64::INFINITY, f64::min);
        for b in r {
            if cpu_sel[b] == gpu_sel[b] {
                continue;
            }
            let tol = NEAR * lens[b] as f64 * f32::EPSILON as f64 * scale[b].max(f64::MIN_POSITIVE);
            let gap = if gpu_sel[b] {
                keys[b] - lo
            } else {
                hi - keys[b]
            };
            assert!(
                gap <= tol,
                "{what}: block {b} (key {:e}) is {} on the GPU only; CPU threshold keys [{lo:e}, {hi:e}], gap {gap:e} > near-tie tolerance {tol:e}",
                keys[b],
                if gpu_sel[b] { "selected" } else { "unselected" }
            );
        }
    }
}

fn close(actual: f32, expected: f32, rel: f32) -> bool {
    (actual - expected).abs() <= rel * expected.abs().max(f32::MIN_POSITIVE) || actual == expected
}

fn run_case(gpu: &Gpu, case: &Case, limits: Option<PackLimits>) {
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
    let out: Vec<_> = (0..case.layers.len())
        .map(|l| net.read_layer(gpu, l).unwrap())
        .collect();

    // The CPU reference on the same V = W + U (the same f32 additions the GPU does).
    let v: Vec<Vec<f32>> = case
        .w
        .iter()
        .zip(&case.u)
        .map(|(w, u)| w.iter().zip(u).map(|(a, b)| a + b).collect())
        .collect();
    let stats: Vec<Vec<cpu::BlockStats>> = case
        .layers
        .iter()
        .zip(&v)
        .map(|(l, d)| cpu::block_stats(&l.grid(), d))
        .collect();
    let global = matches!(case.mode, SelectionMode::Global(_));
    let (kp, ku) = cpu::selection_keys(&stats, global);
    let flat: Vec<&cpu::BlockStats> = stats.iter().flatten().collect();
    let lens: Vec<usize> = flat.iter().map(|s| s.len).collect();
    let scale: Vec<f64> = flat
        .iter()
        .map(|s| {
            if global {
                s.prune_err / s.len as f64
            } else {
                s.prune_err
            }
        })
        .collect();
    let groups = cpu::groups(&case.layers, &case.mode);
    let gpu_states: Vec<BlockState> = out.iter().flat_map(|o| o.states.iter().copied()).collect();
    let gpu_pruned: Vec<bool> = gpu_states
        .iter()
        .map(|s| *s == BlockState::Pruned)
        .collect();
    let gpu_unified: Vec<bool> = gpu_states
        .iter()
        .map(|s| *s == BlockState::Unified)
        .collect();
    let all = vec![true; kp.len()];
    let prune_rank = Ranking {
        keys: &kp,
        scale: &scale,
        lens: &lens,
        groups: &groups,
    };
    check_selection(
        "prune",
        &prune_rank,
        &all,
        &cpu::select_pruned(&kp, &groups),
        &gpu_pruned,
    );
    // Unification is checked against the CPU's choice among the blocks the GPU left, so a
    // legitimate near-tie in pruning does not cascade into a false failure here.
    let not_pruned: Vec<bool> = gpu_pruned.iter().map(|p| !p).collect();
    let cpu_unified = cpu::select_unified(&ku, &gpu_pruned, &groups);
    let unify_rank = Ranking {
        keys: &ku,
        ..prune_rank
    };
    check_selection(
        "unify",
        &unify_rank,
        &not_pruned,
        &cpu_unified,
        &gpu_unified,
    );

    for (l, layer) in case.layers.iter().enumerate() {
        let o = &out[l];
        let reference = cpu::apply(&layer.grid(), &v[l], &stats[l], &o.states);
        for (i, (&a, &e)) in o.z.iter().zip(&reference.z).enumerate() {
            assert!(
                close(a, e, 1e-6),
                "{}: Z[{i}] = {a:e}, expected {e:e}",
                layer.name
            );
            // U = V - Z inherits Z's error, which is relative to |Z|, not to |U|.
            let du = v[l][i] - e;
            assert!(
                (o.u[i] - du).abs() <= 1e-6 * (e.abs() + v[l][i].abs()),
                "{}: U[{i}] = {:e}, expected {du:e}",
                layer.name,
                o.u[i]
            );
        }
        for (b, (&a, &e)) in o.magnitudes.iter().zip(&reference.magnitudes).enumerate() {
            assert!(
                close(a, e, 1e-6),
                "{}: magnitude of block {b} = {a:e}, expected {e:e}",
                layer.name
            );
        }
        let signs = cpu::sign_words(&layer.grid(), &v[l]);
        assert_eq!(o.signs, signs, "{}: sign words", layer.name);
    }
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
        net.zero_dual(&gpu);
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
fn outputs(gpu: &Gpu, net: &NetworkProjection) -> Vec<microunify::gpu::ProjectedLayer> {
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
    let mode = if rng.random_bool(0.5) {
        SelectionMode::Global(random_ratios(rng, "network"))
    } else {
        SelectionMode::PerLayer(layers.iter().map(|l| random_ratios(rng, &l.name)).collect())
    };
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
        let bits = |r: &Vec<microunify::gpu::ProjectedLayer>| -> Vec<Vec<u32>> {
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

/// A kernel that runs for a while, far longer than the 5 ms bound of the test: 2^24
/// dependent steps per invocation (about a tenth of a second on a large GPU), and many
/// invocations, because lavapipe (Mesa's gallivm) silently ends a loop after 65535
/// iterations (4096 invocations then take about half a second there).
const SPIN: &str = r#"
@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@group(0) @binding(1) var<storage, read> iters: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    var x = gid.x ^ 0x9e3779b9u;
    for (var i = 0u; i < iters[0]; i++) {
        x = x * 1664525u + 1013904223u;
        x ^= x >> 15u;
    }
    out[gid.x] = x;
}
"#;
const SPIN_WORKGROUPS: u32 = 64;

#[test]
fn a_wait_that_runs_out_is_an_error_naming_the_step() {
    let Some(gpu) = common::gpu() else { return };
    use microunify::Error;
    use std::time::{Duration, Instant};
    use wgpu::util::DeviceExt;
    let module = gpu
        .device
        .create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("spin"),
            source: wgpu::ShaderSource::Wgsl(SPIN.into()),
        });
    let pipeline = gpu
        .device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("spin"),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
    let out = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("spin out"),
        size: SPIN_WORKGROUPS as u64 * 64 * 4,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let iters = gpu
        .device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("spin iterations"),
            contents: bytemuck::cast_slice(&[1u32 << 24]),
            usage: wgpu::BufferUsages::STORAGE,
        });
    let bind = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("spin"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: out.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: iters.as_entire_binding(),
            },
        ],
    });
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    {
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
    // The work finishes after all; the device stays usable.
    gpu.wait_timeout("spin kernel", Some(index), Duration::from_secs(120))
        .unwrap();
    gpu.wait("after the spin kernel").unwrap();
    eprintln!("the spin kernel finished after {:?}", start.elapsed());
}
