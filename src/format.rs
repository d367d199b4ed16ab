//! The compressed file, format version 2: a `.safetensors` file that holds each compressed
//! layer only in its compact micro-structured form, exactly the bits docs/METHOD.md §1
//! counts, beside the tensors that are not compressed (byte for byte) and the block model
//! in `__metadata__`. `microunify decompress` ([`CompressedFile::to_dense_bytes`]) turns it
//! back into the dense checkpoint: every tensor under its own name, shape and dtype.
//!
//! Per compressed layer `L` in `br×bc` blocks (`nb` blocks; the `d` dense ones hold `nd`
//! weights, the `u` unified ones `nu`; an edge block holds only the weights inside the
//! matrix, never padding):
//!
//! | tensor | dtype | shape | content |
//! | --- | --- | --- | --- |
//! | `L.mu.states` | U8 | `[ceil(nb/4)]` | 2-bit state map (0 dense, 1 unified, 2 pruned), block `b` at bits `2·(b%4)` of byte `b/4`, padding zero |
//! | `L.mu.values` | F32 | `[nd]` | the dense blocks' weights, block after block, each row-major over its own extent |
//! | `L.mu.magnitudes` | F32 | `[u]` | the shared magnitude of each unified block, finite and `>= +0` |
//! | `L.mu.signs` | U8 | `[ceil(nu/8)]` | one bit per weight of each unified block (1 = negative), block after block, each row-major over its own extent; bit `k` is bit `k%8` of byte `k/8`, padding zero |
//!
//! Blocks are numbered row-major over the block grid of the layer's GEMM view (see
//! docs/METHOD.md §1). The block-row index and the tile-padded values of the in-memory
//! [`CompressedMatrix`] are derived from these on reading.
//!
//! `__metadata__` holds `microunify.version` (exactly the string `"2"`) and
//! `microunify.layers`, a JSON array of [`LayerMeta`]: name, shape, the dtype the layer had
//! before compression (one of [`dtype::LAYER_DTYPES`]; its values must fit it), block,
//! layout, GEMM view, block counts and a SHA-256 over the entry itself (as JSON, this
//! field empty) and the four compact tensors' bytes in the table's order (the compact form
//! has no redundancy left to tell a damaged weight from a real one). Two optional keys
//! describe how to run the network, each checked on reading: `microunify.network`, the
//! layer list `microunify infer` runs (JSON of [`NetworkDef`], README's schema), and
//! `microunify.normalization`, the `[[mean, std], ...]` per input channel it was trained
//! with. Any other `microunify.` key is refused; any other metadata of the input is
//! kept. No JSON object of the header, of `__metadata__` or of the layer list
//! may repeat a key.
//!
//! Reserved names: no tensor of the file may take a listed layer's own name (the layer
//! gets it back on decompression). A tensor named `X.mu.S` belongs to the format when `S`
//! is one of [`COMPACT`] or `X` is a listed layer; it must then be one of the compact
//! tensors of a listed layer `X`. Any other `.mu.` name is an ordinary tensor (a VAE's
//! `encoder.mu.weight` stays a pass-through tensor, or a layer, as the user chose), and no
//! layer may itself be named `X.mu.S` with `S` in [`COMPACT`]. An empty layer list with no
//! reserved tensors is a valid file (a checkpoint with a version stamp, nothing compressed).

mod compact;
mod dense;
pub mod dtype;
mod header;
pub mod input;
mod json;
mod read;

#[doc(hidden)]
pub use read::reseal;

use crate::block::{BlockShape, ConvLayout, GemmView, from_gemm};
use crate::compressed::CompressedMatrix;
use crate::error::{Error, Result};
use crate::infer::network::NetworkDef;
use safetensors::{Dtype, View};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The format version this build writes and the only one it reads.
pub const FORMAT_VERSION: u32 = 2;
/// What every `__metadata__` key of the format starts with (all such keys are reserved).
pub const META_PREFIX: &str = "microunify.";
/// `__metadata__` key of the format version.
pub const VERSION_KEY: &str = "microunify.version";
/// `__metadata__` key of the per-layer JSON array.
pub const LAYERS_KEY: &str = "microunify.layers";
/// `__metadata__` key of the network's layer list (optional; JSON of
/// [`crate::infer::network::NetworkDef`]), which `microunify infer` runs.
pub const NETWORK_KEY: &str = "microunify.network";
/// `__metadata__` key of the input normalisation the network was trained with (optional;
/// JSON `[[mean, std], ...]`, one pair per channel).
pub const NORMALIZATION_KEY: &str = "microunify.normalization";
/// The optional `__metadata__` keys of the format, each validated on reading and writing.
pub const OPTIONAL_KEYS: [&str; 2] = [NETWORK_KEY, NORMALIZATION_KEY];

fn parse_network(text: &str) -> Result<NetworkDef> {
    NetworkDef::parse(text, NETWORK_KEY)
        .map_err(|e| format_err("__metadata__", format!("{NETWORK_KEY}: {e}")))
}

