//! IDX files (the MNIST / Fashion-MNIST format), plain or gzipped, with every header field
//! checked: a wrong magic, a truncated body or mismatched counts is an error naming the
//! file. Images are unsigned bytes of any size and channel count: a 3-dimensional file is
//! `N×H×W` (one channel), a 4-dimensional one `N×C×H×W` (each image's channels one after
//! the other, each channel row-major); labels are a 1-dimensional file of `N` bytes. Whether the images and labels suit a model (image size, class count) is the
//! model's question: each set remembers the files it came from, so that the answer can
//! name them.

use crate::error::{Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Images (`count × channels × rows × cols` bytes, see the module) with their labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSet {
    pub channels: usize,
    pub rows: usize,
    pub cols: usize,
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    /// The files they were read from (for messages).
    pub image_file: PathBuf,
    pub label_file: PathBuf,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.channels * self.rows * self.cols;
        &self.images[i * n..(i + 1) * n]
    }
}

/// The most bytes an IDX file may hold (plain, or once gunzipped): 16 GiB, far above any
/// dataset in this format (MNIST's training images are 47 MB), and a bound on what a
/// corrupt header or a gzip bomb can make this program allocate.
pub const MAX_IDX_BYTES: u64 = 16 << 30;

fn bad(path: &Path, problem: impl Into<String>) -> Error {
    Error::Data {
        path: path.display().to_string(),
        problem: problem.into(),
    }
}

/// Decodes the bytes of an IDX file of unsigned bytes with `dims` dimensions, gzipped (by
/// its magic) or plain; returns (shape, body). See [`decode_idx`].
pub fn decode_idx_u8(
    path: &Path,
    raw: &[u8],
    dims: usize,
    max_bytes: u64,
) -> Result<(Vec<usize>, Vec<u8>)> {
    decode_idx(path, raw, &[dims], max_bytes)
}

/// Decodes the bytes of an IDX file of unsigned bytes with one of the numbers of dimensions
/// `allowed`, gzipped (by its magic) or plain; returns (shape, body). Memory is bounded by
/// what the header claims and the claim by `max_bytes`: a gzip stream that unpacks to more
/// than its header says (a "gzip bomb") is cut off after one byte too many, never buffered
/// whole.
pub fn decode_idx(
    path: &Path,
    raw: &[u8],
    allowed: &[usize],
    max_bytes: u64,
) -> Result<(Vec<usize>, Vec<u8>)> {
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return parse_idx(path, raw, allowed, max_bytes);
    }
    let gz_err = |e: std::io::Error| bad(path, format!("corrupt gzip stream: {e}"));
    let mut stream = flate2::read::GzDecoder::new(raw);
    let mut header = Vec::new();
    (&mut stream)
        .take(4)
        .read_to_end(&mut header)
        .map_err(gz_err)?;
    let dims = magic_dims(path, &header, allowed)?;
    (&mut stream)
        .take(4 * dims as u64)
        .read_to_end(&mut header)
        .map_err(gz_err)?;
    let (shape, n) = header_shape(path, &header, allowed, max_bytes)?;
    let mut body = Vec::with_capacity(n);
    stream
        .take(n as u64 + 1)
        .read_to_end(&mut body)
        .map_err(gz_err)?;
    if body.len() > n {
        return Err(bad(
            path,
            format!("unpacks to more bytes than shape {shape:?} holds ({n} bytes)"),
        ));
    }
    check_body_len(path, &shape, n, body.len())?;
    Ok((shape, body))
}

