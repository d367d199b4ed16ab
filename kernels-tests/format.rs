//! The compressed file format (src/format.rs): round trips, and every kind of corrupted or
//! inconsistent file refused with an error naming the tensor and the problem, never a
//! panic. The GPU test checks `CompressedMatrix::from_projection` against `from_dense`.

mod common;

use microunify::block::{ConvLayout, LayerSpec, to_gemm};
use microunify::compressed::{CompressedMatrix, UNIFIED_FLAG};
use microunify::cpu::projection as cpu;
use microunify::format::{CompressedFile, CompressedLayer, LAYERS_KEY, RawTensor, VERSION_KEY};
use microunify::gpu::projection::{NetworkProjection, Tensor};
use microunify::{BlockShape, Error, SelectionMode};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};

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
    let gemm = to_gemm(&w, shape, layout);
    let mode = cpu::per_layer(std::slice::from_ref(&spec), r.0, r.1).unwrap();
    let p = cpu::project(std::slice::from_ref(&spec), &[&gemm], &mode)
        .unwrap()
        .remove(0);
    let m = CompressedMatrix::from_dense(spec.view, block, &p.z, &p.states).unwrap();
    CompressedLayer::new(name, shape, layout, m).unwrap()
}

fn raw(dtype: Dtype, shape: &[usize], data: Vec<u8>) -> RawTensor {
    RawTensor {
        dtype,
        shape: shape.to_vec(),
        data,
    }
}

/// Ragged linear and conv layers in both layouts, all-dense and all-unified edge layers,
/// and pass-through tensors of several dtypes (one empty).
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
            layer("conv2", &[5, 4, 3, 3], "8x8", cm, (0.0, 0.5), 3),
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

