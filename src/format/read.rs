//! Reading a compressed file. Nothing is trusted before it is checked: the container first
//! (header length, JSON without repeated keys, each tensor's offsets, see [`super::header`]),
//! then the metadata, then per layer the state map, whose tensor must lie inside the file
//! and so bounds every size the metadata implies by the file's own length, then the other
//! compact tensors against the sizes the state map gives, their values (finite, fitting the
//! layer's dtype, magnitudes >= +0, zero padding bits) and their checksum, then the
//! reserved names, and last that the tensors cover the data exactly (after the layers, so
//! that a tensor dropped from the header is named as missing rather than by the gap it
//! leaves). Every failure is an [`crate::Error::Format`] naming the tensor and the problem.

use super::compact::{self, Sizes};
use super::header::{Container, LEN_BYTES, METADATA_KEY, check_loads_in_safetensors};
use super::json::Json;
use super::{
    COMPACT, CompressedFile, CompressedLayer, FORMAT_VERSION, LAYERS_KEY, LayerMeta, META_PREFIX,
    OPTIONAL_KEYS, RawTensor, VERSION_KEY, check_optional, compact_name, dtype, float_text,
    format_err, reserved_layer_name, reserved_name,
};
use crate::block::{BlockGrid, BlockState, GemmView, StateMap};
use crate::error::Result;
use safetensors::Dtype;
use std::collections::{BTreeMap, HashSet};

/// The bytes of tensor `name`, which must have this dtype and shape (`why` says where the
/// shape comes from). The container has already checked that they lie inside the file and
/// match dtype × shape.
fn tensor<'a>(
    st: &'a Container<'_>,
    name: &str,
    dtype: Dtype,
    shape: &[usize],
    why: &str,
) -> Result<&'a [u8]> {
    let v = st
        .get(name)
        .ok_or_else(|| format_err(name, "missing from the file"))?;
    if v.dtype != dtype {
        return Err(format_err(
            name,
            format!("dtype {:?}, expected {dtype:?}", v.dtype),
        ));
    }
    if v.shape != shape {
        return Err(format_err(
            name,
            format!("shape {:?}, expected {shape:?} ({why})", v.shape),
        ));
    }
    Ok(v.data)
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Whether a container is meant as a compressed file: it has the format's metadata.
pub(super) fn is_compressed(st: &Container<'_>) -> bool {
    st.metadata.keys().any(|k| k.starts_with(META_PREFIX))
}

pub(super) fn parse(bytes: &[u8]) -> Result<CompressedFile> {
    let st = Container::parse(bytes)?;
    let file = decode(&st)?;
    check_loads_in_safetensors(bytes)?;
    Ok(file)
}

/// The version must be written exactly as this build writes it: `"02"` or `" 2"` are not
/// what any writer of the format produces, so they are damage, not a version.
fn check_version(version: &str) -> Result<()> {
    let meta_err = |p: String| format_err(METADATA_KEY, p);
    let want = FORMAT_VERSION.to_string();
    if version == want {
        return Ok(());
    }
    let canonical = !version.is_empty()
        && version.bytes().all(|b| b.is_ascii_digit())
        && (version == "0" || !version.starts_with('0'));
    Err(meta_err(if version == "1" {
        format!(
            "format version 1 (an older microunify, which also stored each layer's dense reconstruction) is not read by this build, which reads version {want} only: compress the original checkpoint again with `microunify project` (or rerun train-gpu) to make a version-{want} file"
        )
    } else if canonical {
        format!("format version {version} is not known (this build reads version {want})")
    } else {
        format!(
            "format version {version:?} is not a plain version number (digits only, without sign, spaces or leading zeros; this build reads exactly \"{want}\")"
        )
    }))
}

/// The layer list: JSON without repeated keys, then [`LayerMeta`]s.
fn layer_list(json: &str) -> Result<Vec<LayerMeta>> {
    let meta_err = |p: String| format_err(METADATA_KEY, p);
    let tree: Json = serde_json::from_str(json)
        .map_err(|e| meta_err(format!("{LAYERS_KEY} is not a valid layer list: {e}")))?;
    if let Some(d) = tree.duplicate() {
        return Err(meta_err(format!(
            "{LAYERS_KEY} repeats the key {:?} in the object at {LAYERS_KEY}{}",
            d.key, d.path
        )));
    }
    serde_json::from_value(tree.into_value())
        .map_err(|e| meta_err(format!("{LAYERS_KEY} is not a valid layer list: {e}")))
}