/// The number of dimensions in an IDX magic (the first four bytes), checked: two zero
/// bytes, type 0x08 (unsigned byte), one of the numbers of dimensions `allowed`.
fn magic_dims(path: &Path, bytes: &[u8], allowed: &[usize]) -> Result<usize> {
    if bytes.len() < 4 {
        return Err(bad(
            path,
            format!("truncated header: {} bytes", bytes.len()),
        ));
    }
    let dims = bytes[3] as usize;
    if bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 || !allowed.contains(&dims) {
        let magics: Vec<String> = allowed.iter().map(|d| format!("000008{d:02x}")).collect();
        let counts: Vec<String> = allowed.iter().map(usize::to_string).collect();
        return Err(bad(
            path,
            format!(
                "wrong magic {:02x}{:02x}{:02x}{:02x}: expected {} (unsigned bytes, {} dimensions)",
                bytes[0],
                bytes[1],
                bytes[2],
                bytes[3],
                magics.join(" or "),
                counts.join(" or ")
            ),
        ));
    }
    Ok(dims)
}

/// The shape in an IDX header and the body length it implies, checked: magic, complete
/// header, no overflow, at most `max_bytes`.
fn header_shape(
    path: &Path,
    bytes: &[u8],
    allowed: &[usize],
    max_bytes: u64,
) -> Result<(Vec<usize>, usize)> {
    let dims = magic_dims(path, bytes, allowed)?;
    let header = 4 + 4 * dims;
    if bytes.len() < header {
        return Err(bad(
            path,
            format!("truncated header: {} bytes, need {header}", bytes.len()),
        ));
    }
    let shape: Vec<usize> = (0..dims)
        .map(|d| {
            let at = 4 + 4 * d;
            u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize
        })
        .collect();
    match shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
    {
        Some(n) if n <= max_bytes => Ok((shape, n as usize)),
        Some(n) => Err(bad(
            path,
            format!(
                "shape {shape:?} needs {n} bytes, more than the {max_bytes} an IDX file may have"
            ),
        )),
        None => Err(bad(path, format!("shape {shape:?} overflows"))),
    }
}

fn check_body_len(path: &Path, shape: &[usize], n: usize, got: usize) -> Result<()> {
    if got < n {
        return Err(bad(
            path,
            format!("truncated: shape {shape:?} needs {n} bytes, file has {got}"),
        ));
    }
    if got > n {
        return Err(bad(
            path,
            format!(
                "{} bytes past the end of shape {shape:?} ({n} bytes)",
                got - n
            ),
        ));
    }
    Ok(())
}

/// Parses a plain (not gzipped) IDX file of unsigned bytes with `dims` dimensions; returns
/// (shape, body).
pub fn parse_idx_u8(
    path: &Path,
    bytes: &[u8],
    dims: usize,
    max_bytes: u64,
) -> Result<(Vec<usize>, Vec<u8>)> {
    parse_idx(path, bytes, &[dims], max_bytes)
}

fn parse_idx(
    path: &Path,
    bytes: &[u8],
    allowed: &[usize],
    max_bytes: u64,
) -> Result<(Vec<usize>, Vec<u8>)> {
    let (shape, n) = header_shape(path, bytes, allowed, max_bytes)?;
    let body = &bytes[4 + 4 * shape.len()..];
    check_body_len(path, &shape, n, body.len())?;
    Ok((shape, body.to_vec()))
}

/// Reads and decodes one IDX file.
fn read_idx(path: &Path, allowed: &[usize]) -> Result<(Vec<usize>, Vec<u8>)> {
    let raw = super::read_dataset_file(path, MAX_IDX_BYTES, "IDX file")?;
    decode_idx(path, &raw, allowed, MAX_IDX_BYTES)
}

/// The numbers of dimensions of an image file: `N×H×W` or `N×C×H×W`.
const IMAGE_DIMS: [usize; 2] = [3, 4];

