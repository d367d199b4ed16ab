//! `microunify infer`: a compressed file's network on wgpu over a test set: accuracy and
//! images/s, and with `--dense` the same network through the dense GEMM on the same
//! adapter (the speedup of one run).

use anyhow::{Context, Result, bail};
use microunify::bench::AdapterJson;
use microunify::data::{DataSource, Normalization};
use microunify::format::{CompressedFile, NETWORK_KEY};
use microunify::gpu::{Gpu, GpuOptions};
use microunify::infer::host::{Plan, WeightMode};
use microunify::infer::network::{Network, NetworkDef};
use microunify::infer::{Images, Measured, evaluate};
use microunify::{errln, fsio, outln};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Where Debian's `dataset-fashion-mnist` package puts the IDX files.
const FASHION_DEFAULT: &str = "/usr/share/datasets/fashion-mnist";
/// The most bytes a `--network` file may have.
const MAX_NETWORK_BYTES: u64 = 1 << 20;

#[derive(clap::Args)]
pub struct Args {
    /// The compressed file (format v2, written by train-gpu or `microunify project`).
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// Test set: mnist (assets/mnist), fashion-mnist (/usr/share/datasets/fashion-mnist)
    /// or a folder with the four MNIST-format IDX files.
    #[arg(
        long,
        value_name = "D",
        default_value = "mnist",
        conflicts_with = "data"
    )]
    dataset: String,
    /// A safetensors dataset instead: train.x, test.x (N×C×H×W, U8 or F32), train.y,
    /// test.y.
    #[arg(long, value_name = "FILE.safetensors")]
    data: Option<PathBuf>,
    /// The layer list (TOML, see README); default: the one the file records
    /// (microunify.network, written by train-gpu for its built-in networks).
    #[arg(long, value_name = "NET.toml")]
    network: Option<PathBuf>,
    /// Images per batch (one GPU submission each).
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Also run the network through the dense GEMM and report the speedup.
    #[arg(long)]
    dense: bool,
    /// `train`, `none` or MEAN,STD[;MEAN,STD...]; default: what the file records
    /// (microunify.normalization), else each channel's statistics over the training set.
    #[arg(long)]
    normalize: Option<Normalization>,
    /// Write the results as JSON here too (written atomically).
    #[arg(long, value_name = "OUT")]
    json: Option<PathBuf>,
    /// Only the first N test images.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Time each step of a batch alone (im2col, GEMM, pooling per layer) and print it.
    #[arg(long)]
    profile: bool,
}

#[derive(Serialize)]
struct Report {
    adapter: AdapterJson,
    batch: usize,
    images: usize,
    accuracy: f64,
    images_per_s: f64,
    dense_accuracy: Option<f64>,
    dense_images_per_s: Option<f64>,
    speedup: Option<f64>,
}

fn data_source(args: &Args) -> Result<DataSource> {
    if let Some(f) = &args.data {
        return Ok(DataSource::Safetensors(f.clone()));
    }
    Ok(DataSource::IdxDir(match args.dataset.as_str() {
        "mnist" => {
            let local = Path::new("assets/mnist");
            if local.is_dir() {
                local.to_path_buf()
            } else {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/mnist")
            }
        }
        "fashion-mnist" => {
            let p = PathBuf::from(FASHION_DEFAULT);
            if !p.is_dir() {
                bail!(
                    "Fashion-MNIST is not in {FASHION_DEFAULT}: install Debian's \
                     dataset-fashion-mnist package, or pass --dataset with the folder of its \
                     four IDX files"
                );
            }
            p
        }
        dir => {
            let p = PathBuf::from(dir);
            if !p.is_dir() {
                bail!(
                    "--dataset {dir:?}: not mnist, fashion-mnist, or a folder with the four \
                     MNIST-format IDX files"
                );
            }
            p
        }
    }))
}

fn network_def(args: &Args, file: &CompressedFile) -> Result<NetworkDef> {
    if let Some(p) = &args.network {
        let bytes = fsio::read_regular(p, MAX_NETWORK_BYTES, "network file")?;
        let text = String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", p.display()))?;
        return Ok(NetworkDef::parse(&text, &p.display().to_string())?);
    }
    match file.stored_network()? {
        Some(def) => Ok(def),
        None => bail!(
            "{} records no layer list ({NETWORK_KEY}: train-gpu writes it for its built-in \
             networks only); pass --network NET.toml (see README, `microunify infer`)",
            args.model.display()
        ),
    }
}

fn run_mode(
    gpu: &Gpu,
    net: &Network,
    args: &Args,
    set: &Images,
    mode: WeightMode,
) -> Result<Measured> {
    let what = match mode {
        WeightMode::Compressed => "micro-structured",
        WeightMode::Dense => "dense",
    };
    let plan = Plan::new(gpu, net, args.batch, mode)
        .with_context(|| format!("planning the {what} network"))?;
    let mut shown = 0;
    let m = evaluate(gpu, &plan, set, |done, total| {
        // A line per tenth of a long run.
        if total > 10 * args.batch && done * 10 >= (shown + 1) * total {
            shown = done * 10 / total;
            errln!("{what}: {done}/{total} images");
        }
    })?;
    outln!(
        "{what}: accuracy {:.2}% ({}/{}), {:.1} images/s (batch {})",
        m.accuracy(),
        m.correct,
        m.images,
        m.images_per_s(),
        args.batch
    );
    if args.profile {
        for (step, s) in plan.profile(gpu, 5)? {
            outln!("  {step}: {:.3} ms", s * 1e3);
        }
    }
    Ok(m)
}

pub fn run(options: &GpuOptions, args: &Args) -> Result<()> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let file = CompressedFile::read(&args.model)?;
    let def = network_def(args, &file)?;
    let source = data_source(args)?;
    let (train, test) = source.load()?;
    let stats = match (&args.normalize, file.stored_normalization()?) {
        (Some(n), _) => n.stats(&train)?,
        (None, Some(pairs)) => Normalization::Given(pairs).stats(&train)?,
        (None, None) => Normalization::Training.stats(&train)?,
    };
    let net = Network::resolve(&def, &file, test.shape)
        .with_context(|| format!("the network of {}", args.model.display()))?;
    if let Some(l) = test.labels.iter().find(|&&l| l as usize >= net.classes) {
        bail!(
            "{}: label {l}, but the network gives {} logits per image",
            test.from.labels,
            net.classes
        );
    }
    let set = Images::normalised(&test, &stats, args.limit);
    if set.is_empty() {
        bail!("--limit 0 leaves no image to classify");
    }
    let gpu = &Gpu::new(options)?;
    errln!("adapter: {gpu:?}");
    let micro = run_mode(gpu, &net, args, &set, WeightMode::Compressed)?;
    let dense = args
        .dense
        .then(|| run_mode(gpu, &net, args, &set, WeightMode::Dense))
        .transpose()?;
    let speedup = dense.map(|d| micro.images_per_s() / d.images_per_s());
    if let Some(s) = speedup {
        outln!("speedup over dense: {s:.2}x");
    }
    if let Some(path) = &args.json {
        let report = Report {
            adapter: AdapterJson::of(gpu),
            batch: args.batch,
            images: micro.images,
            accuracy: micro.accuracy(),
            images_per_s: micro.images_per_s(),
            dense_accuracy: dense.map(|d| d.accuracy()),
            dense_images_per_s: dense.map(|d| d.images_per_s()),
            speedup,
        };
        let text = serde_json::to_string_pretty(&report)?;
        fsio::write_atomic(path, format!("{text}\n").as_bytes())?;
    }
    Ok(())
}
