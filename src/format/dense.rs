//! Decompression: the dense checkpoint a compressed file stands for, with the original
//! tensor names, shapes and dtypes, so that a strict `load_state_dict` takes it. Compressed
//! layers are reconstructed and cast back to their dtype; pass-through tensors and the
//! user's own metadata come back as they were; the format's own metadata is dropped.

use super::{CompressedFile, CompressedLayer, Out, dtype, serialize};
use crate::error::Result;
use std::borrow::Cow;

impl CompressedLayer {
    /// The dense reconstruction in the layer's own dtype, little-endian (PyTorch order).
    pub fn dense_bytes(&self) -> Vec<u8> {
        dtype::from_f32(self.dtype, &self.dense())
    }

    /// Bytes of the dense tensor this layer stands for.
    pub fn dense_size(&self) -> u64 {
        self.matrix.view().len() as u64 * (self.dtype.bitsize() / 8) as u64
    }
}

impl CompressedFile {
    /// The dense checkpoint as safetensors bytes (see the module documentation).
    pub fn to_dense_bytes(&self) -> Result<Vec<u8>> {
        self.check_names()?;
        let mut out: Vec<(String, Out<'_>)> = Vec::new();
        for l in &self.layers {
            let t = Out {
                dtype: l.dtype,
                shape: l.shape.clone(),
                data: Cow::Owned(l.dense_bytes()),
            };
            out.push((l.name.clone(), t));
        }
        for (name, r) in &self.passthrough {
            let t = Out {
                dtype: r.dtype,
                shape: r.shape.clone(),
                data: Cow::Borrowed(&r.data),
            };
            out.push((name.clone(), t));
        }
        serialize(out, self.user_metadata()?)
    }

    /// Bytes of every tensor of the dense checkpoint, all at their original dtypes.
    pub fn dense_size(&self) -> u64 {
        let layers: u64 = self.layers.iter().map(CompressedLayer::dense_size).sum();
        let rest: u64 = self.passthrough.values().map(|t| t.data.len() as u64).sum();
        layers + rest
    }
}
