//! Reading a compressed file. Nothing is trusted before it is checked: the container first
//! (header length, JSON without repeated keys, each tensor's offsets, see [`super::header`]),
//! then the metadata, then each layer's dense tensor, whose presence with the metadata's
//! shape bounds every size derived from the metadata by the file's own length, then the
//! compact tensors against the state map, the dense reconstruction against the compact
//! form, the reserved names, and last that the tensors cover the data exactly (after the
//! layers, so that a tensor dropped from the header is named as missing rather than by the
//! gap it leaves). Every failure is an [`crate::Error::Format`] naming the tensor and the
//! problem.

use super::header::{Container, METADATA_KEY, check_loads_in_safetensors};
use super::json::Json;
use super::{
    COMPACT, CompressedFile, CompressedLayer, FORMAT_VERSION, LAYERS_KEY, LayerMeta, META_PREFIX,
    RawTensor, VERSION_KEY, compact_name, float_text, format_err, reserved_layer_name,
    reserved_name,
};
use crate::block::{BlockGrid, BlockState, GemmView};
use crate::compressed::{CompressedMatrix, UNIFIED_FLAG};
use crate::error::Result;
use safetensors::Dtype;
use std::collections::{BTreeMap, HashSet};

/// The bytes of tensor `name`, which must have this dtype and shape. The container has
/// already checked that they lie inside the file and match dtype × shape.
fn tensor<'a>(
    st: &'a Container<'_>,
    name: &str,
    dtype: Dtype,
    shape: &[usize],
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
            format!("shape {:?}, expected {shape:?}", v.shape),
        ));
    }
    Ok(v.data)
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn u32s(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
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

/// The version must be written exactly as this build writes it: `"01"` or `" 1"` are not
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
    Err(meta_err(if canonical {
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
    if let Some(k) = metadata.keys().find(|k| k.starts_with(META_PREFIX)) {
        return Err(meta_err(format!("unknown key {k:?}")));
    }
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
        if names.contains(name) || consumed.contains(name) {
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
    // First, so that every size below is bounded by bytes the file really holds.
    let dense_bytes = tensor(st, name, Dtype::F32, &m.shape)?;
    let view = GemmView::of_shape(name, &m.shape)
        .map_err(|e| format_err(name, format!("metadata shape: {e}")))?;
    if [view.rows, view.cols] != m.view {
        return Err(format_err(
            name,
            format!(
                "metadata GEMM view {:?}, but shape {:?} gives {}x{}",
                m.view, m.shape, view.rows, view.cols
            ),
        ));
    }
    let block = m.block_shape()?;
    let grid = BlockGrid::new(view, block);
    let states = read_states(st, &mu("states"), grid.num_blocks(), m.counts)?;
    let row_ptr = read_row_ptr(st, &mu("row_ptr"), &grid, &states)?;
    let [nd, nu, _] = m.counts;
    let (br, bc, len) = (block.rows, block.cols, block.len());
    let raw = u32s(tensor(st, &mu("entries"), Dtype::U32, &[nd + nu, 2])?);
    let vname = mu("values");
    let values = f32s(tensor(st, &vname, Dtype::F32, &[nd, br, bc])?);
    if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        let problem = format!(
            "non-finite value {} at flat index {i} (dense block {})",
            float_text(*v),
            i / len
        );
        return Err(format_err(&vname, problem));
    }
    let mname = mu("magnitudes");
    let magnitudes = f32s(tensor(st, &mname, Dtype::F32, &[nu])?);
    // A magnitude is a mean of absolute values: never negative, not even -0 (which the
    // dense reconstruction would turn into sign-flipped zeros).
    if let Some((k, a)) =
        (magnitudes.iter().enumerate()).find(|(_, a)| !a.is_finite() || a.is_sign_negative())
    {
        let problem = format!(
            "magnitude {} of unified block {k} (flat index {k}) is not a finite value >= +0",
            if *a == 0.0 {
                "-0".into()
            } else {
                float_text(*a)
            }
        );
        return Err(format_err(&mname, problem));
    }
    let signs = u32s(tensor(
        st,
        &mu("signs"),
        Dtype::U32,
        &[nu, len.div_ceil(32)],
    )?);
    let mut matrix = CompressedMatrix {
        view,
        block,
        states,
        row_ptr,
        entries: Vec::new(),
        values,
        magnitudes,
        signs,
    };
    matrix.entries = read_entries(name, &matrix, &raw)?;
    let layer = CompressedLayer {
        name: name.to_string(),
        shape: m.shape.clone(),
        layout: m.layout,
        matrix,
    };
    let want = layer.dense();
    for (i, (have, want)) in f32s(dense_bytes).into_iter().zip(want).enumerate() {
        if !have.is_finite() {
            return Err(format_err(
                name,
                format!("non-finite value {} at flat index {i}", float_text(have)),
            ));
        }
        // Bit for bit: the writer stores exactly this reconstruction, and `==` would let a
        // zero's sign flip by.
        if have.to_bits() != want.to_bits() {
            return Err(format_err(
                name,
                format!(
                    "dense reconstruction disagrees with the compact form at flat index {i}: {have} in the file, {want} from {name}.mu.*"
                ),
            ));
        }
    }
    Ok(layer)
}

/// The 2-bit state map: no code 3, zero padding, and the metadata's counts.
fn read_states(
    st: &Container<'_>,
    sname: &str,
    nb: usize,
    meta_counts: [usize; 3],
) -> Result<Vec<BlockState>> {
    let packed = tensor(st, sname, Dtype::U8, &[nb.div_ceil(4)])?;
    let states = (0..nb)
        .map(|b| {
            let code = (packed[b / 4] >> (2 * (b % 4))) & 3;
            BlockState::from_code(code.into())
                .ok_or_else(|| format_err(sname, format!("block {b} has state code 3")))
        })
        .collect::<Result<Vec<_>>>()?;
    if !nb.is_multiple_of(4) && packed[nb / 4] >> (2 * (nb % 4)) != 0 {
        return Err(format_err(
            sname,
            "padding bits after the last block are not zero",
        ));
    }
    let mut counts = [0usize; 3];
    states.iter().for_each(|s| counts[*s as usize] += 1);
    if counts != meta_counts {
        return Err(format_err(
            sname,
            format!(
                "the state map counts {counts:?} (dense, unified, pruned) but the metadata says {meta_counts:?}"
            ),
        ));
    }
    Ok(states)
}

/// Row pointers: from 0, monotone, each block row as long as its non-pruned blocks (so
/// the last one is the number of entries).
fn read_row_ptr(
    st: &Container<'_>,
    rname: &str,
    grid: &BlockGrid,
    states: &[BlockState],
) -> Result<Vec<u32>> {
    let row_ptr = u32s(tensor(st, rname, Dtype::U32, &[grid.block_rows() + 1])?);
    if row_ptr[0] != 0 {
        return Err(format_err(
            rname,
            format!("starts at {}, not 0", row_ptr[0]),
        ));
    }
    let cols = grid.block_cols();
    for r in 0..grid.block_rows() {
        let (lo, hi) = (row_ptr[r], row_ptr[r + 1]);
        if hi < lo {
            let problem = format!("not monotone: block row {r} runs from {lo} down to {hi}");
            return Err(format_err(rname, problem));
        }
        let row = &states[r * cols..(r + 1) * cols];
        let want = row.iter().filter(|s| **s != BlockState::Pruned).count();
        if (hi - lo) as usize != want {
            return Err(format_err(
                rname,
                format!(
                    "block row {r} has {} entries but the state map has {want} non-pruned blocks",
                    hi - lo
                ),
            ));
        }
    }
    Ok(row_ptr)
}

/// Entries against the state map: columns in range and strictly increasing per block row,
/// each on a block of the entry's kind, payloads in storage order (so no index can leave
/// `values`, `magnitudes` or `signs`), and zeros outside ragged edges in values and signs.
/// `m` holds everything but the entries, already shape-checked.
fn read_entries(name: &str, m: &CompressedMatrix, raw: &[u32]) -> Result<Vec<[u32; 2]>> {
    let (ename, vname, gname) = (
        compact_name(name, "entries"),
        compact_name(name, "values"),
        compact_name(name, "signs"),
    );
    let grid = m.grid();
    let (block_cols, bc, len, wpb) = (
        grid.block_cols(),
        m.block.cols,
        m.block.len(),
        m.words_per_block(),
    );
    let (mut di, mut ui) = (0usize, 0usize);
    let mut entries = Vec::with_capacity(raw.len() / 2);
    for r in 0..grid.block_rows() {
        let mut prev: Option<u32> = None;
        for e in m.row_ptr[r] as usize..m.row_ptr[r + 1] as usize {
            let (col, payload) = (raw[2 * e], raw[2 * e + 1]);
            let at = |p: String| format_err(&ename, format!("entry {e} (block row {r}): {p}"));
            if col as usize >= block_cols {
                return Err(at(format!(
                    "block column {col} out of range (the matrix has {block_cols} block columns)"
                )));
            }
            if let Some(p) = prev.filter(|&p| col <= p) {
                return Err(at(format!(
                    "block column {col} does not follow {p} in increasing order"
                )));
            }
            prev = Some(col);
            let b = r * block_cols + col as usize;
            let ext = grid.extent(b);
            let inside = |pos: usize| pos < len && pos / bc < ext.rows && pos % bc < ext.cols;
            match m.states[b] {
                BlockState::Pruned => {
                    return Err(at(format!(
                        "points at block {b}, which the state map prunes"
                    )));
                }
                BlockState::Dense => {
                    if payload as u64 != (di * len) as u64 {
                        let want = di * len;
                        return Err(at(format!(
                            "dense payload {payload}, expected value offset {want}"
                        )));
                    }
                    // Distinct dense blocks, so di < the number of dense tiles.
                    let tile = &m.values[di * len..(di + 1) * len];
                    if let Some(p) = (0..len).find(|&p| !inside(p) && tile[p].to_bits() != 0) {
                        let problem = format!(
                            "dense block {di} (block {b}) holds {} at tile position {p}, outside the matrix edge (must be +0)",
                            tile[p]
                        );
                        return Err(format_err(&vname, problem));
                    }
                    di += 1;
                }
                BlockState::Unified => {
                    let want = UNIFIED_FLAG as u64 | ui as u64;
                    if payload as u64 != want {
                        return Err(at(format!(
                            "unified payload {payload:#x}, expected {want:#x}"
                        )));
                    }
                    let words = &m.signs[ui * wpb..(ui + 1) * wpb];
                    let set = |p: usize| words[p / 32] >> (p % 32) & 1 == 1;
                    if let Some(p) = (0..wpb * 32).find(|&p| !inside(p) && set(p)) {
                        let problem = format!(
                            "unified block {ui} (block {b}) has sign bit {p} set outside the block"
                        );
                        return Err(format_err(&gname, problem));
                    }
                    ui += 1;
                }
            }
            entries.push([col, payload]);
        }
    }
    Ok(entries)
}
