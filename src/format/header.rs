//! The safetensors container, parsed by hand so that nothing in it is trusted unchecked:
//! the 8-byte header length against safetensors' own limit and the file's length before
//! anything else, the header JSON with every repeated key refused (serde would keep the
//! last one and leave the other's bytes to no tensor), each tensor's dtype, shape and
//! offsets against the data, and, as a separate last step, that the tensors tile the data
//! exactly. That last step is separate so that a reader can first look for the tensors it
//! needs: a tensor dropped from the header leaves a gap, and "missing from the file" names
//! it, where a gap can only name its neighbours.

use super::format_err;
use super::json::{Json, repeated_key};
use crate::error::{Error, Result};
use safetensors::Dtype;
use serde::Deserialize;
use serde::de::IntoDeserializer;
use std::collections::{BTreeMap, HashMap};

/// The longest header the safetensors crate reads (its `MAX_HEADER_SIZE`).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;
/// The little-endian u64 header length that starts every file.
pub const LEN_BYTES: usize = 8;
/// The header key of the free-form string metadata.
pub const METADATA_KEY: &str = "__metadata__";
/// Who a problem of the container as a whole is reported against.
pub const HEADER: &str = "<header>";

fn header_err(problem: impl Into<String>) -> Error {
    format_err(HEADER, problem)
}

/// One tensor's entry in the header, checked against the data.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub start: usize,
    pub end: usize,
}

/// A tensor's dtype, shape and bytes.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    pub dtype: Dtype,
    pub shape: &'a [usize],
    pub data: &'a [u8],
}

/// A parsed safetensors file: its metadata, its tensors in header order, and the data.
#[derive(Debug)]
pub struct Container<'d> {
    pub metadata: BTreeMap<String, String>,
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
    data: &'d [u8],
}

impl<'d> Container<'d> {
    /// Parses `bytes` and checks every tensor's own entry (but not yet that the tensors
    /// cover the data exactly: see [`Container::check_coverage`]).
    pub fn parse(bytes: &'d [u8]) -> Result<Self> {
        let len_field = bytes.get(..LEN_BYTES).ok_or_else(|| {
            header_err(format!(
                "the file is {} bytes, too short for the {LEN_BYTES}-byte header length: not a valid safetensors file",
                bytes.len()
            ))
        })?;
        let n = u64::from_le_bytes(len_field.try_into().expect("8 bytes"));
        if n > MAX_HEADER_BYTES {
            return Err(header_err(format!(
                "header length {n} bytes is more than safetensors' limit of {MAX_HEADER_BYTES}: not a valid safetensors file"
            )));
        }
        let rest = bytes.len() - LEN_BYTES;
        if n > rest as u64 {
            return Err(header_err(format!(
                "header length {n} bytes, but only {rest} bytes follow the length field: a truncated file, or not a safetensors file"
            )));
        }
        let (text, data) = bytes[LEN_BYTES..].split_at(n as usize);
        let text = std::str::from_utf8(text).map_err(|e| {
            header_err(format!(
                "the header is not UTF-8 text (at byte {}): not a valid safetensors file",
                LEN_BYTES + e.valid_up_to()
            ))
        })?;
        let json: Json = serde_json::from_str(text).map_err(|e| {
            header_err(format!(
                "the header is not valid JSON ({e}): not a valid safetensors file"
            ))
        })?;
        let Json::Object(top) = json else {
            return Err(header_err(format!(
                "the header is {}, not a JSON object: not a valid safetensors file",
                json.kind()
            )));
        };
        if let Some(k) = repeated_key(&top) {
            return Err(format_err(
                k,
                "appears twice in the header (readers would silently keep one of the two)",
            ));
        }
        let mut metadata = BTreeMap::new();
        let mut entries = Vec::with_capacity(top.len());
        for (name, value) in top {
            if name == METADATA_KEY {
                metadata = parse_metadata(value)?;
            } else {
                entries.push(entry(name, value, data.len())?);
            }
        }
        let index = (entries.iter().enumerate())
            .map(|(i, e)| (e.name.clone(), i))
            .collect();
        Ok(Self {
            metadata,
            entries,
            index,
            data,
        })
    }

