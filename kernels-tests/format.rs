//! The compressed file format (src/format.rs): round trips of awkward shapes, the size on
//! disk against the bits docs/METHOD.md §1 counts, decompression back to the original
//! names, shapes and dtypes, and every kind of corrupted or inconsistent file refused with
//! an error naming the tensor and the problem, never a panic. The GPU test checks
//! `ProjectedLayer::compress` against `CompressedMatrix::from_dense`.

mod common;

use microunify::block::{BlockGrid, ConvLayout, LayerSpec, StateMap, to_gemm};
use microunify::compressed::CompressedMatrix;
use microunify::cpu::projection as cpu;
use microunify::format::input::{ProjectInput, Selection};
use microunify::format::{
    COMPACT, CompressedFile, CompressedLayer, LAYERS_KEY, RawTensor, VERSION_KEY, reseal,
};
use microunify::gpu::projection::{NetworkProjection, Tensor};
use microunify::{BlockShape, BlockState, Error, SelectionMode};
use rand::Rng;
use rand::rngs::SmallRng;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};

/// The CPU reference's compressed form of `gemm` (row-major in the GEMM view of `spec`).
fn project(spec: &LayerSpec, gemm: &[f32], r: (f64, f64)) -> CompressedMatrix {
    let mode = cpu::per_layer(std::slice::from_ref(spec), r.0, r.1).unwrap();
    let p = cpu::project(std::slice::from_ref(spec), &[gemm], &mode)
        .unwrap()
        .remove(0);
    CompressedMatrix::from_dense(spec.view, spec.block, &p.z, &p.states).unwrap()
}

/// A compressed layer projected by the CPU reference from seeded random weights.
fn layer(
    name: &str,
    shape: &[usize],
    block: &str,
    layout: ConvLayout,
    r: (f64, f64),
    seed: u64,
) -> CompressedLayer {
    let block: BlockShape = block.parse().unwrap();
    let n: usize = shape.iter().product();
    let w = common::weights(&mut common::rng(seed), n);
    let spec = LayerSpec::new(name, shape, block).unwrap();
    let m = project(&spec, &to_gemm(&w, shape, layout), r);
    CompressedLayer::new(name, shape, layout, m).unwrap()
}

fn raw(dtype: Dtype, shape: &[usize], data: Vec<u8>) -> RawTensor {
    RawTensor {
        dtype,
        shape: shape.to_vec(),
        data,
    }
}

/// Ragged linear and conv layers in both layouts (one recorded as F16), all-dense,
/// all-unified and all-pruned layers, and pass-through tensors of several dtypes (one
/// empty).
fn sample() -> CompressedFile {
    let cm = ConvLayout::ChannelMajor;
    let mut f = CompressedFile {
        layers: vec![
            layer("fc", &[13, 22], "4x4", cm, (0.3, 0.4), 1),
            layer(
                "conv.weight",
                &[6, 3, 3, 3],
                "2x8",
                ConvLayout::PositionMajor,
                (0.2, 0.5),
                2,
            ),
            layer("conv2", &[5, 4, 3, 3], "8x8", cm, (0.0, 0.5), 3)
                .with_dtype(Dtype::F16)
                .unwrap(),
            layer("edge", &[5, 6], "4x4", cm, (0.0, 0.0), 4),
            layer("edgeu", &[5, 6], "4x4", cm, (0.0, 1.0), 5),
            layer("gone", &[3, 9], "1x8", cm, (1.0, 0.0), 6),
        ],
        ..Default::default()
    };
    let bias: Vec<u8> = (0..13)
        .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
        .collect();
    f.passthrough
        .insert("fc.bias".into(), raw(Dtype::F32, &[13], bias));
    f.passthrough
        .insert("steps".into(), raw(Dtype::I64, &[2], (0..16).collect()));
    f.passthrough.insert(
        "emb".into(),
        raw(Dtype::BF16, &[2, 3], (100..112).collect()),
    );
    f.passthrough
        .insert("empty".into(), raw(Dtype::F32, &[0, 4], vec![]));
    f.metadata.insert("format".into(), "pt".into());
    f
}

