//! Whole-network transfers of the projection: every layer's W or U uploaded at once, Z
//! and U (and the compact outputs) read back in one wait, identical to the per-layer
//! calls; the dual rescale on the GPU against its CPU twin, bit for bit; staging split past
//! its cap; and the number of GPU waits of an ADMM round, whatever the number of layers.

mod common;

use microunify::block::{BlockShape, LayerSpec};
use microunify::cpu::scale_dual::scale_dual;
use microunify::gpu::buffers::{POISON, Staging, read_ranges, storage_init};
use microunify::gpu::projection::{NetworkProjection, Tensor, WAITS_PER_ROUND};
use microunify::gpu::{Gpu, ProjectedLayer};
use microunify::layout::PackLimits;
use microunify::nets;
use rand::Rng;
use rand::rngs::SmallRng;

/// A network over several chunks (64 KiB bindings), vec4 and scalar layers, with random
/// W and U.
struct Split {
    net: NetworkProjection,
    w: Vec<Vec<f32>>,
    u: Vec<Vec<f32>>,
}

fn split(gpu: &Gpu, rng: &mut SmallRng) -> Split {
    let block = |r, c| BlockShape::new(r, c).unwrap();
    let layers = vec![
        LayerSpec::new("big", &[203, 301], block(4, 4)).unwrap(),
        LayerSpec::new("small", &[5, 7], block(2, 8)).unwrap(),
        LayerSpec::new("conv", &[64, 32, 3, 3], block(8, 8)).unwrap(),
        LayerSpec::new("odd", &[37, 13], block(3, 5)).unwrap(),
    ];
    let mode = common::selection_mode(rng, &layers, 0.5);
    let limits = PackLimits {
        max_binding_bytes: 64 << 10,
        offset_alignment: 32,
    };
    let w = layers
        .iter()
        .map(|l| common::weights(rng, l.view.len()))
        .collect();
    let u = layers
        .iter()
        .map(|l| common::weights(rng, l.view.len()))
        .collect();
    let net = NetworkProjection::with_limits(gpu, layers, mode, limits).unwrap();
    assert!(net.layout.chunks.len() >= 4, "{}", net.layout.chunks.len());
    Split { net, w, u }
}

fn bits(v: &[Vec<f32>]) -> Vec<Vec<u32>> {
    v.iter().map(|l| layer_of_bits(l)).collect()
}

fn layer_of_bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn layer_bits(o: &ProjectedLayer) -> Vec<u32> {
    o.z.iter()
        .chain(&o.u)
        .chain(&o.magnitudes)
        .map(|x| x.to_bits())
        .chain(o.signs.iter().copied())
        .chain(o.states.iter().map(|s| *s as u32))
        .collect()
}

#[test]
fn whole_network_transfers_equal_the_per_layer_ones() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(0x7a11);
    for _ in 0..4 {
        let s = split(&gpu, &mut rng);
        let net = &s.net;
        net.poison(&gpu, POISON);
        net.write_all(&gpu, Tensor::W, &s.w).unwrap();
        net.write_all(&gpu, Tensor::U, &s.u).unwrap();
        assert_eq!(bits(&net.read_all(&gpu, Tensor::W).unwrap()), bits(&s.w));
        for (l, u) in s.u.iter().enumerate() {
            let one = net.read(&gpu, Tensor::U, l).unwrap();
            assert_eq!(layer_of_bits(&one), layer_of_bits(u), "layer {l}");
        }
        net.run(&gpu).unwrap();
        let all = net.read_outputs(&gpu).unwrap();
        let zu = net.read_tensors(&gpu, &[Tensor::Z, Tensor::U]).unwrap();
        for (l, o) in all.iter().enumerate() {
            let name = &net.layout.layers[l].name;
            let one = net.read_layer(&gpu, l).unwrap();
            assert_eq!(layer_bits(o), layer_bits(&one), "{name}");
            assert_eq!(layer_of_bits(&o.z), layer_of_bits(&zu[0][l]), "{name} Z");
            assert_eq!(layer_of_bits(&o.u), layer_of_bits(&zu[1][l]), "{name} U");
        }
    }
}

#[test]
fn uploads_of_the_wrong_network_are_refused() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(3);
    let s = split(&gpu, &mut rng);
    let short = &s.w[..3];
    let e = s
        .net
        .write_all(&gpu, Tensor::W, short)
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 layers given for a network of 4"), "{e}");
    let mut w = s.w.clone();
    w[2].pop();
    let e = s
        .net
        .write_all(&gpu, Tensor::U, &w)
        .unwrap_err()
        .to_string();
    let want = format!("\"conv\": {} values", w[2].len());
    assert!(e.contains(&want), "{e}");
}