#[test]
fn round_trip_is_exact() {
    let f = sample();
    let bytes = f.to_bytes().unwrap();
    let back = CompressedFile::from_bytes(&bytes).unwrap();
    assert_eq!(back, f);
    // The dense tensors load as plain F32 tensors of the original shape and order.
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for l in &f.layers {
        let t = st.tensor(&l.name).unwrap();
        assert_eq!(
            (t.dtype(), t.shape()),
            (Dtype::F32, &l.shape[..]),
            "{}",
            l.name
        );
        let have: Vec<f32> = t
            .data()
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(have, l.dense(), "{}", l.name);
        // The GEMM view permuted back: to_gemm(dense) is what the matrix holds.
        assert_eq!(
            to_gemm(&have, &l.shape, l.layout),
            l.matrix.to_dense(),
            "{}",
            l.name
        );
    }
    for (name, t) in &f.passthrough {
        let v = st.tensor(name).unwrap();
        assert_eq!(
            (v.dtype(), v.shape(), v.data()),
            (t.dtype, &t.shape[..], &t.data[..]),
            "{name}"
        );
    }
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
    bad.layers[0].matrix.magnitudes[0] = f32::NAN;
    let e = bad.write(&path).unwrap_err().to_string();
    assert!(
        e.contains("\"fc.mu.magnitudes\"") && e.contains("NaN"),
        "{e}"
    );
    let mut clash = f.clone();
    let t = clash.passthrough["fc.bias"].clone();
    clash.passthrough.insert("fc.mu.values".into(), t);
    let e = clash.write(&path).unwrap_err().to_string();
    assert!(
        e.contains("\"fc.mu.values\"") && e.contains("share this name"),
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

fn edit(bytes: &[u8], change: impl FnOnce(&mut Tensors, &mut HashMap<String, String>)) -> Vec<u8> {
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

/// An entry `e` and a pruned block column of its block row strictly between the columns
/// of its neighbours, so that moving the entry there breaks nothing but the state check.
fn pruned_between(m: &CompressedMatrix) -> Option<(usize, u32)> {
    let cols = m.grid().block_cols();
    (0..m.grid().block_rows()).find_map(|r| {
        let (lo, hi) = (m.row_ptr[r] as usize, m.row_ptr[r + 1] as usize);
        (lo..hi).find_map(|e| {
            let after = if e > lo {
                m.entries[e - 1][0] as usize + 1
            } else {
                0
            };
            let before = if e + 1 < hi {
                m.entries[e + 1][0] as usize
            } else {
                cols
            };
            (after..before)
                .find(|&c| m.states[r * cols + c] == microunify::BlockState::Pruned)
                .map(|c| (e, c as u32))
        })
    })
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

#[test]
fn each_inconsistency_is_named() {
    let f = sample();
    let b = f.to_bytes().unwrap();
    let fc = f.layer("fc").unwrap();
    assert!(fc.matrix.row_ptr[1] > 0 && fc.matrix.counts()[1] > 0);

    // Metadata.
    expect(
        &b,
        |_, m| _ = m.insert(VERSION_KEY.into(), "2".into()),
        "__metadata__",
        "format version 2 is not known",
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
    let counts = |m: &mut HashMap<String, String>, from: &str, to: &str| {
        let s = m[LAYERS_KEY].replacen(from, to, 1);
        m.insert(LAYERS_KEY.into(), s);
    };
    let c = fc.matrix.counts();
    let from = format!("\"counts\":[{},{},{}]", c[0], c[1], c[2]);
    let to = format!("\"counts\":[{},{},{}]", c[0] + 1, c[1], c[2] - 1);
    expect(
        &b,
        |_, m| counts(m, &from, &to),
        "fc.mu.states",
        "but the metadata says",
    );
    expect(
        &b,
        |_, m| counts(m, "\"name\":\"edge\"", "\"name\":\"fc\""),
        "fc",
        "listed twice",
    );
    expect(
        &b,
        |_, m| counts(m, "\"block\":[4,4]", "\"block\":[0,4]"),
        "fc",
        "invalid block shape",
    );
    expect(
        &b,
        |_, m| counts(m, "\"view\":[13,22]", "\"view\":[22,13]"),
        "fc",
        "metadata GEMM view",
    );

    // Dtypes, shapes, presence.
    expect(
        &b,
        |t, _| t.get_mut("fc.mu.values").unwrap().0 = Dtype::U32,
        "fc.mu.values",
        "dtype U32, expected F32",
    );
    expect(
        &b,
        |t, _| t.get_mut("fc").unwrap().1 = vec![22, 13],
        "fc",
        "shape [22, 13], expected [13, 22]",
    );
    expect(
        &b,
        |t, _| {
            let s = t.get_mut("fc.mu.signs").unwrap();
            s.1 = vec![s.1[0], 0];
            s.2.clear();
        },
        "fc.mu.signs",
        "expected [",
    );
    expect(
        &b,
        |t, _| _ = t.remove("fc.mu.row_ptr"),
        "fc.mu.row_ptr",
        "missing from the file",
    );
    expect(
        &b,
        |t, _| _ = t.insert("fc.mu.extra".into(), (Dtype::U8, vec![1], vec![0])),
        "fc.mu.extra",
        "unknown compact tensor",
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

    // Row pointers and entries.
    let rp = fc.matrix.row_ptr.clone();
    expect(
        &b,
        |t, _| set4(t, "fc.mu.row_ptr", 2, 0u32.to_le_bytes()),
        "fc.mu.row_ptr",
        "not monotone",
    );
    expect(
        &b,
        |t, _| set4(t, "fc.mu.row_ptr", 1, (rp[1] - 1).to_le_bytes()),
        "fc.mu.row_ptr",
        "non-pruned blocks",
    );
    expect(
        &b,
        |t, _| set4(t, "fc.mu.row_ptr", 0, 1u32.to_le_bytes()),
        "fc.mu.row_ptr",
        "not 0",
    );
    expect(
        &b,
        |t, _| set4(t, "fc.mu.entries", 0, 999u32.to_le_bytes()),
        "fc.mu.entries",
        "block column 999 out of range",
    );
    // "edge" is all dense: its block row 0 holds columns 0 and 1 at offsets 0 and 16
    // (elements 0..4 of its entries).
    expect(
        &b,
        |t, _| set4(t, "edge.mu.entries", 2, 0u32.to_le_bytes()),
        "edge.mu.entries",
        "does not follow",
    );
    expect(
        &b,
        |t, _| set4(t, "edge.mu.entries", 1, 16u32.to_le_bytes()),
        "edge.mu.entries",
        "dense payload 16",
    );
    expect(
        &b,
        |t, _| set4(t, "edgeu.mu.entries", 1, (UNIFIED_FLAG | 7).to_le_bytes()),
        "edgeu.mu.entries",
        "unified payload",
    );
    // An entry moved onto a pruned block between its neighbours' columns.
    let (e, col) = pruned_between(&fc.matrix).expect("fc has a pruned block between two entries");
    expect(
        &b,
        |t, _| set4(t, "fc.mu.entries", 2 * e, col.to_le_bytes()),
        "fc.mu.entries",
        "which the state map prunes",
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
    expect(
        &b,
        |t, _| set4(t, "fc.mu.values", 0, f32::INFINITY.to_le_bytes()),
        "fc.mu.values",
        "non-finite value +inf at flat index 0",
    );
    // "edge": block 1 is a 4x2 edge tile; tile position 3 (row 0, col 3) lies outside.
    expect(
        &b,
        |t, _| set4(t, "edge.mu.values", 16 + 3, 1f32.to_le_bytes()),
        "edge.mu.values",
        "outside the matrix edge",
    );
    expect(
        &b,
        |t, _| set4(t, "edgeu.mu.signs", 0, (1u32 << 31).to_le_bytes()),
        "edgeu.mu.signs",
        "sign bit 31 set outside the block",
    );
    expect(
        &b,
        |t, _| set4(t, "edgeu.mu.signs", 1, (1u32 << 3).to_le_bytes()),
        "edgeu.mu.signs",
        "sign bit 3 set outside the block",
    );

    // The dense reconstruction.
    expect(
        &b,
        |t, _| set4(t, "fc", 5, f32::NAN.to_le_bytes()),
        "fc",
        "non-finite value NaN at flat index 5",
    );
    let v = fc.dense()[7];
    expect(
        &b,
        |t, _| set4(t, "fc", 7, (v + 1.0).to_le_bytes()),
        "fc",
        "disagrees with the compact form at flat index 7",
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
        net.zero_dual(&gpu);
        net.run(&gpu).unwrap();
        let mut file = CompressedFile::default();
        for (l, (spec, (_, shape, _))) in specs.iter().zip(&shapes).enumerate() {
            let p = net.read_layer(&gpu, l).unwrap();
            let a = CompressedMatrix::from_projection(spec, &p).unwrap();
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
fn the_version_is_exactly_the_string_1() {
    let b = sample().to_bytes().unwrap();
    for v in ["01", "+1", " 1 ", "1 ", "1.0", "1e0", "", "0x1", "-1"] {
        let msg = format_error(
            &edit(&b, |_, m| _ = m.insert(VERSION_KEY.into(), v.into())),
            v,
        );
        assert!(
            msg.contains("\"__metadata__\"") && msg.contains("reads exactly \"1\""),
            "{v:?}: {msg}"
        );
    }
    for v in ["2", "10"] {
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
        expect(
            &b,
            |t, _| set4(t, "fc", 5, bits),
            "fc",
            &format!("non-finite value {word} at flat index 5"),
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
fn a_tensor_dropped_from_the_header_is_named() {
    let f = sample();
    let b = f.to_bytes().unwrap();
    // Each tensor of each layer, its entry removed from the header but its bytes left.
    for l in &f.layers {
        let names = std::iter::once(l.name.clone()).chain(
            microunify::format::COMPACT
                .iter()
                .map(|s| format!("{}.mu.{s}", l.name)),
        );
        for name in names {
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
