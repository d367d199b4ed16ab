//! `microunify project`: one-shot compression of a `.safetensors` checkpoint. Every selected
//! 2-D (linear) or 4-D (conv) float tensor is projected on the GPU in one batched run with
//! `U = 0`; the result is written in the compressed format (`microunify::format`), other
//! tensors passing through unchanged. The input is checked before a GPU is opened, so bad
//! arguments and bad files fail fast and without an adapter.

use anyhow::{Context, Result, anyhow, bail};
use microunify::block::{ConvLayout, to_gemm};
use microunify::compressed::CompressedMatrix;
use microunify::format::{CompressedFile, CompressedLayer, RawTensor};
use microunify::gpu::projection::Tensor;
use microunify::gpu::{Gpu, GpuOptions, NetworkProjection};
use microunify::{BlockShape, GemmView, LayerSpec, Ratios, SelectionMode};
use regex::Regex;
use safetensors::{Dtype, SafeTensors};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint to compress (.safetensors).
    #[arg(long)]
    input: PathBuf,
    /// Compressed file to write (atomically).
    #[arg(long)]
    output: PathBuf,
    /// Block shape ROWSxCOLS for every layer.
    #[arg(long, default_value = "4x4")]
    block: BlockShape,
    /// Fraction of each layer's blocks to prune.
    #[arg(long)]
    prune: f64,
    /// Fraction of each layer's blocks to unify.
    #[arg(long)]
    unify: f64,
    /// Rank blocks across all selected layers instead of per layer.
    #[arg(long)]
    global: bool,
    /// Only tensors whose name matches this regex (default: all).
    #[arg(long)]
    include: Option<String>,
    /// Leave tensors whose name matches this regex uncompressed.
    #[arg(long)]
    exclude: Option<String>,
    /// GEMM view of conv weights: channel-major (PyTorch flatten) or position-major (NHWC).
    #[arg(long, default_value = "channel-major", value_parser = parse_layout)]
    layout: ConvLayout,
}

fn parse_layout(s: &str) -> Result<ConvLayout, String> {
    match s {
        "channel-major" => Ok(ConvLayout::ChannelMajor),
        "position-major" => Ok(ConvLayout::PositionMajor),
        _ => Err(format!(
            "unknown layout {s:?} (channel-major or position-major)"
        )),
    }
}

fn regex(flag: &str, pattern: &Option<String>) -> Result<Option<Regex>> {
    pattern
        .as_deref()
        .map(|p| Regex::new(p).with_context(|| format!("{flag} {p:?} is not a valid regex")))
        .transpose()
}

/// A tensor's values as f32 (little-endian F32, F16 or BF16), or `None` for other dtypes.
fn floats(dtype: Dtype, data: &[u8]) -> Option<Vec<f32>> {
    let halves = || {
        data.chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
    };
    match dtype {
        Dtype::F32 => Some(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        Dtype::F16 => Some(halves().map(|h| half::f16::from_bits(h).to_f32()).collect()),
        Dtype::BF16 => Some(
            halves()
                .map(|h| half::bf16::from_bits(h).to_f32())
                .collect(),
        ),
        _ => None,
    }
}

/// One tensor chosen for projection, in its GEMM view.
struct Selected {
    shape: Vec<usize>,
    layout: ConvLayout,
    spec: LayerSpec,
    gemm: Vec<f32>,
}

pub fn run(gpu_options: &GpuOptions, args: &Args) -> Result<()> {
    let ratios = Ratios::new(args.prune, args.unify, "--prune/--unify")?;
    let b = args.block;
    let include = regex("--include", &args.include)?;
    let exclude = regex("--exclude", &args.exclude)?;
    let input = args.input.display();
    let bytes = std::fs::read(&args.input).with_context(|| format!("reading {input}"))?;
    let bad = |e| anyhow!("{input} is not a valid safetensors file: {e}");
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(bad)?;
    let st = SafeTensors::deserialize(&bytes).map_err(bad)?;

    let mut out = CompressedFile::default();
    // Metadata of the input travels along, except a previous compression's own keys.
    if let Some(m) = header.metadata() {
        out.metadata.extend(
            m.iter()
                .filter(|(k, _)| !k.starts_with("microunify."))
                .map(|(k, v)| (k.clone(), v.clone())),
        );
    }
    let mut selected = Vec::new();
    for name in header.offset_keys() {
        let t = st.tensor(&name).map_err(bad)?;
        let wanted = include.as_ref().is_none_or(|r| r.is_match(&name))
            && !exclude.as_ref().is_some_and(|r| r.is_match(&name))
            && matches!(t.shape().len(), 2 | 4)
            && GemmView::of_shape(&name, t.shape()).is_ok();
        match floats(t.dtype(), t.data()).filter(|_| wanted) {
            Some(data) => {
                let shape = t.shape().to_vec();
                // The layout only means something for conv weights; recording it on a
                // linear one would only mislead readers of the metadata.
                let layout = if shape.len() == 4 {
                    args.layout
                } else {
                    ConvLayout::ChannelMajor
                };
                selected.push(Selected {
                    spec: LayerSpec::new(name.clone(), &shape, b)?,
                    gemm: to_gemm(&data, &shape, layout),
                    shape,
                    layout,
                });
            }
            None => {
                out.passthrough.insert(
                    name.clone(),
                    RawTensor {
                        dtype: t.dtype(),
                        shape: t.shape().to_vec(),
                        data: t.data().to_vec(),
                    },
                );
            }
        }
    }
    if selected.is_empty() {
        bail!(
            "no tensor selected: none of the {} tensors in {input} is a 2-D or 4-D F32/F16/BF16 tensor matching --include/--exclude",
            st.len()
        );
    }

    let gpu = Gpu::new(gpu_options)?;
    microunify::errln!("adapter: {gpu:?}");
    let specs: Vec<LayerSpec> = selected.iter().map(|s| s.spec.clone()).collect();
    let mode = if args.global {
        SelectionMode::Global(ratios)
    } else {
        SelectionMode::PerLayer(vec![ratios; specs.len()])
    };
    let start = Instant::now();
    let net = NetworkProjection::new(&gpu, specs, mode)?;
    for (l, s) in selected.iter().enumerate() {
        net.write(&gpu, Tensor::W, l, &s.gemm)?;
    }
    net.zero_dual(&gpu);
    net.run(&gpu)?;
    for (l, s) in selected.iter().enumerate() {
        let p = net.read_layer(&gpu, l)?;
        let m = CompressedMatrix::from_projection(&s.spec, &p)?;
        out.layers
            .push(CompressedLayer::new(&s.spec.name, &s.shape, s.layout, m)?);
    }
    let gpu_ms = start.elapsed().as_secs_f64() * 1e3;
    out.write(&args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;

    microunify::outln!(
        "projected {} layers on {} in {gpu_ms:.1} ms (block {b}, prune {}, unify {}{}); {} tensors passed through",
        out.layers.len(),
        gpu.info.name,
        args.prune,
        args.unify,
        if args.global { ", global" } else { "" },
        out.passthrough.len()
    );
    crate::inspect::print_layers(&out);
    microunify::outln!("wrote {}", args.output.display());
    Ok(())
}