#[test]
fn the_dual_rescale_is_the_cpu_twin_bit_for_bit() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(0x5ca1e);
    let s = split(&gpu, &mut rng);
    // Normal magnitudes whose products stay normal: an adapter may flush subnormals.
    let u: Vec<Vec<f32>> =
        s.u.iter()
            .map(|l| {
                l.iter()
                    .map(|_| common::regime_value(&mut rng, ("wide", -60, 60)))
                    .collect()
            })
            .collect();
    s.net.write_all(&gpu, Tensor::U, &u).unwrap();
    let mut want = u.clone();
    // ρ doubling, ρ growing by 1.3 (rounded factors), and an arbitrary one.
    for f in [0.5f32, (1.0 / 1.3f64) as f32, 3.7] {
        s.net.scale_dual(&gpu, f).unwrap();
        want.iter_mut().for_each(|l| scale_dual(l, f));
        let got = s.net.read_all(&gpu, Tensor::U).unwrap();
        for (l, (g, w)) in bits(&got).iter().zip(bits(&want)).enumerate() {
            let first = g.iter().zip(&w).position(|(a, b)| a != b);
            assert_eq!(first, None, "factor {f}, layer {l}: first difference");
        }
    }
    // W is not touched.
    s.net.write_all(&gpu, Tensor::W, &s.w).unwrap();
    s.net.scale_dual(&gpu, 2.0).unwrap();
    assert_eq!(bits(&s.net.read_all(&gpu, Tensor::W).unwrap()), bits(&s.w));
}

#[test]
fn staging_past_its_cap_splits_over_buffers_in_one_wait() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(11);
    let data: Vec<Vec<u32>> = [300usize, 1, 0, 777, 64]
        .iter()
        .map(|&n| (0..n).map(|_| rng.random()).collect())
        .collect();
    let bufs: Vec<wgpu::Buffer> = data
        .iter()
        .map(|d| storage_init(&gpu, "staging test", d))
        .collect();
    // Whole buffers and ranges inside them, at word offsets.
    let parts: Vec<(&wgpu::Buffer, u64, u64)> = bufs
        .iter()
        .zip(&data)
        .map(|(b, d)| (b, 0, d.len() as u64 * 4))
        .chain([(&bufs[0], 40, 400), (&bufs[3], 4, 4)])
        .collect();
    let want: Vec<Vec<u32>> = read_ranges(&gpu, "staging test", &parts).unwrap();
    assert_eq!(want[0], data[0]);
    assert_eq!(want[5], data[0][10..110]);
    for cap in [1u64, 4, 6, 1000, 4096, 1 << 20] {
        let total: u64 = parts.iter().map(|p| p.2).sum();
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        let staging = Staging::record_capped(&gpu, &mut encoder, &parts, cap);
        let word_cap = (cap / 4).max(1) * 4;
        assert_eq!(
            staging.buffers() as u64,
            total.div_ceil(word_cap),
            "cap {cap}"
        );
        let index = gpu.submit("staging test", encoder.finish()).unwrap();
        let waits = gpu.waits();
        let got: Vec<Vec<u32>> = staging.finish(&gpu, "staging test", index).unwrap();
        assert_eq!(gpu.waits() - waits, 1, "cap {cap}");
        assert_eq!(got, want, "cap {cap}");
    }
}

/// An ADMM round driven the way src/train/pipeline.rs drives it: W uploaded, projected,
/// U rescaled, Z and U read. Returns the waits it took.
fn round(gpu: &Gpu, net: &NetworkProjection, w: &[Vec<f32>], rescale: Option<f32>) -> u64 {
    let before = gpu.waits();
    net.write_all(gpu, Tensor::W, w).unwrap();
    net.run(gpu).unwrap();
    if let Some(f) = rescale {
        net.scale_dual(gpu, f).unwrap();
    }
    let zu = net.read_tensors(gpu, &[Tensor::Z, Tensor::U]).unwrap();
    assert_eq!(zu.len(), 2);
    assert!(zu.iter().all(|t| t.len() == w.len()));
    gpu.waits() - before
}