/// The message of an `Error::Format` (anything else, or success, fails the test).
fn format_error(bytes: &[u8], what: &str) -> String {
    match CompressedFile::from_bytes(bytes) {
        Err(e @ Error::Format { .. }) => e.to_string(),
        Err(e) => panic!("{what}: expected a format error, got {e}"),
        Ok(_) => panic!("{what}: accepted"),
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The compact tensors of `l` as the format's table describes them, computed here from the
/// layer's dense reconstruction alone: the state map, the dense blocks' weights and the
/// unified blocks' sign bits block after block over each block's own extent.
fn expected_compact(l: &CompressedLayer) -> [(Dtype, Vec<usize>, Vec<u8>); 4] {
    let m = &l.matrix;
    let gemm = to_gemm(&l.dense(), &l.shape, l.layout);
    let grid = BlockGrid::new(m.view(), m.block());
    let mut states = vec![0u8; m.states().len().div_ceil(4)];
    let (mut values, mut magnitudes, mut signs) = (Vec::new(), Vec::new(), Vec::<bool>::new());
    for (b, s) in m.states().iter().enumerate() {
        states[b / 4] |= (*s as u8) << (2 * (b % 4));
        let w: Vec<f32> = grid
            .extent(b)
            .indices(m.view().cols)
            .map(|i| gemm[i])
            .collect();
        match s {
            BlockState::Dense => values.extend(w),
            BlockState::Unified => {
                magnitudes.push(w[0].abs());
                signs.extend(w.iter().map(|v| *v < 0.0));
            }
            BlockState::Pruned => {}
        }
    }
    let mut packed = vec![0u8; signs.len().div_ceil(8)];
    for (k, neg) in signs.iter().enumerate() {
        packed[k / 8] |= u8::from(*neg) << (k % 8);
    }
    let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    [
        (Dtype::U8, vec![states.len()], states),
        (Dtype::F32, vec![values.len()], le(&values)),
        (Dtype::F32, vec![magnitudes.len()], le(&magnitudes)),
        (Dtype::U8, vec![packed.len()], packed),
    ]
}

#[test]
fn round_trip_is_exact_and_the_file_holds_only_the_compact_form() {
    let f = sample();
    let bytes = f.to_bytes().unwrap();
    let back = CompressedFile::from_bytes(&bytes).unwrap();
    assert_eq!(back, f);
    for (a, b) in back.layers.iter().zip(&f.layers) {
        assert_eq!(bits(&a.dense()), bits(&b.dense()), "{}", a.name);
    }
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for l in &f.layers {
        assert!(
            st.tensor(&l.name).is_err(),
            "{}: a dense tensor is stored",
            l.name
        );
        for (suffix, (dtype, shape, data)) in COMPACT.iter().zip(expected_compact(l)) {
            let name = format!("{}.mu.{suffix}", l.name);
            let t = st.tensor(&name).unwrap();
            assert_eq!(
                (t.dtype(), t.shape(), t.data()),
                (dtype, &shape[..], &data[..]),
                "{name}"
            );
        }
    }
    let layer_tensors = COMPACT.len() * f.layers.len();
    assert_eq!(st.len(), layer_tensors + f.passthrough.len());
    for (name, t) in &f.passthrough {
        let v = st.tensor(name).unwrap();
        assert_eq!(
            (v.dtype(), v.shape(), v.data()),
            (t.dtype, &t.shape[..], &t.data[..]),
            "{name}"
        );
    }
}

/// A random block side: mostly small and ragged, sometimes the extremes.
fn random_side(rng: &mut SmallRng) -> usize {
    match rng.random_range(0..6) {
        0 => 1,
        1 => 32,
        _ => rng.random_range(1..=9),
    }
}

#[test]
fn awkward_shapes_round_trip_in_every_state_mix() {
    let mut rng = common::rng(17);
    let fixed: [&[usize]; 9] = [
        &[1, 1],
        &[1, 97],
        &[97, 1],
        &[7, 13],
        &[31, 37],
        &[2, 1, 1, 1],
        &[3, 5, 1, 7],
        &[11, 3, 3, 3],
        &[33, 70],
    ];
    let ratios = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (0.3, 0.4), (0.5, 0.5)];
    let dtypes = [Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::F64];
    // Which of all-dense, all-unified, all-pruned and all-three layers occurred.
    let mut mixes = [false; 4];
    for round in 0..40 {
        let mut f = CompressedFile::default();
        for (i, shape) in fixed.iter().enumerate() {
            let shape = if round == 0 {
                shape.to_vec()
            } else if rng.random_bool(0.5) {
                vec![rng.random_range(1..60), rng.random_range(1..60)]
            } else {
                (0..4).map(|_| rng.random_range(1..6)).collect()
            };
            let block = BlockShape::new(random_side(&mut rng), random_side(&mut rng)).unwrap();
            let layout = if rng.random_bool(0.5) {
                ConvLayout::PositionMajor
            } else {
                ConvLayout::ChannelMajor
            };
            let layout = if shape.len() == 4 {
                layout
            } else {
                ConvLayout::ChannelMajor
            };
            let r = ratios[rng.random_range(0..ratios.len())];
            let name = format!("l{i}.weight");
            let spec = LayerSpec::new(&name, &shape, block).unwrap();
            let n = spec.view.len();
            let w = common::weights(&mut rng, n);
            let m = project(&spec, &to_gemm(&w, &shape, layout), r);
            let dtype = dtypes[rng.random_range(0..dtypes.len())];
            let c = m.counts();
            let total = c.iter().sum::<usize>();
            if let Some(k) = c.iter().position(|&x| x == total) {
                mixes[k] = true;
            }
            mixes[3] |= c.iter().all(|&x| x > 0);
            f.layers.push(
                CompressedLayer::new(name, &shape, layout, m)
                    .unwrap()
                    .with_dtype(dtype)
                    .unwrap(),
            );
        }
        let back = CompressedFile::from_bytes(&f.to_bytes().unwrap()).unwrap();
        assert_eq!(back, f, "round {round}");
        for (a, b) in back.layers.iter().zip(&f.layers) {
            assert_eq!(
                bits(&a.dense()),
                bits(&b.dense()),
                "round {round}: {}",
                a.name
            );
        }
    }
    assert_eq!(
        mixes, [true; 4],
        "all dense, all unified, all pruned, all three"
    );
}

/// Bytes of the safetensors header (its length field included).
fn header_bytes(bytes: &[u8]) -> usize {
    8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

/// The file of `f` against what it must come to: the bits docs/METHOD.md §1 counts, the
/// pass-through tensors' bytes and the header. Returns (file, bound, dense size).
fn size_against_bits(f: &CompressedFile) -> (usize, f64, u64) {
    let bytes = f.to_bytes().unwrap();
    let counted: u64 = f.layers.iter().map(|l| l.matrix.bits()).sum();
    let passthrough: usize = f.passthrough.values().map(|t| t.data.len()).sum();
    let bound = counted as f64 / 8.0 + passthrough as f64 + header_bytes(&bytes) as f64;
    (bytes.len(), bound, f.dense_size())
}

/// LeNet-5's weight shapes with the demo's per-layer ratios (docs/METHOD.md; fc1 mostly
/// pruned) and its biases passing through.
fn lenet5() -> CompressedFile {
    let cm = ConvLayout::ChannelMajor;
    let mut f = CompressedFile::default();
    let layers: [(&str, &[usize], (f64, f64)); 4] = [
        ("conv1", &[20, 1, 5, 5], (0.2, 0.4)),
        ("conv2", &[50, 20, 5, 5], (0.7, 0.2)),
        ("fc1", &[500, 800], (0.95, 0.04)),
        ("fc2", &[10, 500], (0.5, 0.3)),
    ];
    for (i, (name, shape, r)) in layers.into_iter().enumerate() {
        let w = format!("{name}.weight");
        f.layers.push(layer(&w, shape, "4x4", cm, r, 40 + i as u64));
        let bias: Vec<u8> = (0..shape[0])
            .flat_map(|j| (j as f32).to_le_bytes())
            .collect();
        f.passthrough
            .insert(format!("{name}.bias"), raw(Dtype::F32, &[shape[0]], bias));
    }
    f
}

#[test]
fn the_file_is_the_counted_bits_and_far_smaller_than_the_model() {
    let f = lenet5();
    let (file, bound, dense) = size_against_bits(&f);
    eprintln!(
        "LeNet-5: file {file} bytes, counted bits/8 + pass-through + header {bound:.0}, dense {dense} bytes ({:.2}x)",
        dense as f64 / file as f64
    );
    assert!(
        file as f64 <= 1.05 * bound,
        "{file} bytes against {bound:.0}"
    );
    // The demo's ratios store well under a tenth of the dense model.
    assert!(
        file as u64 * 10 < dense,
        "{file} bytes against {dense} dense"
    );
    // The header is small beside the data: names, offsets and the layer list only.
    assert!(header_bytes(&f.to_bytes().unwrap()) * 20 < file, "header");

    // Ragged shapes, where every edge block is smaller than its tile and every tensor ends
    // in a partial byte: the bound holds all the same, edge padding is not stored.
    let cm = ConvLayout::ChannelMajor;
    let ragged = CompressedFile {
        layers: vec![
            layer("a", &[7, 13], "4x4", cm, (0.3, 0.4), 1),
            layer("b", &[33, 70], "32x32", cm, (0.2, 0.3), 2),
            layer(
                "c",
                &[6, 3, 3, 3],
                "2x8",
                ConvLayout::PositionMajor,
                (0.0, 0.5),
                3,
            ),
            layer("d", &[1, 97], "1x8", cm, (0.1, 0.6), 4),
            layer("e", &[97, 5], "3x5", cm, (0.0, 0.0), 5),
            layer("f", &[61, 67], "8x8", cm, (0.5, 0.5), 6),
        ],
        ..Default::default()
    };
    let (file, bound, _) = size_against_bits(&ragged);
    eprintln!("ragged: file {file} bytes, bound {bound:.0}");
    assert!(
        file as f64 <= 1.05 * bound,
        "{file} bytes against {bound:.0}"
    );
    // Beyond the header, the data is the counted bits rounded up to whole bytes per tensor.
    let bytes = ragged.to_bytes().unwrap();
    let counted: u64 = ragged.layers.iter().map(|l| l.matrix.bits()).sum();
    let data = (bytes.len() - header_bytes(&bytes)) as u64;
    let slack = 2 * ragged.layers.len() as u64;
    assert!(
        data >= counted / 8 && data <= counted / 8 + slack,
        "{data} against {}",
        counted / 8
    );
}

#[test]
fn files_are_written_atomically() {
    let dir = std::env::temp_dir().join(format!("microunify-format-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    let f = sample();
    f.write(&path).unwrap();
    assert_eq!(CompressedFile::read(&path).unwrap(), f);
    // Writing onto a folder fails at the rename: the error names the path, the old content
    // stays, and no temporary file is left behind.
    let blocker = dir.join("taken");
    std::fs::create_dir_all(blocker.join("inside")).unwrap();
    let e = f.write(&blocker).unwrap_err().to_string();
    assert!(e.contains("taken"), "{e}");
    // A layer the reader would refuse is refused on writing, the old file left as it was.
    let before = std::fs::read(&path).unwrap();
    let mut bad = f.clone();
    let m = &bad.layers[0].matrix;
    let mut magnitudes = m.magnitudes().to_vec();
    magnitudes[0] = 1e30;
    bad.layers[0].matrix = CompressedMatrix::new(
        m.view(),
        m.block(),
        m.states().to_vec(),
        m.row_ptr().to_vec(),
        m.entries().to_vec(),
        m.values().to_vec(),
        magnitudes,
        m.signs().to_vec(),
    )
    .unwrap();
    bad.layers[0].dtype = Dtype::F16;
    let e = bad.write(&path).unwrap_err().to_string();
    assert!(
        e.contains("\"fc.mu.magnitudes\"") && e.contains("does not fit"),
        "{e}"
    );
    let mut clash = f.clone();
    let t = clash.passthrough["fc.bias"].clone();
    clash.passthrough.insert("fc.mu.values".into(), t);
    let e = clash.write(&path).unwrap_err().to_string();
    assert!(
        e.contains("\"fc.mu.values\"") && e.contains("own compact tensor \"values\""),
        "{e}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert!(matches!(
        CompressedFile::read(&dir.join("absent")),
        Err(Error::Io { .. })
    ));
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample().to_bytes().unwrap();
    for cut in 0..bytes.len() {
        let msg = format_error(&bytes[..cut], &format!("cut at {cut}"));
        assert!(
            msg.contains("<header>") || msg.contains("offset"),
            "cut at {cut}: {msg}"
        );
    }
    // Trailing garbage is refused too.
    let mut long = bytes.clone();
    long.push(0);
    format_error(&long, "one byte appended");
}

#[test]
fn flipped_bytes_never_pass_unnoticed() {
    let f = sample();
    let bytes = f.to_bytes().unwrap();
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let (mut refused, mut accepted) = (0, 0);
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0xA5;
        match CompressedFile::from_bytes(&b) {
            Err(Error::Format { tensor, problem }) => {
                assert!(!tensor.is_empty() && !problem.is_empty(), "byte {i}");
                refused += 1;
            }
            Err(e) => panic!("byte {i}: unexpected error kind {e}"),
            // Only pass-through data or free metadata may change without an error, and the
            // compressed layers must then be exactly the ones written.
            Ok(back) => {
                assert_eq!(back.layers, f.layers, "byte {i} changed a layer unnoticed");
                accepted += 1;
            }
        }
    }
    assert!(
        refused > header_end,
        "{refused} refused, {accepted} accepted"
    );
}

/// Every tensor of `bytes`, editable, and written back with `safetensors::serialize`.
type Tensors = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

/// `bytes` changed by `change`, its layers' checksums left as they were.
fn edit_unsealed(
    bytes: &[u8],
    change: impl FnOnce(&mut Tensors, &mut HashMap<String, String>),
) -> Vec<u8> {
    let (_, header) = SafeTensors::read_metadata(bytes).unwrap();
    let st = SafeTensors::deserialize(bytes).unwrap();
    let mut t: Tensors = st
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                (v.dtype(), v.shape().to_vec(), v.data().to_vec()),
            )
        })
        .collect();
    let mut meta = header.metadata().clone().unwrap_or_default();
    change(&mut t, &mut meta);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = t
        .iter()
        .map(|(n, (d, s, b))| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, Some(meta)).unwrap()
}

