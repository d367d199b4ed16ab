//! The compressed file: a `.safetensors` file that PyTorch, candle or tch load unchanged
//! (each compressed layer's dense reconstruction sits under its own name and shape), with
//! the compact micro-structured form beside it under `{name}.mu.*` and the block model in
//! `__metadata__`. Other tensors pass through byte for byte.
//!
//! Per compressed layer `L` (`nb` blocks, `d` dense, `u` unified, `nnz = d + u`):
//!
//! | tensor | dtype | shape | content |
//! | --- | --- | --- | --- |
//! | `L` | F32 | the layer's own (PyTorch order) | dense reconstruction |
//! | `L.mu.states` | U8 | `[ceil(nb/4)]` | 2-bit state map, block `b` at bits `2·(b%4)` of byte `b/4`, padding zero |
//! | `L.mu.row_ptr` | U32 | `[block_rows + 1]` | offsets into `entries` per block row |
//! | `L.mu.entries` | U32 | `[nnz, 2]` | (block column, payload) as in [`CompressedMatrix`] |
//! | `L.mu.values` | F32 | `[d, br, bc]` | dense tiles, zero outside ragged edges |
//! | `L.mu.magnitudes` | F32 | `[u]` | shared magnitude of each unified block |
//! | `L.mu.signs` | U32 | `[u, ceil(br·bc/32)]` | sign bits, bit `r·bc + c` |
//!
//! `__metadata__` holds `microunify.version` (exactly the string `"1"`) and
//! `microunify.layers`, a JSON array of [`LayerMeta`]; any other metadata of the input is
//! kept. No JSON object of the header, of `__metadata__` or of the layer list may repeat a
//! key.
//!
//! Reserved names: in a compressed file, a tensor named `X.mu.S` belongs to the format when
//! `S` is one of [`COMPACT`] or `X` is a listed layer; it must then be one of the compact
//! tensors of a listed layer `X`. Any other `.mu.` name is an ordinary tensor (a VAE's
//! `encoder.mu.weight` stays a pass-through tensor, or a layer, as the user chose), and no
//! layer may itself be named `X.mu.S` with `S` in [`COMPACT`]. An empty layer list with no
//! reserved tensors is a valid file (a checkpoint with a version stamp, nothing compressed).

mod header;
pub mod input;
mod json;
mod read;

use crate::block::{BlockShape, BlockState, ConvLayout, GemmView, from_gemm};
use crate::compressed::CompressedMatrix;
use crate::error::{Error, Result};
use safetensors::{Dtype, View};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The format version this build writes and the only one it reads.
pub const FORMAT_VERSION: u32 = 1;
/// What every `__metadata__` key of the format starts with (all such keys are reserved).
pub const META_PREFIX: &str = "microunify.";
/// `__metadata__` key of the format version.
pub const VERSION_KEY: &str = "microunify.version";
/// `__metadata__` key of the per-layer JSON array.
pub const LAYERS_KEY: &str = "microunify.layers";
/// Between a layer's name and a compact tensor's suffix: `{name}.mu.{suffix}`.
pub const COMPACT_INFIX: &str = ".mu.";
/// Suffixes of the compact tensors, after `{name}.mu.`.
pub const COMPACT: [&str; 6] = [
    "states",
    "row_ptr",
    "entries",
    "values",
    "magnitudes",
    "signs",
];

/// What `microunify.layers` records about one compressed layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerMeta {
    pub name: String,
    /// The tensor's own shape (PyTorch order).
    pub shape: Vec<usize>,
    /// `[br, bc]`.
    pub block: [usize; 2],
    pub layout: ConvLayout,
    /// GEMM view `[rows, cols]`.
    pub view: [usize; 2],
    /// Block counts `[dense, unified, pruned]`.
    pub counts: [usize; 3],
}

/// One compressed weight tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct CompressedLayer {
    pub name: String,
    /// The tensor's own shape (PyTorch order).
    pub shape: Vec<usize>,
    /// How a conv weight was flattened into the GEMM view (no effect on 2-D tensors).
    pub layout: ConvLayout,
    pub matrix: CompressedMatrix,
}

impl CompressedLayer {
    /// A layer whose shape must have the matrix's GEMM view.
    pub fn new(
        name: impl Into<String>,
        shape: &[usize],
        layout: ConvLayout,
        matrix: CompressedMatrix,
    ) -> Result<Self> {
        let name = name.into();
        let view = GemmView::of_shape(&name, shape)?;
        if view != matrix.view {
            return Err(Error::Shape {
                layer: name,
                why: format!(
                    "shape {shape:?} has GEMM view {}x{}, the matrix is {}x{}",
                    view.rows, view.cols, matrix.view.rows, matrix.view.cols
                ),
            });
        }
        Ok(Self {
            name,
            shape: shape.to_vec(),
            layout,
            matrix,
        })
    }