fn round_waits(gpu: &Gpu, layers: Vec<LayerSpec>) -> u64 {
    let mode = microunify::cpu::projection::per_layer(&layers, 0.4, 0.3).unwrap();
    let net = NetworkProjection::new(gpu, layers, mode).unwrap();
    let w: Vec<Vec<f32>> = net
        .layout
        .layers
        .iter()
        .enumerate()
        .map(|(l, s)| microunify::bench::random_weights(l as u64, s.view.len()))
        .collect();
    net.zero_dual(gpu).unwrap();
    let waits = [round(gpu, &net, &w, None), round(gpu, &net, &w, Some(0.5))];
    assert_eq!(waits[0], waits[1], "with and without the rescale");
    waits[0]
}

#[test]
fn an_admm_round_waits_the_same_few_times_for_any_number_of_layers() {
    let Some(gpu) = common::gpu() else { return };
    if gpu.stepwise() {
        eprintln!("stepwise projection: a wait per dispatch; nothing to count");
        return;
    }
    let lenet = nets::lenet5().specs(BlockShape::default()).unwrap();
    let many: Vec<LayerSpec> = (0..60)
        .map(|i| LayerSpec::new(format!("fc{i}"), &[24 + i, 40], BlockShape::default()).unwrap())
        .collect();
    for (name, layers) in [("lenet5", lenet), ("60 layers", many)] {
        let n = layers.len();
        let waits = round_waits(&gpu, layers);
        eprintln!("{name} ({n} layers): {waits} waits per round");
        assert_eq!(waits, WAITS_PER_ROUND, "{name}");
    }
}

/// The per-layer round the pipeline used to drive: W written and Z and U read layer by
/// layer, a wait per read, U rescaled on the host and written back. Returns the waits it
/// took.
fn per_layer_round(
    gpu: &Gpu,
    net: &NetworkProjection,
    w: &[Vec<f32>],
    rescale: Option<f32>,
) -> u64 {
    let before = gpu.waits();
    for (l, w) in w.iter().enumerate() {
        net.write(gpu, Tensor::W, l, w).unwrap();
    }
    net.run(gpu).unwrap();
    for l in 0..w.len() {
        net.read(gpu, Tensor::Z, l).unwrap();
        let mut u = net.read(gpu, Tensor::U, l).unwrap();
        if let Some(f) = rescale {
            scale_dual(&mut u, f);
            net.write(gpu, Tensor::U, l, &u).unwrap();
        }
    }
    gpu.waits() - before
}

/// Waits and median wall time of a round, per layer and whole-network, on the shapes of
/// `microunify bench projection` (a measurement for the record, not a check: run with
/// `--ignored --nocapture`).
#[test]
#[ignore]
fn round_waits_and_times_on_real_shapes() {
    let Some(gpu) = common::gpu() else { return };
    for shapes in [nets::lenet5(), nets::bert_base_encoder()] {
        let layers = shapes.specs(BlockShape::default()).unwrap();
        let n = layers.len();
        let mode = microunify::cpu::projection::per_layer(&layers, 0.4, 0.3).unwrap();
        let net = NetworkProjection::new(&gpu, layers, mode).unwrap();
        let w: Vec<Vec<f32>> = net
            .layout
            .layers
            .iter()
            .enumerate()
            .map(|(l, s)| microunify::bench::random_weights(l as u64, s.view.len()))
            .collect();
        net.zero_dual(&gpu).unwrap();
        // Interleaved, medians of five: other work on the machine drifts.
        let timed = |f: &dyn Fn() -> u64| {
            let start = std::time::Instant::now();
            let waits = f();
            (waits, start.elapsed().as_secs_f64() * 1e3)
        };
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        for rescale in [None, Some(0.5)] {
            let (mut old, mut new) = ((0, Vec::new()), (0, Vec::new()));
            for _ in 0..5 {
                let (waits, ms) = timed(&|| per_layer_round(&gpu, &net, &w, rescale));
                (old.0, old.1) = (waits, [old.1, vec![ms]].concat());
                let (waits, ms) = timed(&|| round(&gpu, &net, &w, rescale));
                (new.0, new.1) = (waits, [new.1, vec![ms]].concat());
            }
            eprintln!(
                "{} ({n} layers, {} weights, rescale {rescale:?}) on {:?}: per layer {} waits, {:.1} ms; whole network {} waits, {:.1} ms",
                shapes.name,
                shapes.params(),
                &*gpu,
                old.0,
                median(old.1),
                new.0,
                median(new.1),
            );
        }
    }
}