/// `bytes` changed by `change` and resealed, so that the change meets the checks behind
/// the checksum (as a writer that computes checksums but gets the rest wrong would).
fn edit(bytes: &[u8], change: impl FnOnce(&mut Tensors, &mut HashMap<String, String>)) -> Vec<u8> {
    let b = edit_unsealed(bytes, change);
    reseal(&b).unwrap_or(b)
}

/// Sets element `i` (4-byte) of tensor `name`.
fn set4(t: &mut Tensors, name: &str, i: usize, bytes: [u8; 4]) {
    t.get_mut(name).unwrap().2[4 * i..4 * i + 4].copy_from_slice(&bytes);
}

fn expect(
    bytes: &[u8],
    change: impl FnOnce(&mut Tensors, &mut HashMap<String, String>),
    tensor: &str,
    problem: &str,
) {
    let msg = format_error(&edit(bytes, change), problem);
    assert!(
        msg.contains(&format!("{tensor:?}")),
        "expected tensor {tensor:?} named in: {msg}"
    );
    assert!(msg.contains(problem), "expected {problem:?} in: {msg}");
}

/// Replaces the first `from` in the layer list by `to`.
fn in_layers(m: &mut HashMap<String, String>, from: &str, to: &str) {
    assert!(
        m[LAYERS_KEY].contains(from),
        "{from} not in {}",
        m[LAYERS_KEY]
    );
    let s = m[LAYERS_KEY].replacen(from, to, 1);
    m.insert(LAYERS_KEY.into(), s);
}