/// Loads an image file (`N×H×W` or `N×C×H×W`) and a label file (`N`) as one set.
pub fn load_pair(images: &Path, labels: &Path) -> Result<ImageSet> {
    let (ishape, ibody) = read_idx(images, &IMAGE_DIMS)?;
    let (lshape, lbody) = read_idx(labels, &[1])?;
    if ishape[0] != lshape[0] {
        return Err(bad(
            labels,
            format!(
                "{} labels for {} images in {}",
                lshape[0],
                ishape[0],
                images.display()
            ),
        ));
    }
    let [rows, cols] = [ishape[ishape.len() - 2], ishape[ishape.len() - 1]];
    Ok(ImageSet {
        channels: if ishape.len() == 4 { ishape[1] } else { 1 },
        rows,
        cols,
        images: ibody,
        labels: lbody,
        image_file: images.to_path_buf(),
        label_file: labels.to_path_buf(),
    })
}

/// The first existing file among `names`, each plain or `.gz`, in `dir`.
fn find(dir: &Path, names: &[&str]) -> Result<PathBuf> {
    let candidates: Vec<String> = names
        .iter()
        .flat_map(|n| [n.to_string(), format!("{n}.gz")])
        .collect();
    for c in &candidates {
        let path = dir.join(c);
        if path.is_file() {
            return Ok(path);
        }
    }
    Err(bad(
        dir,
        format!(
            "missing {} (or {})",
            candidates[0],
            candidates[1..].join(", ")
        ),
    ))
}