    /// The dense reconstruction in the tensor's own (PyTorch) order.
    pub fn dense(&self) -> Vec<f32> {
        from_gemm(&self.matrix.to_dense(), &self.shape, self.layout)
    }

    /// The metadata entry of this layer.
    pub fn meta(&self) -> LayerMeta {
        let m = &self.matrix;
        LayerMeta {
            name: self.name.clone(),
            shape: self.shape.clone(),
            block: [m.block.rows, m.block.cols],
            layout: self.layout,
            view: [m.view.rows, m.view.cols],
            counts: m.counts(),
        }
    }
}

/// A tensor stored as it came: dtype, shape and little-endian bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct RawTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// The whole file: compressed layers (in metadata order), pass-through tensors by name,
/// and any extra `__metadata__` entries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CompressedFile {
    pub layers: Vec<CompressedLayer>,
    pub passthrough: BTreeMap<String, RawTensor>,
    pub metadata: BTreeMap<String, String>,
}

/// A tensor on its way into `safetensors::serialize`.
struct Out<'a> {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Cow<'a, [u8]>,
}

impl View for Out<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn le_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn le_u32(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Packs block states 4 to a byte, block `b` at bits `2·(b%4)` of byte `b/4`.
pub fn pack_states(states: &[BlockState]) -> Vec<u8> {
    let mut out = vec![0u8; states.len().div_ceil(4)];
    for (b, s) in states.iter().enumerate() {
        out[b / 4] |= (*s as u8) << (2 * (b % 4));
    }
    out
}

fn format_err(tensor: impl Into<String>, problem: impl Into<String>) -> Error {
    Error::Format {
        tensor: tensor.into(),
        problem: problem.into(),
    }
}

/// A float as errors show it: `+inf`, `-inf` and `NaN` spelled out (Rust prints `inf`).
pub(crate) fn float_text(v: f32) -> String {
    match v {
        f32::INFINITY => "+inf".into(),
        f32::NEG_INFINITY => "-inf".into(),
        v => v.to_string(),
    }
}

/// The name of layer `layer`'s compact tensor `suffix` (one of [`COMPACT`]).
pub fn compact_name(layer: &str, suffix: &str) -> String {
    format!("{layer}{COMPACT_INFIX}{suffix}")
}

/// Every way to read `name` as `X.mu.S`: `(X, S)`.
fn compact_splits(name: &str) -> impl Iterator<Item = (&str, &str)> {
    name.match_indices(COMPACT_INFIX)
        .map(move |(i, m)| (&name[..i], &name[i + m.len()..]))
}

/// Why a tensor that is neither a layer nor one of a layer's compact tensors may not have
/// this name in a file whose layers are those `is_layer` accepts (see "Reserved names").
pub(crate) fn reserved_name(name: &str, is_layer: impl Fn(&str) -> bool) -> Option<String> {
    if let Some((owner, _)) = compact_splits(name).find(|(x, _)| is_layer(x)) {
        return Some(format!(
            "unknown compact tensor of layer {owner:?} (its compact tensors are {owner}.mu.{{{}}})",
            COMPACT.join(",")
        ));
    }
    compact_splits(name)
        .find(|(_, s)| COMPACT.contains(s))
        .map(|(owner, _)| {
            format!(
                "is named like a compact tensor of layer {owner:?}, which {LAYERS_KEY} does not list"
            )
        })
}

/// Why no layer may have this name, if it may not.
pub(crate) fn reserved_layer_name(name: &str) -> Option<String> {
    if name == header::METADATA_KEY {
        return Some("the name is safetensors' own metadata key".into());
    }
    compact_splits(name)
        .find(|(_, s)| COMPACT.contains(s))
        .map(|(owner, s)| {
            format!("a layer may not be named like the compact tensor {s:?} of layer {owner:?}")
        })
}

/// The name rules of a file with these layers and pass-through tensors: reserved names
/// (see the module documentation) and safetensors' metadata key.
pub(crate) fn check_names<'a>(
    layers: &[&'a str],
    passthrough: impl IntoIterator<Item = &'a str>,
) -> Result<()> {
    for l in layers {
        if let Some(p) = reserved_layer_name(l) {
            return Err(format_err(*l, p));
        }
    }
    let is_layer = |x: &str| layers.contains(&x);
    for name in passthrough {
        if name == header::METADATA_KEY {
            return Err(format_err(
                name,
                "a tensor may not take safetensors' own metadata key as its name",
            ));
        }
        if let Some(p) = reserved_name(name, is_layer) {
            return Err(format_err(name, p));
        }
    }
    Ok(())
}

impl CompressedFile {
    /// Serialises to safetensors bytes. Names must not collide (a pass-through tensor named
    /// like a layer or one of its compact tensors is an error).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out: Vec<(String, Out<'_>)> = Vec::new();
        let mut metas = Vec::new();
        for l in &self.layers {
            let m = &l.matrix;
            let [d, u, _] = m.counts();
            let wpb = m.words_per_block();
            let mu = |s: &str| compact_name(&l.name, s);
            let t = |dtype, shape: Vec<usize>, data: Vec<u8>| Out {
                dtype,
                shape,
                data: Cow::Owned(data),
            };
            let (br, bc) = (m.block.rows, m.block.cols);
            out.push((
                l.name.clone(),
                t(Dtype::F32, l.shape.clone(), le_f32(&l.dense())),
            ));
            let states = pack_states(&m.states);
            out.push((mu("states"), t(Dtype::U8, vec![states.len()], states)));
            out.push((
                mu("row_ptr"),
                t(Dtype::U32, vec![m.row_ptr.len()], le_u32(&m.row_ptr)),
            ));
            let entries: Vec<u32> = m.entries.iter().flatten().copied().collect();
            out.push((
                mu("entries"),
                t(Dtype::U32, vec![m.entries.len(), 2], le_u32(&entries)),
            ));
            out.push((
                mu("values"),
                t(Dtype::F32, vec![d, br, bc], le_f32(&m.values)),
            ));
            out.push((
                mu("magnitudes"),
                t(Dtype::F32, vec![u], le_f32(&m.magnitudes)),
            ));
            out.push((mu("signs"), t(Dtype::U32, vec![u, wpb], le_u32(&m.signs))));
            metas.push(l.meta());
        }
        for (name, r) in &self.passthrough {
            out.push((
                name.clone(),
                Out {
                    dtype: r.dtype,
                    shape: r.shape.clone(),
                    data: Cow::Borrowed(&r.data),
                },
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some((dup, _)) = out.iter().find(|(n, _)| !seen.insert(n.as_str())) {
            return Err(format_err(
                dup.as_str(),
                "two tensors of the file would share this name",
            ));
        }
        let layer_names: Vec<&str> = self.layers.iter().map(|l| l.name.as_str()).collect();
        check_names(&layer_names, self.passthrough.keys().map(String::as_str))?;
        let mut meta: HashMap<String, String> = HashMap::new();
        for (k, v) in &self.metadata {
            if k.starts_with(META_PREFIX) {
                return Err(format_err("__metadata__", format!("key {k:?} is reserved")));
            }
            meta.insert(k.clone(), v.clone());
        }
        meta.insert(VERSION_KEY.into(), FORMAT_VERSION.to_string());
        let layers = serde_json::to_string(&metas)
            .map_err(|e| format_err("__metadata__", format!("encoding layers: {e}")))?;
        meta.insert(LAYERS_KEY.into(), layers);
        let bytes = safetensors::serialize(out, Some(meta))
            .map_err(|e| format_err("<file>", format!("serialising: {e}")))?;
        Ok(canonical_header(bytes))
    }

    /// Parses and validates safetensors bytes; every inconsistency is an [`Error::Format`]
    /// naming the tensor and the problem.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        read::parse(bytes)
    }

    /// Reads and validates a file (a regular file only: see [`crate::fsio::read_regular`]).
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = crate::fsio::read_regular(path, u64::MAX, "compressed file")?;
        Self::from_bytes(&bytes)
    }

    /// Writes atomically (see [`crate::fsio::write_atomic`]), after reading the bytes back through the
    /// full validation: a layer we would refuse to read (say a NaN magnitude) is an error
    /// here rather than a file that fails later, on someone else's machine.
    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        Self::from_bytes(&bytes)?;
        crate::fsio::write_atomic(path, &bytes)
    }

    /// Looks a compressed layer up by name.
    pub fn layer(&self, name: &str) -> Option<&CompressedLayer> {
        self.layers.iter().find(|l| l.name == name)
    }
}

/// The same file with its JSON header's keys in sorted order. safetensors writes
/// `__metadata__` from a `HashMap`, so the same content would give different bytes from run
/// to run; sorted, equal content is equal bytes. The header keeps its length (the same
/// keys and values, reordered), so the data offsets do not move.
fn canonical_header(mut bytes: Vec<u8>) -> Vec<u8> {
    let Some(n) = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
    else {
        return bytes;
    };
    let Some(header) = bytes.get(8..8 + n) else {
        return bytes;
    };
    // serde_json's map is a BTreeMap (no `preserve_order`): re-encoding sorts the keys.
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(header) else {
        return bytes;
    };
    let Ok(mut sorted) = serde_json::to_vec(&v) else {
        return bytes;
    };
    if sorted.len() > n {
        return bytes;
    }
    sorted.resize(n, b' ');
    bytes[8..8 + n].copy_from_slice(&sorted);
    bytes
}

impl LayerMeta {
    /// The metadata's block shape, checked like any user-given one.
    pub fn block_shape(&self) -> Result<BlockShape> {
        BlockShape::new(self.block[0], self.block[1])
            .map_err(|e| format_err(self.name.as_str(), format!("metadata: {e}")))
    }
}
