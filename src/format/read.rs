//! Reading a compressed file. Nothing is trusted before it is checked: the safetensors
//! header first (offsets, lengths, overflow), then each layer's dense tensor, whose
//! presence with the metadata's shape bounds every size derived from the metadata by the
//! file's own length, then the compact tensors against the state map, and last the dense
//! reconstruction against the compact form. Every failure is an [`Error::Format`] naming
//! the tensor and the problem.

use super::{
    COMPACT, CompressedFile, CompressedLayer, FORMAT_VERSION, LAYERS_KEY, LayerMeta, RawTensor,
    VERSION_KEY, format_err,
};
use crate::block::{BlockGrid, BlockState, GemmView};
use crate::compressed::{CompressedMatrix, UNIFIED_FLAG};
use crate::error::{Error, Result};
use safetensors::{Dtype, SafeTensorError, SafeTensors};
use std::collections::{BTreeMap, HashSet};

/// A header the safetensors crate refuses (truncation, bad JSON, offsets that overlap or
/// leave gaps, lengths that do not match dtype and shape).
fn header_err(e: SafeTensorError) -> Error {
    match e {
        SafeTensorError::InvalidOffset(name) => format_err(
            name,
            "data offsets overlap or leave a gap (corrupted header or truncated file)",
        ),
        other => format_err("<header>", format!("not a valid safetensors file: {other}")),
    }
}

/// The bytes of tensor `name`, which must have this dtype and shape. Safetensors has
/// already checked that they lie inside the file and match dtype × shape.
fn tensor<'d>(st: &SafeTensors<'d>, name: &str, dtype: Dtype, shape: &[usize]) -> Result<&'d [u8]> {
    let v = st
        .tensor(name)
        .map_err(|_| format_err(name, "missing from the file"))?;
    if v.dtype() != dtype {
        return Err(format_err(
            name,
            format!("dtype {:?}, expected {dtype:?}", v.dtype()),
        ));
    }
    if v.shape() != shape {
        return Err(format_err(
            name,
            format!("shape {:?}, expected {shape:?}", v.shape()),
        ));
    }
    Ok(v.data())
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

pub(super) fn parse(bytes: &[u8]) -> Result<CompressedFile> {
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(header_err)?;
    let st = SafeTensors::deserialize(bytes).map_err(header_err)?;
    let mut metadata: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let meta_err = |p: String| format_err("__metadata__", p);
    let version = metadata.remove(VERSION_KEY).ok_or_else(|| {
        meta_err(format!(
            "no {VERSION_KEY:?} entry: not a microunify compressed file"
        ))
    })?;
    match version.trim().parse::<u64>() {
        Ok(v) if v == FORMAT_VERSION as u64 => {}
        Ok(v) => {
            return Err(meta_err(format!(
                "format version {v} is not known (this build reads version {FORMAT_VERSION})"
            )));
        }
        Err(_) => {
            return Err(meta_err(format!(
                "format version {version:?} is not a number"
            )));
        }
    }
    let layers_json = metadata
        .remove(LAYERS_KEY)
        .ok_or_else(|| meta_err(format!("no {LAYERS_KEY:?} entry")))?;
    if let Some(k) = metadata.keys().find(|k| k.starts_with("microunify.")) {
        return Err(meta_err(format!("unknown key {k:?}")));
    }
    let metas: Vec<LayerMeta> = serde_json::from_str(&layers_json)
        .map_err(|e| meta_err(format!("{LAYERS_KEY} is not a valid layer list: {e}")))?;

    let mut names = HashSet::new();
    let mut layers = Vec::with_capacity(metas.len());
    for m in &metas {
        if !names.insert(m.name.as_str()) {
            return Err(format_err(
                m.name.as_str(),
                "listed twice in the metadata's layers",
            ));
        }
        layers.push(layer(&st, m)?);
    }
    let mut passthrough = BTreeMap::new();
    for (name, v) in st.iter() {
        if names.contains(name) {
            continue;
        }
        if let Some((owner, suffix)) = name.rsplit_once(".mu.")
            && names.contains(owner)
        {
            if COMPACT.contains(&suffix) {
                continue;
            }
            return Err(format_err(
                name,
                format!("unknown compact tensor of layer {owner:?}"),
            ));
        }
        passthrough.insert(
            name.to_string(),
            RawTensor {
                dtype: v.dtype(),
                shape: v.shape().to_vec(),
                data: v.data().to_vec(),
            },
        );
    }
    Ok(CompressedFile {
        layers,
        passthrough,
        metadata,
    })
}

/// Validates and decodes one compressed layer.
fn layer(st: &SafeTensors<'_>, m: &LayerMeta) -> Result<CompressedLayer> {
    let name = m.name.as_str();
    let mu = |s: &str| format!("{name}.mu.{s}");
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
            "non-finite value {v} at index {i} (dense block {})",
            i / len
        );
        return Err(format_err(&vname, problem));
    }
    let mname = mu("magnitudes");
    let magnitudes = f32s(tensor(st, &mname, Dtype::F32, &[nu])?);
    if let Some((k, a)) = (magnitudes.iter().enumerate()).find(|(_, a)| !a.is_finite() || **a < 0.0)
    {
        let problem = format!("magnitude {a} of unified block {k} is not a finite value >= 0");
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
                format!("non-finite value {have} at index {i}"),
            ));
        }
        if have != want {
            return Err(format_err(
                name,
                format!(
                    "dense reconstruction disagrees with the compact form at index {i}: {have} in the file, {want} from {name}.mu.*"
                ),
            ));
        }
    }
    Ok(layer)
}

/// The 2-bit state map: no code 3, zero padding, and the metadata's counts.
fn read_states(
    st: &SafeTensors<'_>,
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
    st: &SafeTensors<'_>,
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
        format!("{name}.mu.entries"),
        format!("{name}.mu.values"),
        format!("{name}.mu.signs"),
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
                    if let Some(p) = (0..len).find(|&p| !inside(p) && tile[p] != 0.0) {
                        let problem = format!(
                            "dense block {di} (block {b}) holds {} outside the matrix edge",
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