    /// The tensor called `name`, if the header lists it.
    pub fn get(&self, name: &str) -> Option<TensorRef<'_>> {
        self.index.get(name).map(|&i| self.view(&self.entries[i]))
    }

    fn view<'a>(&'a self, e: &'a Entry) -> TensorRef<'a> {
        TensorRef {
            dtype: e.dtype,
            shape: &e.shape,
            data: &self.data[e.start..e.end],
        }
    }

    /// Every tensor in header order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, TensorRef<'_>)> {
        self.entries.iter().map(|e| (e.name.as_str(), self.view(e)))
    }

    /// Names in the order of their data (the order safetensors readers list them in).
    pub fn offset_order(&self) -> Vec<&str> {
        let mut e: Vec<&Entry> = self.entries.iter().collect();
        e.sort_by_key(|e| (e.start, e.end));
        e.into_iter().map(|e| e.name.as_str()).collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The tensors tile the data: no gap, no overlap, nothing after the last one.
    pub fn check_coverage(&self) -> Result<()> {
        let mut sorted: Vec<&Entry> = self.entries.iter().collect();
        sorted.sort_by_key(|e| (e.start, e.end));
        let mut pos = 0;
        let mut prev: Option<&str> = None;
        for e in sorted {
            let after = || {
                prev.map_or("at the start of the data".to_string(), |p| {
                    format!("after tensor {p:?}")
                })
            };
            if e.start > pos {
                return Err(format_err(
                    e.name.as_str(),
                    format!(
                        "data_offsets [{}, {}] leave bytes {pos}..{} of the data to no tensor ({}): a tensor missing from the header, or corrupted offsets",
                        e.start,
                        e.end,
                        e.start,
                        after()
                    ),
                ));
            }
            if e.start < pos {
                return Err(format_err(
                    e.name.as_str(),
                    format!(
                        "data_offsets [{}, {}] overlap the bytes of tensor {:?}, which end at {pos}",
                        e.start,
                        e.end,
                        prev.unwrap_or("")
                    ),
                ));
            }
            pos = e.end;
            prev = Some(&e.name);
        }
        if pos != self.data.len() {
            return Err(header_err(format!(
                "the data is {} bytes, but the tensors end at byte {pos}: {} bytes belong to no tensor",
                self.data.len(),
                self.data.len() - pos
            )));
        }
        Ok(())
    }
}

/// Our checks are meant to be at least as strict as the safetensors crate's; this makes
/// sure of it, so that every file we accept loads wherever safetensors does.
pub fn check_loads_in_safetensors(bytes: &[u8]) -> Result<()> {
    safetensors::SafeTensors::deserialize(bytes)
        .map(drop)
        .map_err(|e| header_err(format!("not a valid safetensors file: {e}")))
}

fn parse_metadata(value: Json) -> Result<BTreeMap<String, String>> {
    let err = |p: String| format_err(METADATA_KEY, p);
    let entries = match value {
        Json::Null => return Ok(BTreeMap::new()),
        Json::Object(o) => o,
        other => {
            return Err(err(format!(
                "is {}, expected an object of strings",
                other.kind()
            )));
        }
    };
    if let Some(k) = repeated_key(&entries) {
        return Err(err(format!(
            "key {k:?} appears twice (readers would silently keep one of the two)"
        )));
    }
    entries
        .into_iter()
        .map(|(k, v)| match v {
            Json::String(s) => Ok((k, s)),
            other => Err(err(format!(
                "value of {k:?} is {}, expected a string",
                other.kind()
            ))),
        })
        .collect()
}

/// One tensor's header entry, checked on its own and against the data's length.
fn entry(name: String, value: Json, data_len: usize) -> Result<Entry> {
    let err = |p: String| format_err(name.as_str(), p);
    let Json::Object(fields) = value else {
        return Err(err(format!(
            "header entry is {}, expected an object with dtype, shape and data_offsets",
            value.kind()
        )));
    };
    if let Some(k) = repeated_key(&fields) {
        return Err(err(format!("header entry has the key {k:?} twice")));
    }
    // Unknown keys are ignored, as the safetensors crate does.
    let field = |k: &str| {
        fields
            .iter()
            .find(|(f, _)| f == k)
            .map(|(_, v)| v)
            .ok_or_else(|| err(format!("header entry has no {k:?}")))
    };
    let dtype = match field("dtype")? {
        Json::String(s) => {
            let d: std::result::Result<Dtype, serde::de::value::Error> =
                Dtype::deserialize(s.as_str().into_deserializer());
            d.map_err(|_| err(format!("dtype {s:?} is not a safetensors dtype")))?
        }
        other => return Err(err(format!("dtype is {}, expected a string", other.kind()))),
    };
    let ints = |k: &str| -> Result<Vec<usize>> {
        match field(k)? {
            Json::Array(a) => a.iter().map(Json::as_usize).collect::<Option<Vec<_>>>(),
            _ => None,
        }
        .ok_or_else(|| err(format!("{k} must be an array of non-negative integers")))
    };
    let shape = ints("shape")?;
    let &[start, end] = &ints("data_offsets")?[..] else {
        return Err(err("data_offsets must be two integers [start, end]".into()));
    };
    let size = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .and_then(|n| n.checked_mul(dtype.bitsize()))
        .ok_or_else(|| err(format!("shape {shape:?} of {dtype:?} overflows")))?;
    if !size.is_multiple_of(8) {
        return Err(err(format!(
            "shape {shape:?} of {dtype:?} is not a whole number of bytes"
        )));
    }
    if end < start {
        return Err(err(format!(
            "data_offsets [{start}, {end}] end before they start"
        )));
    }
    if end - start != size / 8 {
        return Err(err(format!(
            "data_offsets [{start}, {end}] hold {} bytes, but shape {shape:?} of {dtype:?} takes {}",
            end - start,
            size / 8
        )));
    }
    if end > data_len {
        return Err(err(format!(
            "data_offsets [{start}, {end}] run past the end of the data ({data_len} bytes): a truncated file, or corrupted offsets"
        )));
    }
    Ok(Entry {
        name,
        dtype,
        shape,
        start,
        end,
    })
}