#[test]
fn each_inconsistency_is_named() {
    let f = sample();
    let b = f.to_bytes().unwrap();
    let fc = f.layer("fc").unwrap();
    assert!(fc.matrix.counts()[1] > 0);

    // Metadata.
    expect(
        &b,
        |_, m| _ = m.insert(VERSION_KEY.into(), "3".into()),
        "__metadata__",
        "format version 3 is not known",
    );
    expect(
        &b,
        |_, m| _ = m.insert(VERSION_KEY.into(), "one".into()),
        "__metadata__",
        "is not a plain version number",
    );
    expect(
        &b,
        |_, m| _ = m.remove(VERSION_KEY),
        "__metadata__",
        "not a microunify compressed file",
    );
    expect(
        &b,
        |_, m| _ = m.insert(LAYERS_KEY.into(), "[{".into()),
        "__metadata__",
        "not a valid layer list",
    );
    expect(
        &b,
        |_, m| _ = m.insert("microunify.extra".into(), "1".into()),
        "__metadata__",
        "unknown key",
    );
    let c = fc.matrix.counts();
    let from = format!("\"counts\":[{},{},{}]", c[0], c[1], c[2]);
    let to = format!("\"counts\":[{},{},{}]", c[0] + 1, c[1], c[2] - 1);
    expect(
        &b,
        |_, m| in_layers(m, &from, &to),
        "fc.mu.states",
        "but the metadata says",
    );
    expect(
        &b,
        |_, m| in_layers(m, "\"name\":\"edge\"", "\"name\":\"fc\""),
        "fc",
        "listed twice",
    );
    expect(
        &b,
        |_, m| in_layers(m, "\"block\":[4,4]", "\"block\":[0,4]"),
        "fc",
        "invalid block shape",
    );
    expect(
        &b,
        |_, m| in_layers(m, "\"view\":[13,22]", "\"view\":[22,13]"),
        "fc",
        "metadata: GEMM view",
    );
    expect(
        &b,
        |_, m| in_layers(m, "\"dtype\":\"F32\"", "\"dtype\":\"I64\""),
        "fc",
        "dtype I64 is not one a compressed layer can stand for (F32/F16/BF16/F64)",
    );
    expect(
        &b,
        |_, m| in_layers(m, "\"dtype\":\"F32\"", "\"dtype\":\"F33\""),
        "__metadata__",
        "not a valid layer list",
    );
    // Shapes whose element count overflows, and one far larger than the file: refused
    // before anything of that size is allocated.
    for big in ["[1,4294967296,4294967296,2]", "[0,4294967296,4294967296,2]"] {
        expect(
            &b,
            |_, m| in_layers(m, "\"shape\":[13,22]", &format!("\"shape\":{big}")),
            "fc",
            "more elements than a usize counts",
        );
    }
    expect(
        &b,
        |_, m| {
            in_layers(m, "\"shape\":[13,22]", "\"shape\":[1048576,1048576]");
            in_layers(m, "\"view\":[13,22]", "\"view\":[1048576,1048576]");
        },
        "fc.mu.states",
        "expected [17179869184] (68719476736 blocks, 4 a byte)",
    );

    // Dtypes, shapes, presence, names.
    expect(
        &b,
        |t, _| t.get_mut("fc.mu.values").unwrap().0 = Dtype::U32,
        "fc.mu.values",
        "dtype U32, expected F32",
    );
    let nd: usize = {
        let g = fc.matrix.grid();
        (fc.matrix.states().iter().enumerate())
            .filter(|(_, s)| **s == BlockState::Dense)
            .map(|(b, _)| g.extent(b).len())
            .sum()
    };
    expect(
        &b,
        |t, _| {
            let v = t.get_mut("fc.mu.values").unwrap();
            v.1 = vec![nd - 1];
            v.2.truncate(4 * (nd - 1));
        },
        "fc.mu.values",
        &format!(
            "expected [{nd}] (the state map's {} dense blocks hold {nd} weights)",
            c[0]
        ),
    );
    expect(
        &b,
        |t, _| {
            let s = t.get_mut("fc.mu.signs").unwrap();
            s.1 = vec![0];
            s.2.clear();
        },
        "fc.mu.signs",
        "weights of the unified blocks, 8 a byte",
    );
    expect(
        &b,
        |t, _| _ = t.remove("fc.mu.states"),
        "fc.mu.states",
        "missing from the file",
    );
    expect(
        &b,
        |t, _| _ = t.insert("fc.mu.extra".into(), (Dtype::U8, vec![1], vec![0])),
        "fc.mu.extra",
        "unknown compact tensor",
    );
    // The layer's own name belongs to decompression's output, not to a stored tensor
    // (a version-1 file's dense copy, say).
    expect(
        &b,
        |t, _| _ = t.insert("fc".into(), (Dtype::F32, vec![13, 22], vec![0; 4 * 286])),
        "fc",
        "has the name of a compressed layer",
    );

    // The state map.
    expect(
        &b,
        |t, _| t.get_mut("fc.mu.states").unwrap().2[0] |= 3,
        "fc.mu.states",
        "state code 3",
    );
    // conv2 has 5 blocks: bits 2..8 of its second state byte are padding.
    expect(
        &b,
        |t, _| t.get_mut("conv2.mu.states").unwrap().2[1] |= 0x80,
        "conv2.mu.states",
        "padding bits",
    );

    // Values, magnitudes, signs.
    expect(
        &b,
        |t, _| set4(t, "fc.mu.magnitudes", 0, f32::NAN.to_le_bytes()),
        "fc.mu.magnitudes",
        "magnitude NaN of unified block 0",
    );
    expect(
        &b,
        |t, _| set4(t, "fc.mu.magnitudes", 0, (-1.0f32).to_le_bytes()),
        "fc.mu.magnitudes",
        "not a finite value >= +0",
    );
    // "edge" (5x6 in 4x4, all dense) holds 16, 8, 4 and 2 weights: index 29 is the last
    // block's last.
    expect(
        &b,
        |t, _| set4(t, "edge.mu.values", 29, f32::INFINITY.to_le_bytes()),
        "edge.mu.values",
        "non-finite value +inf at flat index 29 (dense block 3, block 3)",
    );
    // "edgeu" is all unified: 30 sign bits, so the last 2 of its 4 bytes are padding.
    expect(
        &b,
        |t, _| t.get_mut("edgeu.mu.signs").unwrap().2[3] |= 0x40,
        "edgeu.mu.signs",
        "padding bits after the last sign bit",
    );
    // conv2 stands for an F16 tensor: a weight beyond F16's range could not go back.
    let dense = f.layer("conv2").unwrap().matrix.counts()[0];
    assert!(dense > 0);
    expect(
        &b,
        |t, _| set4(t, "conv2.mu.values", 0, 70000f32.to_le_bytes()),
        "conv2.mu.values",
        "value 70000 at flat index 0 (dense block 0, block ",
    );
    expect(
        &b,
        |t, _| set4(t, "conv2.mu.magnitudes", 0, 1e6f32.to_le_bytes()),
        "conv2.mu.magnitudes",
        "magnitude 1000000 of unified block 0 does not fit the layer's dtype F16",
    );
}