/// The compressed file a container holds, every check but the final safetensors one done.
pub(super) fn decode(st: &Container<'_>) -> Result<CompressedFile> {
    let mut metadata = st.metadata.clone();
    let meta_err = |p: String| format_err(METADATA_KEY, p);
    let version = metadata.remove(VERSION_KEY).ok_or_else(|| {
        meta_err(format!(
            "no {VERSION_KEY:?} entry: not a microunify compressed file"
        ))
    })?;
    check_version(&version)?;
    let layers_json = metadata
        .remove(LAYERS_KEY)
        .ok_or_else(|| meta_err(format!("no {LAYERS_KEY:?} entry")))?;
    if let Some(k) = metadata
        .keys()
        .find(|k| k.starts_with(META_PREFIX) && !OPTIONAL_KEYS.contains(&k.as_str()))
    {
        return Err(meta_err(format!("unknown key {k:?}")));
    }
    check_optional(&metadata)?;
    let metas = layer_list(&layers_json)?;

    let mut names = HashSet::new();
    let mut consumed = HashSet::new();
    let mut layers = Vec::with_capacity(metas.len());
    for m in &metas {
        if !names.insert(m.name.as_str()) {
            return Err(format_err(
                m.name.as_str(),
                "listed twice in the metadata's layers",
            ));
        }
        if let Some(p) = reserved_layer_name(&m.name) {
            return Err(format_err(m.name.as_str(), p));
        }
        layers.push(layer(st, m)?);
        consumed.extend(COMPACT.iter().map(|s| compact_name(&m.name, s)));
    }
    let mut passthrough = BTreeMap::new();
    for (name, v) in st.iter() {
        if consumed.contains(name) {
            continue;
        }
        if let Some(p) = reserved_name(name, |x| names.contains(x)) {
            return Err(format_err(name, p));
        }
        passthrough.insert(
            name.to_string(),
            RawTensor {
                dtype: v.dtype,
                shape: v.shape.to_vec(),
                data: v.data.to_vec(),
            },
        );
    }
    st.check_coverage()?;
    Ok(CompressedFile {
        layers,
        passthrough,
        metadata,
    })
}

/// Validates and decodes one compressed layer.
fn layer(st: &Container<'_>, m: &LayerMeta) -> Result<CompressedLayer> {
    let name = m.name.as_str();
    let mu = |s: &str| compact_name(name, s);
    let meta_err = |p: String| format_err(name, format!("metadata: {p}"));
    // Every size below follows from the metadata's shape; the state map's tensor, which
    // must lie inside the file, bounds them by the file's length once no product of the
    // dimensions can overflow (zeros left out: `[0, huge, huge, 2]` would hide one).
    let mut nonzero = m.shape.iter().filter(|&&d| d > 0);
    if nonzero.try_fold(1usize, |a, &d| a.checked_mul(d)).is_none() {
        return Err(meta_err(format!(
            "shape {:?} has more elements than a usize counts",
            m.shape
        )));
    }
    let view = GemmView::of_shape(name, &m.shape).map_err(|e| meta_err(format!("shape: {e}")))?;
    if [view.rows, view.cols] != m.view {
        return Err(meta_err(format!(
            "GEMM view {:?}, but shape {:?} gives {}x{}",
            m.view, m.shape, view.rows, view.cols
        )));
    }
    let block = m.block_shape()?;
    if !dtype::is_layer_dtype(m.dtype) {
        return Err(meta_err(format!(
            "dtype {:?} is not one a compressed layer can stand for ({})",
            m.dtype,
            dtype::layer_dtypes_text()
        )));
    }
    let grid = BlockGrid::new(view, block);
    let states_bytes = tensor(
        st,
        &mu("states"),
        Dtype::U8,
        &[StateMap::byte_len(grid.num_blocks())],
        &format!("{} blocks, 4 a byte", grid.num_blocks()),
    )?;
    let states = read_states(&mu("states"), states_bytes, grid.num_blocks(), m.counts)?;
    let sizes = Sizes::of(&grid, &states);
    let [nd, nu, _] = m.counts;
    if !compact::index_fits(nd, nu, block) {
        return Err(format_err(
            name,
            format!(
                "{nd} dense and {nu} unified blocks of {block} are more than the in-memory form's 32-bit block index holds"
            ),
        ));
    }
    let vname = mu("values");
    let values_bytes = tensor(
        st,
        &vname,
        Dtype::F32,
        &[sizes.dense_weights],
        &format!(
            "the state map's {nd} dense blocks hold {} weights",
            sizes.dense_weights
        ),
    )?;
    let values = f32s(values_bytes);
    if let Some((i, v)) =
        (values.iter().enumerate()).find(|(_, v)| !v.is_finite() || !dtype::fits(m.dtype, **v))
    {
        let (k, b) = compact::dense_block_at(&grid, &states, i);
        let problem = if v.is_finite() {
            format!(
                "value {v} at flat index {i} (dense block {k}, block {b}) does not fit the layer's dtype {:?}",
                m.dtype
            )
        } else {
            format!(
                "non-finite value {} at flat index {i} (dense block {k}, block {b})",
                float_text(*v)
            )
        };
        return Err(format_err(&vname, problem));
    }
    let mname = mu("magnitudes");
    let magnitudes_bytes = tensor(
        st,
        &mname,
        Dtype::F32,
        &[nu],
        "one per unified block of the state map",
    )?;
    let magnitudes = f32s(magnitudes_bytes);
    // A magnitude is a mean of absolute values: never negative, not even -0 (which the
    // dense reconstruction would turn into sign-flipped zeros).
    if let Some((k, a)) = (magnitudes.iter().enumerate())
        .find(|(_, a)| !a.is_finite() || a.is_sign_negative() || !dtype::fits(m.dtype, **a))
    {
        let problem = if a.is_finite() && !a.is_sign_negative() {
            format!(
                "magnitude {a} of unified block {k} does not fit the layer's dtype {:?}",
                m.dtype
            )
        } else {
            format!(
                "magnitude {} of unified block {k} (flat index {k}) is not a finite value >= +0",
                if *a == 0.0 {
                    "-0".into()
                } else {
                    float_text(*a)
                }
            )
        };
        return Err(format_err(&mname, problem));
    }
    let gname = mu("signs");
    let signs = tensor(
        st,
        &gname,
        Dtype::U8,
        &[sizes.sign_bytes()],
        &format!(
            "one bit for each of the {} weights of the unified blocks, 8 a byte",
            sizes.unified_weights
        ),
    )?;
    let used = sizes.unified_weights % 8;
    if used != 0 && signs[signs.len() - 1] >> used != 0 {
        return Err(format_err(
            &gname,
            "padding bits after the last sign bit are not zero",
        ));
    }
    let sha256 = compact::checksum(m, &[states_bytes, values_bytes, magnitudes_bytes, signs]);
    if sha256 != m.sha256 {
        return Err(format_err(
            name,
            format!(
                "the SHA-256 of its metadata entry and compact tensors is {sha256}, the entry says {:?}: the file is damaged",
                m.sha256
            ),
        ));
    }
    Ok(CompressedLayer {
        name: name.to_string(),
        shape: m.shape.clone(),
        dtype: m.dtype,
        layout: m.layout,
        matrix: compact::decode(view, block, states, &values, magnitudes, signs)
            .map_err(|p| format_err(name, p))?,
    })
}

