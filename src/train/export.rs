//! The end of a run: the structure check of the final weights, the per-layer report, and the
//! compressed `.safetensors` (compressed layers plus the other variables as F32).

use crate::block::{BlockState, ConvLayout, LayerSpec};
use crate::compressed::CompressedMatrix;
use crate::format::{CompressedFile, CompressedLayer, RawTensor};
use crate::train::config::AdmmConfig;
use crate::train::mask::structure_violations;
use crate::train::report::{Blocks, LayerReport};
use crate::train::tensors::host;
use anyhow::{Context, Result};
use tch::{Tensor, nn};

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
/// `states` and `signs`; every other variable of `vs` passes through.
pub fn export(
    cfg: &AdmmConfig,
    vs: &nn::VarStore,
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
            // Still report the layer; its compact form is not valid (callers refuse to
            // write the file when there are violations).
            let mut p = CompressedMatrix::from_dense(
                spec.view,
                spec.block,
                &vec![0.0; v.len()],
                &vec![BlockState::Pruned; states[l].len()],
            )?;
            p.states = states[l].clone();
            p
        };
        let [d, un, pr] = m.counts();
        blocks.dense += d;
        blocks.unified += un;
        blocks.pruned += pr;
        bits += m.bits();
        params += spec.view.len() as u64;
        layers.push(LayerReport {
            name: spec.name.clone(),
            shape: shape.clone(),
            block: spec.block.to_string(),
            dense: d,
            unified: un,
            pruned: pr,
            bits: m.bits(),
            ratio: m.compression_ratio(),
        });
        file.layers.push(CompressedLayer::new(
            &spec.name,
            &shape,
            ConvLayout::ChannelMajor,
            m,
        )?);
    }
    let compressed: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    for (name, var) in vs.variables() {
        let layer = name.rsplit_once('.').map_or(name.as_str(), |(l, _)| l);
        if name.ends_with(".weight") && compressed.contains(&layer) {
            continue;
        }
        let data = host(&var)?;
        file.passthrough.insert(
            name,
            RawTensor {
                dtype: safetensors::Dtype::F32,
                shape: var.size().iter().map(|&d| d as usize).collect(),
                data: bytemuck::cast_slice(&data).to_vec(),
            },
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