#[test]
fn damage_behind_consistent_sizes_is_caught_by_the_checksum() {
    let f = sample();
    let b = f.to_bytes().unwrap();
    let damaged = |change: fn(&mut Tensors, &mut HashMap<String, String>)| {
        let msg = format_error(&edit_unsealed(&b, change), "damage");
        assert!(
            msg.contains("tensor \"fc\"") && msg.contains("the file is damaged"),
            "{msg}"
        );
    };
    // A weight, a sign, a magnitude: each a valid value, so only the checksum can tell.
    damaged(|t, _| set4(t, "fc.mu.values", 2, 0.125f32.to_le_bytes()));
    damaged(|t, _| t.get_mut("fc.mu.signs").unwrap().2[0] ^= 1);
    damaged(|t, _| set4(t, "fc.mu.magnitudes", 0, 0.5f32.to_le_bytes()));
    // The layout, which changes the dense tensor's order but no size.
    damaged(|_, m| {
        in_layers(
            m,
            "\"layout\":\"channel-major\"",
            "\"layout\":\"position-major\"",
        )
    });
    damaged(|_, m| in_layers(m, "\"sha256\":\"", "\"sha256\":\"0"));
    // The same changes resealed are read, and are what they say.
    let sealed = edit(&b, |t, _| {
        set4(t, "fc.mu.values", 2, 0.125f32.to_le_bytes())
    });
    let back = CompressedFile::from_bytes(&sealed).unwrap();
    let (was, now) = (
        f.layer("fc").unwrap().dense(),
        back.layer("fc").unwrap().dense(),
    );
    let changed: Vec<f32> = (was.iter().zip(&now))
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .map(|(_, b)| *b)
        .collect();
    assert_eq!(changed, [0.125]);
}

#[test]
fn non_finite_values_are_named_by_kind_and_index() {
    let f = sample();
    let b = f.to_bytes().unwrap();
    for (v, word) in [
        (f32::INFINITY, "+inf"),
        (f32::NEG_INFINITY, "-inf"),
        (f32::NAN, "NaN"),
    ] {
        let bits = v.to_le_bytes();
        expect(
            &b,
            |t, _| set4(t, "fc.mu.values", 3, bits),
            "fc.mu.values",
            &format!("non-finite value {word} at flat index 3"),
        );
        expect(
            &b,
            |t, _| set4(t, "fc.mu.magnitudes", 1, bits),
            "fc.mu.magnitudes",
            &format!("magnitude {word} of unified block 1"),
        );
    }
    // A magnitude is never negative, not even -0.
    expect(
        &b,
        |t, _| set4(t, "fc.mu.magnitudes", 0, (-0.0f32).to_le_bytes()),
        "fc.mu.magnitudes",
        "magnitude -0 of unified block 0",
    );
}

#[test]
fn gpu_projection_builds_the_same_matrix_as_from_dense() {
    let Some(gpu) = common::gpu() else { return };
    let shapes: [(&str, &[usize], &str); 7] = [
        ("a", &[13, 22], "4x4"),
        ("b", &[7, 13], "3x5"),
        ("c", &[9, 17], "8x8"),
        ("d", &[6, 3, 3, 3], "2x8"),
        ("e", &[3, 10], "1x8"),
        ("f", &[33, 70], "32x32"),
        ("g", &[40, 50], "16x16"),
    ];
    let specs: Vec<LayerSpec> = shapes
        .iter()
        .map(|(n, s, b)| LayerSpec::new(*n, s, b.parse().unwrap()).unwrap())
        .collect();
    let mut rng = common::rng(7);
    let w: Vec<Vec<f32>> = specs
        .iter()
        .map(|s| common::weights(&mut rng, s.view.len()))
        .collect();
    for (prune, unify) in [(0.3, 0.4), (0.0, 1.0), (0.0, 0.0)] {
        let mode = cpu::per_layer(&specs, prune, unify).unwrap();
        assert!(matches!(mode, SelectionMode::PerLayer(_)));
        let net = NetworkProjection::new(&gpu, specs.clone(), mode).unwrap();
        for (l, w) in w.iter().enumerate() {
            net.write(&gpu, Tensor::W, l, w).unwrap();
        }
        net.zero_dual(&gpu).unwrap();
        net.run(&gpu).unwrap();
        let mut file = CompressedFile::default();
        for (l, (spec, (_, shape, _))) in specs.iter().zip(&shapes).enumerate() {
            let p = net.read_layer(&gpu, l).unwrap();
            let a = p.compress(spec).unwrap();
            let b = CompressedMatrix::from_dense(spec.view, spec.block, &p.z, &p.states).unwrap();
            assert_eq!(a, b, "layer {} ({prune}, {unify})", spec.name);
            assert_eq!(a.to_dense(), p.z, "layer {}", spec.name);
            file.layers.push(
                CompressedLayer::new(&spec.name, shape, ConvLayout::ChannelMajor, a).unwrap(),
            );
        }
        let back = CompressedFile::from_bytes(&file.to_bytes().unwrap()).unwrap();
        assert_eq!(back, file);
    }
}

/// The header JSON of `bytes` as text, rewritten by `change`, with the data after it as it
/// was (so offsets keep pointing where they pointed).
fn with_header(bytes: &[u8], change: impl FnOnce(String) -> String) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let text = std::str::from_utf8(&bytes[8..8 + n]).unwrap().trim_end();
    let mut h = change(text.to_string()).into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

/// The header as a JSON value, changed by `change` (serde_json sorts its keys).
fn with_header_value(bytes: &[u8], change: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    with_header(bytes, |text| {
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        change(&mut v);
        v.to_string()
    })
}

/// The error of `bytes` must name `tensor` and contain every one of `parts`.
fn refused(bytes: &[u8], tensor: &str, parts: &[&str]) {
    let msg = format_error(bytes, parts[0]);
    assert!(
        msg.contains(&format!("tensor {tensor:?}")),
        "expected tensor {tensor:?} named in: {msg}"
    );
    for p in parts {
        assert!(msg.contains(p), "expected {p:?} in: {msg}");
    }
}

