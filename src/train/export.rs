//! The end of a run: the structure check of the final weights, the per-layer report, and the
//! compressed `.safetensors`: compressed layers under their parameter names, and every other
//! tensor of the model's state (parameters and buffers) as it is, so that the decompressed
//! file is the model's whole state dict.

use crate::block::{BlockState, ConvLayout, LayerSpec, StateMap, compression_ratio, storage_bits};
use crate::compressed::CompressedMatrix;
use crate::format::{CompressedFile, CompressedLayer, RawTensor};
use crate::train::config::AdmmConfig;
use crate::train::mask::structure_violations;
use crate::train::network::Model;
use crate::train::report::{Blocks, LayerReport};
use crate::train::tensors::host;
use anyhow::{Context, Result};
use tch::{Kind, Tensor};

/// A tensor's bytes as they are: F32, F64, F16, BF16, I64, I32, U8 or Bool (BatchNorm's
/// `num_batches_tracked` is I64).
fn raw_tensor(t: &Tensor) -> Result<RawTensor> {
    use safetensors::Dtype;
    let t = t.detach().to_device(tch::Device::Cpu).contiguous();
    let (dtype, width) = match t.kind() {
        Kind::Float => (Dtype::F32, 4),
        Kind::Double => (Dtype::F64, 8),
        Kind::Half => (Dtype::F16, 2),
        Kind::BFloat16 => (Dtype::BF16, 2),
        Kind::Int64 => (Dtype::I64, 8),
        Kind::Int => (Dtype::I32, 4),
        Kind::Int16 => (Dtype::I16, 2),
        Kind::Int8 => (Dtype::I8, 1),
        Kind::Uint8 => (Dtype::U8, 1),
        Kind::Bool => (Dtype::BOOL, 1),
        k => anyhow::bail!("its type {k:?} has no safetensors equivalent"),
    };
    let n = t.numel();
    let mut data = vec![0u8; n * width];
    t.f_copy_data_u8(&mut data, n)
        .context("reading its bytes")?;
    Ok(RawTensor {
        dtype,
        shape: t.size().iter().map(|&d| d as usize).collect(),
        data,
    })
}

pub struct Export {
    pub file: CompressedFile,
    pub layers: Vec<LayerReport>,
    pub blocks: Blocks,
    /// 32 bits per weight of the compressed layers over their bits (docs/METHOD.md §1).
    pub compression_ratio: f64,
    /// Blocks that break their state; the file must not be written when > 0.
    pub violations: usize,
}

/// Checks and compresses the final `weights` (one per spec) with their hard-projection
/// `states` and `signs`; every other tensor of `model`'s state passes through.
pub fn export(
    cfg: &AdmmConfig,
    model: &Model,
    specs: &[LayerSpec],
    weights: &[Tensor],
    states: &[Vec<BlockState>],
    signs: &[Vec<f32>],
) -> Result<Export> {
    let mut violations = 0;
    let mut file = CompressedFile::default();
    let mut layers = Vec::new();
    let mut blocks = Blocks::default();
    let (mut bits, mut params) = (0u64, 0u64);
    for (l, (w, spec)) in weights.iter().zip(specs).enumerate() {
        let v = host(w)?;
        let bad = structure_violations(spec, &states[l], &v, &signs[l]);
        violations += bad;
        let shape: Vec<usize> = w.size().iter().map(|&d| d as usize).collect();
        let m = if bad == 0 {
            CompressedMatrix::from_dense(spec.view, spec.block, &v, &states[l])
                .with_context(|| format!("compressing layer {}", spec.name))?
        } else {
            // The layer is still reported, from its states; the file holds an all-pruned
            // stand-in for it (callers refuse to write the file when there are violations).
            CompressedMatrix::from_dense(
                spec.view,
                spec.block,
                &vec![0.0; v.len()],
                &vec![BlockState::Pruned; states[l].len()],
            )?
        };
        let grid = spec.grid();
        let [d, un, pr] = StateMap::from_states(&states[l]).counts();
        let layer_bits = storage_bits(&grid, &states[l]);
        blocks.dense += d;
        blocks.unified += un;
        blocks.pruned += pr;
        bits += layer_bits;
        params += spec.view.len() as u64;
        layers.push(LayerReport {
            name: spec.name.clone(),
            shape: shape.clone(),
            block: spec.block.to_string(),
            dense: d,
            unified: un,
            pruned: pr,
            bits: layer_bits,
            ratio: compression_ratio(&grid, &states[l]),
        });
        file.layers.push(CompressedLayer::new(
            &model.info.layers[l].param,
            &shape,
            ConvLayout::ChannelMajor,
            m,
        )?);
    }
    let compressed: Vec<&str> = model.info.layers.iter().map(|l| l.param.as_str()).collect();
    for (name, t) in model.variables().into_iter().chain(model.buffers()?) {
        if compressed.contains(&name.as_str()) {
            continue;
        }
        file.passthrough.insert(
            name.clone(),
            raw_tensor(&t).with_context(|| format!("tensor {name}"))?,
        );
    }
    file.metadata.insert(
        "train_gpu.config".into(),
        serde_json::to_string(cfg).context("encoding the config")?,
    );
    Ok(Export {
        file,
        layers,
        blocks,
        compression_ratio: 32.0 * params as f64 / bits.max(1) as f64,
        violations,
    })
}