/// Train and test sets of an MNIST-format folder: MNIST's and Fashion-MNIST's file names,
/// `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
/// `t10k-labels-idx1-ubyte`, each plain or `.gz`; images with channels may be named
/// `…-images-idx4-ubyte` (the header, not the name, says how many dimensions a file has).
pub fn load_mnist_dir(dir: &Path) -> Result<(ImageSet, ImageSet)> {
    let train = load_pair(
        &find(dir, &["train-images-idx3-ubyte", "train-images-idx4-ubyte"])?,
        &find(dir, &["train-labels-idx1-ubyte"])?,
    )?;
    let test = load_pair(
        &find(dir, &["t10k-images-idx3-ubyte", "t10k-images-idx4-ubyte"])?,
        &find(dir, &["t10k-labels-idx1-ubyte"])?,
    )?;
    Ok((train, test))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(dims: &[u32], body: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            v.extend(d.to_be_bytes());
        }
        v.extend(body);
        v
    }

    const MAX: u64 = MAX_IDX_BYTES;

    fn gz(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_is_decoded_within_what_the_header_claims() {
        let p = Path::new("x.gz");
        let (shape, body) = decode_idx_u8(p, &gz(&idx(&[2, 3], &[7; 6])), 2, MAX).unwrap();
        assert_eq!((shape, body), (vec![2, 3], vec![7; 6]));
        let e = decode_idx_u8(p, &gz(&idx(&[2, 3], &[7; 5])), 2, MAX).unwrap_err();
        assert!(
            e.to_string().contains("truncated: shape [2, 3] needs 6"),
            "{e}"
        );
        // A bomb: a header claiming 6 bytes over 64 MiB of zeros is cut off, not unpacked.
        let bomb = gz(&[idx(&[2, 3], &[]), vec![0; 64 << 20]].concat());
        assert!(bomb.len() < 1 << 20);
        let e = decode_idx_u8(p, &bomb, 2, MAX).unwrap_err();
        assert!(
            e.to_string().contains("unpacks to more bytes than shape"),
            "{e}"
        );
        // A header claiming more than the bound is refused before anything is unpacked.
        let e = decode_idx_u8(p, &gz(&idx(&[1 << 16, 1 << 16], &[])), 2, 1 << 30).unwrap_err();
        assert!(e.to_string().contains("more than the 1073741824"), "{e}");
        let e = parse_idx_u8(p, &idx(&[1 << 16, 1 << 16], &[]), 2, 1 << 30).unwrap_err();
        assert!(e.to_string().contains("more than the 1073741824"), "{e}");
    }

    #[test]
    fn parses_and_rejects() {
        let p = Path::new("x");
        let (shape, body) = parse_idx_u8(p, &idx(&[2, 2, 2], &[1; 8]), 3, MAX).unwrap();
        assert_eq!((shape, body.len()), (vec![2, 2, 2], 8));
        let e = parse_idx_u8(p, &idx(&[2, 2, 2], &[1; 7]), 3, MAX).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        let e = parse_idx_u8(p, &idx(&[2, 2, 2], &[1; 9]), 3, MAX).unwrap_err();
        assert!(e.to_string().contains("past the end"), "{e}");
        let mut wrong = idx(&[3], &[0; 3]);
        wrong[2] = 0x0d;
        let e = parse_idx_u8(p, &wrong, 1, MAX).unwrap_err();
        assert!(e.to_string().contains("wrong magic"), "{e}");
        let e = parse_idx_u8(p, &[0, 0, 8], 1, MAX).unwrap_err();
        assert!(e.to_string().contains("truncated header"), "{e}");
        let e = parse_idx_u8(p, &idx(&[2], &[0; 2]), 3, MAX).unwrap_err();
        assert!(e.to_string().contains("wrong magic"), "{e}");
    }

    #[test]
    fn images_have_any_size_and_channel_count() {
        let p = Path::new("x");
        let body: Vec<u8> = (0..120).collect();
        for raw in [idx(&[2, 3, 4, 5], &body), gz(&idx(&[2, 3, 4, 5], &body))] {
            let (shape, got) = decode_idx(p, &raw, &IMAGE_DIMS, MAX).unwrap();
            assert_eq!((shape, &got), (vec![2, 3, 4, 5], &body));
        }
        let (shape, _) = decode_idx(p, &idx(&[1, 14, 56], &[0; 784]), &IMAGE_DIMS, MAX).unwrap();
        assert_eq!(shape, [1, 14, 56]);
        for raw in [idx(&[2, 2], &[0; 4]), gz(&idx(&[2, 2], &[0; 4]))] {
            let e = decode_idx(p, &raw, &IMAGE_DIMS, MAX).unwrap_err();
            assert_eq!(
                e.to_string(),
                "x: wrong magic 00000802: expected 00000803 or 00000804 (unsigned bytes, 3 or 4 dimensions)"
            );
        }
    }

    #[test]
    fn shipped_mnist_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/mnist");
        let (train, test) = load_mnist_dir(&dir).unwrap();
        assert_eq!((train.len(), test.len()), (60_000, 10_000));
        assert_eq!((train.channels, train.rows, train.cols), (1, 28, 28));
        // The first training label of the original release is a 5, the first test one a 7.
        assert_eq!((train.labels[0], test.labels[0]), (5, 7));
    }

    #[test]
    fn missing_and_corrupt_files_are_named() {
        let dir = std::env::temp_dir().join(format!("microunify-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = load_mnist_dir(&dir).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: missing train-images-idx3-ubyte (or train-images-idx3-ubyte.gz, \
                 train-images-idx4-ubyte, train-images-idx4-ubyte.gz)",
                dir.display()
            )
        );
        std::fs::write(
            dir.join("train-images-idx3-ubyte.gz"),
            [0x1f, 0x8b, 1, 2, 3],
        )
        .unwrap();
        std::fs::write(dir.join("train-labels-idx1-ubyte"), idx(&[1], &[3])).unwrap();
        let e = load_mnist_dir(&dir).unwrap_err().to_string();
        let gz = dir.join("train-images-idx3-ubyte.gz");
        assert!(
            e.starts_with(&format!("{}: corrupt gzip", gz.display())),
            "{e}"
        );
        assert!(!e.contains("tensor"), "an IDX file is a file: {e}");
        std::fs::write(&gz, idx(&[2, 1, 1], &[0, 0])).unwrap();
        let e = load_mnist_dir(&dir).unwrap_err().to_string();
        let labels = dir.join("train-labels-idx1-ubyte");
        assert_eq!(
            e,
            format!(
                "{}: 1 labels for 2 images in {}",
                labels.display(),
                gz.display()
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