#[test]
fn compact_tensors_of_unlisted_layers_are_refused() {
    let f = sample();
    let b = f.to_bytes().unwrap();
    // The whole list emptied: every compact tensor is an orphan.
    let msg = format_error(
        &edit(&b, |_, m| _ = m.insert(LAYERS_KEY.into(), "[]".into())),
        "emptied layer list",
    );
    assert!(
        msg.contains(".mu.") && msg.contains("which microunify.layers does not list"),
        "{msg}"
    );
    // One layer taken off the list: its dense tensor would be a fine pass-through tensor,
    // its compact tensors are not.
    let without_fc = edit(&b, |_, m| {
        let mut list: Vec<serde_json::Value> = serde_json::from_str(&m[LAYERS_KEY]).unwrap();
        list.retain(|l| l["name"] != "fc");
        m.insert(LAYERS_KEY.into(), serde_json::to_string(&list).unwrap());
    });
    let msg = format_error(&without_fc, "fc unlisted");
    assert!(
        msg.contains("tensor \"fc.mu.") && msg.contains("layer \"fc\", which microunify.layers"),
        "{msg}"
    );
    // A stray compact-looking tensor of no layer at all.
    let stray = edit(&b, |t, _| {
        _ = t.insert("stray.mu.values".into(), (Dtype::F32, vec![1], vec![0; 4]))
    });
    refused(&stray, "stray.mu.values", &["layer \"stray\", which"]);
    // A listed layer's compact name with a further ".mu." part is still that layer's.
    let deeper = edit(&b, |t, _| {
        _ = t.insert("fc.mu.x.mu.y".into(), (Dtype::U8, vec![1], vec![0]))
    });
    refused(
        &deeper,
        "fc.mu.x.mu.y",
        &["unknown compact tensor of layer \"fc\""],
    );

    // An empty layer list with no reserved tensor is a valid, if pointless, file.
    let plain = CompressedFile {
        layers: vec![],
        ..f.clone()
    };
    let back = CompressedFile::from_bytes(&plain.to_bytes().unwrap()).unwrap();
    assert_eq!(back, plain);
}

#[test]
fn mu_inside_ordinary_names_is_not_reserved() {
    // A VAE's `encoder.mu.weight` is a layer like any other, its bias a pass-through.
    let mut f = sample();
    f.layers.push(layer(
        "encoder.mu.weight",
        &[6, 10],
        "4x4",
        ConvLayout::ChannelMajor,
        (0.3, 0.3),
        11,
    ));
    f.passthrough
        .insert("encoder.mu.bias".into(), raw(Dtype::F32, &[6], vec![0; 24]));
    let back = CompressedFile::from_bytes(&f.to_bytes().unwrap()).unwrap();
    assert_eq!(back, f);
    // What may not be written: a layer named like a compact tensor, a pass-through tensor
    // that is one.
    let mut bad = sample();
    bad.layers[0].name = "x.mu.values".into();
    let e = bad.to_bytes().unwrap_err().to_string();
    assert!(
        e.contains("\"x.mu.values\"") && e.contains("may not be named"),
        "{e}"
    );
    let mut bad = sample();
    let t = bad.passthrough["fc.bias"].clone();
    bad.passthrough.insert("y.mu.signs".into(), t);
    let e = bad.to_bytes().unwrap_err().to_string();
    assert!(
        e.contains("\"y.mu.signs\"") && e.contains("does not list"),
        "{e}"
    );
}

#[test]
fn the_version_is_exactly_the_string_2() {
    let b = sample().to_bytes().unwrap();
    for v in ["02", "+2", " 2 ", "2 ", "2.0", "2e0", "", "0x2", "-2"] {
        let msg = format_error(
            &edit(&b, |_, m| _ = m.insert(VERSION_KEY.into(), v.into())),
            v,
        );
        assert!(
            msg.contains("\"__metadata__\"") && msg.contains("reads exactly \"2\""),
            "{v:?}: {msg}"
        );
    }
    for v in ["3", "10"] {
        let msg = format_error(
            &edit(&b, |_, m| _ = m.insert(VERSION_KEY.into(), v.into())),
            v,
        );
        assert!(
            msg.contains(&format!("format version {v} is not known")),
            "{msg}"
        );
    }
}