/// The 2-bit state map: no code 3, zero padding, and the metadata's counts.
fn read_states(
    sname: &str,
    packed: &[u8],
    nb: usize,
    meta_counts: [usize; 3],
) -> Result<Vec<BlockState>> {
    let map = StateMap::from_bytes(packed, nb).map_err(|p| format_err(sname, p))?;
    let counts = map.counts();
    if counts != meta_counts {
        return Err(format_err(
            sname,
            format!(
                "the state map counts {counts:?} (dense, unified, pruned) but the metadata says {meta_counts:?}"
            ),
        ));
    }
    Ok(map.to_vec())
}

/// `bytes` with every listed layer's checksum recomputed over whatever its metadata entry
/// and compact tensors hold (`None` when there is no container and layer list to reseal):
/// for fuzzing and tests, so that damaged files reach the checks behind the checksum. The
/// tensors' data and offsets stay as they were; a file resealed this way is trusted no
/// more than another, only the checksum check is bypassed.
pub fn reseal(bytes: &[u8]) -> Option<Vec<u8>> {
    let st = Container::parse(bytes).ok()?;
    let mut metas: Vec<LayerMeta> = serde_json::from_str(st.metadata.get(LAYERS_KEY)?).ok()?;
    for m in &mut metas {
        let parts = COMPACT
            .iter()
            .map(|s| st.get(&compact_name(&m.name, s)).map(|t| t.data))
            .collect::<Option<Vec<_>>>();
        if let Some(parts) = parts {
            m.sha256 = compact::checksum(m, &parts);
        }
    }
    let n = u64::from_le_bytes(bytes[..LEN_BYTES].try_into().ok()?) as usize;
    let data = LEN_BYTES + n;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[LEN_BYTES..data]).ok()?;
    header.get_mut(METADATA_KEY)?.as_object_mut()?.insert(
        LAYERS_KEY.into(),
        serde_json::to_string(&metas).ok()?.into(),
    );
    let text = serde_json::to_vec(&header).ok()?;
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend_from_slice(&bytes[data..]);
    Some(out)
}
