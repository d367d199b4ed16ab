//! `microunify inspect FILE`: validates a compressed file (every check of
//! `microunify::format`) and prints per-layer block counts, storage bits and compression
//! ratios, then the totals and the file's size against the dense checkpoint it stands for.
//! Needs no GPU.

use anyhow::Result;
use microunify::Error;
use microunify::format::{CompressedFile, FORMAT_VERSION};
use microunify::fsio;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Compressed .safetensors file written by `microunify project`.
    file: PathBuf,
}

pub fn run(args: &Args) -> Result<()> {
    let (f, size) = read(&args.file)?;
    let bytes: usize = f.passthrough.values().map(|t| t.data.len()).sum();
    microunify::outln!(
        "{}: microunify format {FORMAT_VERSION}, {} compressed layers, {} pass-through tensors ({bytes} bytes); valid",
        args.file.display(),
        f.layers.len(),
        f.passthrough.len()
    );
    print_layers(&f);
    print_sizes(size, &f);
    Ok(())
}

/// Reads and validates a compressed file, returning it with its size in bytes. A file that
/// cannot be read at all is named by its own error; one that reads but is not a valid
/// compressed file gets said so.
pub fn read(path: &std::path::Path) -> Result<(CompressedFile, u64)> {
    let bytes = fsio::read_regular(path, u64::MAX, "compressed file")?;
    let f = CompressedFile::from_bytes(&bytes).map_err(|e| match e {
        Error::Format { .. } => anyhow::Error::new(e)
            .context(format!("{} is not a valid compressed file", path.display())),
        e => e.into(),
    })?;
    Ok((f, bytes.len() as u64))
}

/// The file's size on disk against the dense checkpoint's tensors, each at its original
/// dtype. One line of single whitespace-free tokens, like the table.
pub fn print_sizes(file_bytes: u64, f: &CompressedFile) {
    let dense = f.dense_size();
    microunify::outln!(
        "size {file_bytes} bytes on disk, dense {dense} bytes (tensors at their original dtypes), {:.2}x smaller",
        dense as f64 / file_bytes as f64
    );
}

/// The per-layer table and the totals line. Columns are single whitespace-free tokens so
/// scripts (and tests/cli.rs) can split them.
pub fn print_layers(f: &CompressedFile) {
    microunify::outln!(
        "{:<28} {:>14} {:>11} {:>6} {:>15} {:>8} {:>8} {:>8} {:>12} {:>9}",
        "layer",
        "shape",
        "GEMM",
        "block",
        "layout",
        "dense",
        "unified",
        "pruned",
        "bits",
        "ratio"
    );
    let (mut bits, mut weights, mut counts) = (0u64, 0u64, [0usize; 3]);
    for l in &f.layers {
        let m = &l.matrix;
        let c = m.counts();
        let shape: Vec<String> = l.shape.iter().map(usize::to_string).collect();
        microunify::outln!(
            "{:<28} {:>14} {:>11} {:>6} {:>15} {:>8} {:>8} {:>8} {:>12} {:>8.2}x",
            l.name,
            shape.join("x"),
            format!("{}x{}", m.view().rows, m.view().cols),
            m.block().to_string(),
            serde_json::to_value(l.layout)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            c[0],
            c[1],
            c[2],
            m.bits(),
            m.compression_ratio()
        );
        bits += m.bits();
        weights += m.view().len() as u64;
        for (t, x) in counts.iter_mut().zip(c) {
            *t += x;
        }
    }
    let ratio = if bits == 0 {
        0.0
    } else {
        32.0 * weights as f64 / bits as f64
    };
    microunify::outln!(
        "total {} layers {weights} weights dense {} unified {} pruned {} bits {bits} ratio {ratio:.2}x",
        f.layers.len(),
        counts[0],
        counts[1],
        counts[2]
    );
}