/// A file as version 1 wrote it: each layer's dense F32 reconstruction under its own name,
/// row pointers, (column, payload) entries, tile-padded values and 32-bit sign words beside
/// it, and `"1"` as the version.
fn version_1_file(f: &CompressedFile) -> Vec<u8> {
    let mut t: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let le32 = |v: &[u32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let lef = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut metas = Vec::new();
    for l in &f.layers {
        let m = &l.matrix;
        let [d, u, _] = m.counts();
        let (br, bc) = (m.block().rows, m.block().cols);
        let mu = |s: &str| format!("{}.mu.{s}", l.name);
        let entries: Vec<u32> = m.entries().iter().flatten().copied().collect();
        t.push((l.name.clone(), Dtype::F32, l.shape.clone(), lef(&l.dense())));
        let states = StateMap::from_states(m.states()).as_bytes().to_vec();
        t.push((mu("states"), Dtype::U8, vec![states.len()], states));
        t.push((
            mu("row_ptr"),
            Dtype::U32,
            vec![m.row_ptr().len()],
            le32(m.row_ptr()),
        ));
        t.push((
            mu("entries"),
            Dtype::U32,
            vec![m.entries().len(), 2],
            le32(&entries),
        ));
        t.push((mu("values"), Dtype::F32, vec![d, br, bc], lef(m.values())));
        t.push((mu("magnitudes"), Dtype::F32, vec![u], lef(m.magnitudes())));
        let wpb = m.words_per_block();
        t.push((mu("signs"), Dtype::U32, vec![u, wpb], le32(m.signs())));
        metas.push(serde_json::json!({
            "name": l.name, "shape": l.shape, "block": [br, bc], "layout": l.layout,
            "view": [m.view().rows, m.view().cols], "counts": m.counts(),
        }));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = (t.iter())
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let meta = HashMap::from([
        (VERSION_KEY.to_string(), "1".to_string()),
        (
            LAYERS_KEY.to_string(),
            serde_json::to_string(&metas).unwrap(),
        ),
    ]);
    safetensors::serialize(views, Some(meta)).unwrap()
}

#[test]
fn a_version_1_file_is_refused_with_the_way_to_a_new_one() {
    let old = version_1_file(&sample());
    let msg = format_error(&old, "version 1");
    for part in [
        "\"__metadata__\"",
        "format version 1",
        "reads version 2 only",
        "microunify project",
    ] {
        assert!(msg.contains(part), "expected {part:?} in: {msg}");
    }
    // It is no valid input of `project` either, which says the same.
    let e = ProjectInput::parse(&old, &Selection::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("format version 1"), "{e}");
}

#[test]
fn repeated_keys_are_refused_and_named() {
    let b = sample().to_bytes().unwrap();
    let header: serde_json::Value = {
        let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        serde_json::from_slice(&b[8..8 + n]).unwrap()
    };
    let bias = header["fc.bias"].to_string();
    // The same tensor twice, identical (serde would keep one, silently) or with other
    // offsets (serde would keep the last, and its bytes would be no tensor's).
    let twice = with_header(&b, |h| {
        h.replacen('{', &format!("{{\"fc.bias\":{bias},"), 1)
    });
    refused(&twice, "fc.bias", &["appears twice in the header"]);
    let moved = with_header(&b, |h| {
        let end = h.len() - 1;
        format!(
            "{},\"fc.bias\":{{\"dtype\":\"F32\",\"shape\":[13],\"data_offsets\":[0,52]}}}}",
            &h[..end]
        )
    });
    refused(&moved, "fc.bias", &["appears twice in the header"]);
    // `__metadata__` itself twice, and a key twice inside it.
    let meta_twice = with_header(&b, |h| h.replacen('{', "{\"__metadata__\":{},", 1));
    refused(
        &meta_twice,
        "__metadata__",
        &["appears twice in the header"],
    );
    let key_twice = with_header(&b, |h| {
        h.replacen(
            "\"__metadata__\":{",
            "\"__metadata__\":{\"format\":\"np\",",
            1,
        )
    });
    refused(
        &key_twice,
        "__metadata__",
        &["key \"format\" appears twice"],
    );
    // A key twice inside one tensor's entry.
    let field_twice = with_header(&b, |h| {
        h.replacen("\"fc.bias\":{", "\"fc.bias\":{\"dtype\":\"F32\",", 1)
    });
    refused(&field_twice, "fc.bias", &["has the key \"dtype\" twice"]);
    // A key twice inside an object of the layer list.
    let layer_twice = edit(&b, |_, m| {
        let s = m[LAYERS_KEY].replacen("\"name\":\"fc\"", "\"name\":\"fc\",\"name\":\"fc\"", 1);
        m.insert(LAYERS_KEY.into(), s);
    });
    refused(&layer_twice, "__metadata__", &["repeats the key \"name\""]);
}

#[test]
fn a_tensor_dropped_from_the_header_is_named() {
    let f = sample();
    let b = f.to_bytes().unwrap();
    // Each tensor of each layer, its entry removed from the header but its bytes left.
    for l in &f.layers {
        for name in COMPACT.iter().map(|s| format!("{}.mu.{s}", l.name)) {
            let dropped = with_header_value(&b, |h| {
                h.as_object_mut().unwrap().remove(&name).unwrap();
            });
            refused(&dropped, &name, &["missing from the file"]);
        }
    }
    // A pass-through tensor dropped: only the gap it leaves tells, by its neighbours.
    let dropped = with_header_value(&b, |h| {
        h.as_object_mut().unwrap().remove("steps").unwrap();
    });
    let msg = format_error(&dropped, "steps dropped");
    assert!(
        msg.contains("to no tensor") && msg.contains("missing from the header"),
        "{msg}"
    );
}

#[test]
fn the_tensors_cover_the_data_exactly() {
    let b = sample().to_bytes().unwrap();
    // A tensor moved back by 4 bytes onto its predecessor.
    let shifted = with_header_value(&b, |h| {
        let o = &mut h["fc.bias"]["data_offsets"];
        let (s, e) = (o[0].as_u64().unwrap(), o[1].as_u64().unwrap());
        assert!(s >= 8, "fc.bias follows a tensor of at least 8 bytes");
        *o = serde_json::json!([s - 4, e - 4]);
    });
    let msg = format_error(&shifted, "overlap");
    assert!(msg.contains("overlap the bytes of tensor"), "{msg}");
    // Bytes after the last tensor.
    let mut long = b.clone();
    long.extend_from_slice(&[0; 8]);
    refused(&long, "<header>", &["8 bytes belong to no tensor"]);
    // A tensor whose offsets run past the data.
    let past = with_header_value(&b, |h| {
        let o = &mut h["fc.bias"]["data_offsets"];
        *o = serde_json::json!([1u64 << 40, (1u64 << 40) + 52]);
    });
    refused(&past, "fc.bias", &["run past the end of the data"]);
    // Offsets that do not match dtype x shape.
    let short = with_header_value(&b, |h| h["fc.bias"]["shape"] = serde_json::json!([12]));
    refused(&short, "fc.bias", &["takes 48"]);
}

#[test]
fn header_lengths_are_bounded_before_anything_is_parsed() {
    let b = sample().to_bytes().unwrap();
    let with_len = |n: u64| {
        let mut c = b.clone();
        c[..8].copy_from_slice(&n.to_le_bytes());
        c
    };
    for n in [1u64 << 60, u64::MAX, 100_000_001] {
        refused(&with_len(n), "<header>", &["limit of 100000000"]);
    }
    refused(
        &with_len(b.len() as u64),
        "<header>",
        &["bytes follow the length field"],
    );
    refused(&b[..5], "<header>", &["too short"]);
}

/// The compressed layers of `f` as bytes: equal bytes, equal layers to the last bit (f32
/// `==` would not tell a zero's sign).
fn layer_bytes(f: &CompressedFile) -> Vec<u8> {
    CompressedFile {
        layers: f.layers.clone(),
        ..Default::default()
    }
    .to_bytes()
    .unwrap()
}

#[test]
fn every_bit_flip_is_refused_or_leaves_the_layers_exact() {
    let f = sample();
    let bytes = f.to_bytes().unwrap();
    let want = layer_bytes(&f);
    let (mut refused, mut accepted) = (0, 0);
    for bit in 0..bytes.len() * 8 {
        let mut b = bytes.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        let got = std::panic::catch_unwind(|| CompressedFile::from_bytes(&b))
            .unwrap_or_else(|_| panic!("bit {bit} (byte {}) made the reader panic", bit / 8));
        match got {
            Err(Error::Format { .. }) => refused += 1,
            Err(e) => panic!("bit {bit}: unexpected error kind {e}"),
            Ok(back) => {
                assert_eq!(
                    layer_bytes(&back),
                    want,
                    "bit {bit} changed a layer unnoticed"
                );
                accepted += 1;
            }
        }
    }
    eprintln!(
        "{} bits: {refused} refused, {accepted} accepted",
        bytes.len() * 8
    );
    assert!(refused > accepted, "{refused} refused, {accepted} accepted");
}

/// A checkpoint of weights in every dtype a layer may stand for (a linear F32, a conv F16,
/// a linear BF16, a conv F64), tensors that pass through, and metadata of its own.
fn mixed_checkpoint() -> Vec<u8> {
    let mut rng = common::rng(23);
    let mut w = |n: usize| common::weights(&mut rng, n);
    let (fc, conv, emb, deep) = (w(13 * 22), w(6 * 3 * 3 * 3), w(9 * 17), w(5 * 4 * 3 * 3));
    let t: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = vec![
        (
            "fc.weight",
            Dtype::F32,
            vec![13, 22],
            microunify::format::dtype::from_f32(Dtype::F32, &fc),
        ),
        (
            "conv.weight",
            Dtype::F16,
            vec![6, 3, 3, 3],
            microunify::format::dtype::from_f32(Dtype::F16, &conv),
        ),
        (
            "emb.weight",
            Dtype::BF16,
            vec![9, 17],
            microunify::format::dtype::from_f32(Dtype::BF16, &emb),
        ),
        (
            "deep.weight",
            Dtype::F64,
            vec![5, 4, 3, 3],
            // Not all f32 values: decompression gives back their f32 rounding.
            deep.iter()
                .flat_map(|v| (f64::from(*v) + 1e-12).to_le_bytes())
                .collect(),
        ),
        ("fc.bias", Dtype::F32, vec![13], vec![7; 52]),
        ("steps", Dtype::I64, vec![1], vec![9, 0, 0, 0, 0, 0, 0, 0]),
        ("mask", Dtype::U8, vec![3, 1], vec![1, 0, 1]),
    ];
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = (t.iter())
        .map(|(n, d, s, b)| {
            let v = safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap();
            (n.to_string(), v)
        })
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(meta)).unwrap()
}

/// `bytes` compressed as `microunify project` does, with the CPU reference's projection.
fn compress(bytes: &[u8], block: &str, r: (f64, f64)) -> CompressedFile {
    let input = ProjectInput::parse(bytes, &Selection::default()).unwrap();
    let specs = input.specs(block.parse().unwrap()).unwrap();
    let matrices = (specs.iter().zip(&input.selected))
        .map(|(spec, s)| project(spec, &s.gemm, r))
        .collect();
    input.finish(matrices).unwrap()
}

/// `values` as `dtype` holds them (little-endian).
fn as_dtype(dtype: Dtype, values: &[f32]) -> Vec<u8> {
    microunify::format::dtype::from_f32(dtype, values)
}

#[test]
fn decompression_gives_back_the_checkpoint_s_names_shapes_and_dtypes() {
    let input = mixed_checkpoint();
    let original = SafeTensors::deserialize(&input).unwrap();
    for (block, r) in [
        ("4x4", (0.0, 0.0)),
        ("2x8", (0.4, 0.3)),
        ("3x5", (0.0, 1.0)),
    ] {
        let f = compress(&input, block, r);
        let file = CompressedFile::from_bytes(&f.to_bytes().unwrap()).unwrap();
        let dtypes: Vec<(&str, Dtype)> = file
            .layers
            .iter()
            .map(|l| (l.name.as_str(), l.dtype))
            .collect();
        assert_eq!(dtypes.len(), 4, "{dtypes:?}");
        let dense = file.to_dense_bytes().unwrap();
        let st = SafeTensors::deserialize(&dense).unwrap();
        let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
        let mut want: Vec<String> = original.names().into_iter().map(String::from).collect();
        names.sort();
        want.sort();
        assert_eq!(names, want, "{block}");
        for (name, t) in original.tensors() {
            let d = st.tensor(&name).unwrap();
            assert_eq!((d.dtype(), d.shape()), (t.dtype(), t.shape()), "{name}");
            match file.layer(&name) {
                // Reconstructed and cast back to the dtype it came in.
                Some(l) => {
                    assert_eq!(d.data(), &as_dtype(t.dtype(), &l.dense())[..], "{name}");
                    // Nothing pruned or unified: the weights themselves (an F64 as its
                    // nearest f32).
                    if r == (0.0, 0.0) {
                        let values =
                            microunify::format::dtype::to_f32(t.dtype(), t.data()).unwrap();
                        assert_eq!(d.data(), &as_dtype(t.dtype(), &values)[..], "{name}");
                        if t.dtype() != Dtype::F64 {
                            assert_eq!(d.data(), t.data(), "{name}");
                        }
                    }
                }
                None => assert_eq!(d.data(), t.data(), "{name} passes through"),
            }
        }
        // The user's metadata, none of the format's.
        let (_, header) = SafeTensors::read_metadata(&dense).unwrap();
        let meta = header.metadata().clone().unwrap();
        assert_eq!(
            meta,
            HashMap::from([("format".to_string(), "pt".to_string())])
        );
        // Equal content, equal bytes.
        assert_eq!(file.to_dense_bytes().unwrap(), dense);
    }
}

#[test]
fn the_dense_size_counts_every_tensor_at_its_own_dtype() {
    let input = mixed_checkpoint();
    let f = compress(&input, "4x4", (0.5, 0.3));
    let st = SafeTensors::deserialize(&input).unwrap();
    let tensors: u64 = st
        .tensors()
        .iter()
        .map(|(_, t)| t.data().len() as u64)
        .sum();
    assert_eq!(f.dense_size(), tensors);
    let dense = f.to_dense_bytes().unwrap();
    assert_eq!(f.dense_size(), (dense.len() - header_bytes(&dense)) as u64);
}

#[test]
fn a_layer_stands_only_for_a_float_dtype() {
    let l = layer(
        "fc",
        &[4, 4],
        "2x2",
        ConvLayout::ChannelMajor,
        (0.0, 0.0),
        1,
    );
    for d in [Dtype::I64, Dtype::U8, Dtype::F8_E4M3, Dtype::C64] {
        let e = l.clone().with_dtype(d).unwrap_err().to_string();
        assert!(
            e.contains("\"fc\"") && e.contains(&format!("dtype {d:?} is not one")),
            "{e}"
        );
    }
    // A checkpoint F64 beyond the f32 range is named by its value, not as an infinity.
    let big: Vec<u8> = [1.0f64, 1e300, 2.0, 3.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let v = safetensors::tensor::TensorView::new(Dtype::F64, vec![2, 2], &big).unwrap();
    let bytes = safetensors::serialize([("w", v)], None).unwrap();
    let e = ProjectInput::parse(&bytes, &Selection::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"w\"") && e.contains("value 1e300 at flat index 1 lies beyond the f32 range"),
        "{e}"
    );
}
