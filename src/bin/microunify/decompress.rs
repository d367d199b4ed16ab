//! `microunify decompress FILE --output DENSE.safetensors`: the dense checkpoint a
//! compressed file stands for, with the original tensor names, shapes and dtypes, so that
//! PyTorch's strict `load_state_dict` takes it (`CompressedFile::to_dense_bytes`).
//! Validates the whole input first; writes atomically; never over its own input. Needs no
//! GPU.

use anyhow::{Context, Result, bail};
use microunify::fsio;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// Compressed .safetensors file written by `microunify project` or train-gpu.
    file: PathBuf,
    /// Dense .safetensors file to write (atomically).
    #[arg(long)]
    output: PathBuf,
}

pub fn run(args: &Args) -> Result<()> {
    fsio::check_writable(&args.output).context("--output cannot be written")?;
    if same_file(&args.file, &args.output) {
        bail!(
            "--output {} is the input file itself: decompressing would replace the compressed file; name another output",
            args.output.display()
        );
    }
    let (f, size) = crate::inspect::read(&args.file)?;
    let bytes = f
        .to_dense_bytes()
        .with_context(|| format!("decompressing {}", args.file.display()))?;
    fsio::write_atomic(&args.output, &bytes)
        .with_context(|| format!("writing {}", args.output.display()))?;
    microunify::outln!(
        "decompressed {} layers ({} pass-through tensors) of {} ({size} bytes) into {} ({} bytes)",
        f.layers.len(),
        f.passthrough.len(),
        args.file.display(),
        args.output.display(),
        bytes.len()
    );
    Ok(())
}

/// Whether both paths name one existing file (through links, or the same path spelled
/// twice).
fn same_file(a: &Path, b: &Path) -> bool {
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        (ma.dev(), ma.ino()) == (mb.dev(), mb.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = (ma, mb);
        matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(x), Ok(y)) if x == y
        )
    }
}