fn parse_normalization(text: &str) -> Result<Vec<[f64; 2]>> {
    let bad = |why: String| format_err("__metadata__", format!("{NORMALIZATION_KEY}: {why}"));
    let pairs: Vec<[f64; 2]> = serde_json::from_str(text)
        .map_err(|e| bad(format!("not a JSON list of [mean, std] pairs: {e}")))?;
    if pairs.is_empty() {
        return Err(bad("no [mean, std] pair".into()));
    }
    if let Some(i) = pairs
        .iter()
        .position(|[m, s]| !m.is_finite() || !s.is_finite() || *s <= 0.0)
    {
        return Err(bad(format!(
            "pair {} {:?}: the mean must be finite and the std a positive finite number",
            i + 1,
            pairs[i]
        )));
    }
    Ok(pairs)
}

/// Checks the optional keys `metadata` holds.
pub(crate) fn check_optional(metadata: &BTreeMap<String, String>) -> Result<()> {
    if let Some(t) = metadata.get(NETWORK_KEY) {
        parse_network(t)?;
    }
    if let Some(t) = metadata.get(NORMALIZATION_KEY) {
        parse_normalization(t)?;
    }
    Ok(())
}

/// Between a layer's name and a compact tensor's suffix: `{name}.mu.{suffix}`.
pub const COMPACT_INFIX: &str = ".mu.";
/// Suffixes of the compact tensors, after `{name}.mu.`, in the order of their checksum.
pub const COMPACT: [&str; 4] = ["states", "values", "magnitudes", "signs"];

/// What `microunify.layers` records about one compressed layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerMeta {
    pub name: String,
    /// The tensor's own shape (PyTorch order).
    pub shape: Vec<usize>,
    /// The tensor's dtype before compression, and after decompression.
    pub dtype: Dtype,
    /// `[br, bc]`.
    pub block: [usize; 2],
    pub layout: ConvLayout,
    /// GEMM view `[rows, cols]`.
    pub view: [usize; 2],
    /// Block counts `[dense, unified, pruned]`.
    pub counts: [usize; 3],
    /// SHA-256 (lowercase hex) of this entry (with this field empty) and the compact
    /// tensors' bytes, in the order of [`COMPACT`].
    pub sha256: String,
}

/// One compressed weight tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct CompressedLayer {
    pub name: String,
    /// The tensor's own shape (PyTorch order).
    pub shape: Vec<usize>,
    /// The tensor's dtype before compression, one of [`dtype::LAYER_DTYPES`]: the one
    /// decompression casts the reconstruction back to.
    pub dtype: Dtype,
    /// How a conv weight was flattened into the GEMM view (no effect on 2-D tensors).
    pub layout: ConvLayout,
    pub matrix: CompressedMatrix,
}

impl CompressedLayer {
    /// An F32 layer whose shape must have the matrix's GEMM view.
    pub fn new(
        name: impl Into<String>,
        shape: &[usize],
        layout: ConvLayout,
        matrix: CompressedMatrix,
    ) -> Result<Self> {
        let name = name.into();
        let view = GemmView::of_shape(&name, shape)?;
        if view != matrix.view() {
            return Err(Error::Shape {
                layer: name,
                why: format!(
                    "shape {shape:?} has GEMM view {}x{}, the matrix is {}x{}",
                    view.rows,
                    view.cols,
                    matrix.view().rows,
                    matrix.view().cols
                ),
            });
        }
        Ok(Self {
            name,
            shape: shape.to_vec(),
            dtype: Dtype::F32,
            layout,
            matrix,
        })
    }

    /// The same layer standing for a tensor of `dtype` (one of [`dtype::LAYER_DTYPES`]).
    pub fn with_dtype(self, dtype: Dtype) -> Result<Self> {
        if !dtype::is_layer_dtype(dtype) {
            return Err(format_err(
                self.name,
                format!(
                    "dtype {dtype:?} is not one a compressed layer can stand for ({})",
                    dtype::layer_dtypes_text()
                ),
            ));
        }
        Ok(Self { dtype, ..self })
    }

    /// The dense reconstruction in the tensor's own (PyTorch) order.
    pub fn dense(&self) -> Vec<f32> {
        from_gemm(&self.matrix.to_dense(), &self.shape, self.layout)
    }

    /// The metadata entry of this layer, its checksum still empty.
    fn meta(&self) -> LayerMeta {
        let m = &self.matrix;
        LayerMeta {
            name: self.name.clone(),
            shape: self.shape.clone(),
            dtype: self.dtype,
            block: [m.block().rows, m.block().cols],
            layout: self.layout,
            view: [m.view().rows, m.view().cols],
            counts: m.counts(),
            sha256: String::new(),
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
    if is_layer(name) {
        return Some(format!(
            "has the name of a compressed layer, which the file holds only as {name}{COMPACT_INFIX}{{{}}} (decompression gives the name back to the layer)",
            COMPACT.join(",")
        ));
    }
    if let Some((owner, s)) = compact_splits(name).find(|(x, s)| is_layer(x) && COMPACT.contains(s))
    {
        return Some(format!(
            "is the name of layer {owner:?}'s own compact tensor {s:?}"
        ));
    }
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
    let mut seen = std::collections::HashSet::new();
    for l in layers {
        if let Some(p) = reserved_layer_name(l) {
            return Err(format_err(*l, p));
        }
        if !seen.insert(*l) {
            return Err(format_err(*l, "two compressed layers share this name"));
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
    /// like a layer or one of its compact tensors is an error); every layer's matrix is
    /// consistent, as every [`CompressedMatrix`] is.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.check_names()?;
        let mut out: Vec<(String, Out<'_>)> = Vec::new();
        let mut metas = Vec::new();
        for l in &self.layers {
            let c = compact::encode(&l.matrix);
            let (values, magnitudes) = (le_f32(&c.values), le_f32(&c.magnitudes));
            let tensors = [
                (Dtype::U8, c.states),
                (Dtype::F32, values),
                (Dtype::F32, magnitudes),
                (Dtype::U8, c.signs),
            ];
            let parts: Vec<&[u8]> = tensors.iter().map(|(_, b)| &b[..]).collect();
            let mut meta = l.meta();
            meta.sha256 = compact::checksum(&meta, &parts);
            metas.push(meta);
            for (suffix, (dtype, data)) in COMPACT.iter().zip(tensors) {
                let shape = vec![data.len() / (dtype.bitsize() / 8)];
                let data = Cow::Owned(data);
                out.push((compact_name(&l.name, suffix), Out { dtype, shape, data }));
            }
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
        let mut meta = self.user_metadata()?;
        meta.insert(VERSION_KEY.into(), FORMAT_VERSION.to_string());
        let layers = serde_json::to_string(&metas)
            .map_err(|e| format_err("__metadata__", format!("encoding layers: {e}")))?;
        meta.insert(LAYERS_KEY.into(), layers);
        serialize(out, meta)
    }

    /// The name rules (see the module documentation) for this file's tensors.
    fn check_names(&self) -> Result<()> {
        let layer_names: Vec<&str> = self.layers.iter().map(|l| l.name.as_str()).collect();
        check_names(&layer_names, self.passthrough.keys().map(String::as_str))
    }

    /// The user's own `__metadata__`, which may not take a key of the format other than
    /// the [`OPTIONAL_KEYS`] (checked as on reading).
    fn user_metadata(&self) -> Result<HashMap<String, String>> {
        let reserved =
            |k: &&String| k.starts_with(META_PREFIX) && !OPTIONAL_KEYS.contains(&k.as_str());
        match self.metadata.keys().find(reserved) {
            Some(k) => Err(format_err("__metadata__", format!("key {k:?} is reserved"))),
            None => {
                check_optional(&self.metadata)?;
                Ok(self.metadata.clone().into_iter().collect())
            }
        }
    }

    /// Records the network's layer list (under [`NETWORK_KEY`]).
    pub fn set_network(&mut self, def: &NetworkDef) {
        self.metadata.insert(NETWORK_KEY.into(), def.to_json());
    }

    /// Records the input normalisation, one `[mean, std]` per channel (under
    /// [`NORMALIZATION_KEY`]).
    pub fn set_normalization(&mut self, stats: &[[f64; 2]]) {
        let text = serde_json::to_string(stats).expect("pairs of floats always encode");
        self.metadata.insert(NORMALIZATION_KEY.into(), text);
    }

    /// The recorded layer list, if any.
    pub fn stored_network(&self) -> Result<Option<NetworkDef>> {
        self.metadata
            .get(NETWORK_KEY)
            .map(|t| parse_network(t))
            .transpose()
    }

    /// The recorded input normalisation, if any.
    pub fn stored_normalization(&self) -> Result<Option<Vec<[f64; 2]>>> {
        self.metadata
            .get(NORMALIZATION_KEY)
            .map(|t| parse_normalization(t))
            .transpose()
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
    /// Returns the number of bytes written.
    pub fn write(&self, path: &Path) -> Result<u64> {
        let bytes = self.to_bytes()?;
        Self::from_bytes(&bytes)?;
        crate::fsio::write_atomic(path, &bytes)?;
        Ok(bytes.len() as u64)
    }

    /// Looks a compressed layer up by name.
    pub fn layer(&self, name: &str) -> Option<&CompressedLayer> {
        self.layers.iter().find(|l| l.name == name)
    }
}

/// Safetensors bytes of these tensors and metadata (none when empty), in canonical form.
fn serialize<V: View>(tensors: Vec<(String, V)>, meta: HashMap<String, String>) -> Result<Vec<u8>> {
    let meta = (!meta.is_empty()).then_some(meta);
    let bytes = safetensors::serialize(tensors, meta)
        .map_err(|e| format_err("<file>", format!("serialising: {e}")))?;
    Ok(canonical_header(bytes))
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
