//! The library's one error type: every failure a user can cause names its culprit.

use thiserror::Error;

/// Everything the library can refuse or fail at. Each message is complete in itself: a
/// wrapped error's text is part of it, and it is not also exposed as a `source()`, so that
/// printing the chain (`{:#}`) never repeats it.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A block shape that does not parse as `RxC`, has a zero side, or is larger than the
    /// kernels run ([`crate::block::MAX_BLOCK_SIDE`] per side).
    #[error("invalid block shape {shape:?}: {why}")]
    BlockShape { shape: String, why: String },
    /// Prune/unify ratios outside [0, 1] or summing past 1.
    #[error("invalid ratios for {scope}: prune {prune}, unify {unify} ({why})")]
    Ratios {
        scope: String,
        prune: f64,
        unify: f64,
        why: &'static str,
    },
    /// A weight tensor whose shape has no GEMM view (wrong rank, zero size, length mismatch).
    #[error("layer {layer:?}: {why}")]
    Shape { layer: String, why: String },
    /// A NaN or infinite value in the input of a projection.
    #[error(
        "layer {layer:?}: non-finite value {value} at flat index {index} (row {row}, col {col})"
    )]
    NonFinite {
        layer: String,
        index: usize,
        row: usize,
        col: usize,
        value: f32,
    },
    /// The network does not fit the adapter's limits even after splitting.
    #[error("too large for the adapter: {0}")]
    TooLarge(String),
    /// No adapter matched the request, or none exists.
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),
    /// The adapter refused to create a device.
    #[error("requesting a device failed: {0}")]
    RequestDevice(wgpu::RequestDeviceError),
    /// A wgpu validation or out-of-memory error, captured through an error scope.
    #[error("wgpu error in {context}: {reason}")]
    Wgpu {
        context: String,
        reason: wgpu::Error,
    },
    /// GPU work did not finish within the wait bound (see [`crate::gpu::context::GPU_TIMEOUT_ENV`]):
    /// the GPU is hung or far slower than expected. `step` names the kernels waited for.
    #[error(
        "GPU work did not finish within {seconds} s: {step} (the GPU may be hung; set MICROUNIFY_GPU_TIMEOUT_S to wait longer)"
    )]
    GpuTimeout { step: String, seconds: f64 },
    /// An earlier wait on this device ran out ([`Error::GpuTimeout`]): its work may still be
    /// running forever, so every later submission or wait fails at once instead of
    /// stalling again. `step` names the work that stalled first; `now` what was refused.
    #[error(
        "GPU device lost: {now} refused, because an earlier wait for {step} did not finish (open a new device or restart the process)"
    )]
    GpuLost { step: String, now: String },
    /// A GPU result that differs from the CPU reference by more than rounding (a kernel
    /// bug, or a driver that ends work early): `what` names the computation.
    #[error("{what}: the GPU result differs from the CPU reference: {detail}")]
    Mismatch { what: String, detail: String },
    /// An environment variable the library reads holds a value it cannot use.
    #[error("environment variable {name}={value:?}: {expected}")]
    Env {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    /// Reading a buffer back from the GPU failed.
    #[error("GPU readback failed: {0}")]
    Readback(String),
    /// A WGSL shader failed to parse or validate.
    #[error("shader {file}: {message}")]
    Shader { file: String, message: String },
    /// A bind group whose fields disagree with the bindings the kernel's shader declares
    /// (src/gpu/kernels/binding.rs): `binding` is its number and name.
    #[error("kernel {kernel}, binding {binding}: {problem}")]
    Binding {
        kernel: String,
        binding: String,
        problem: String,
    },
    /// A compressed file (or the tensors to write into one) is malformed or inconsistent.
    #[error("tensor {tensor:?}: {problem}")]
    Format { tensor: String, problem: String },
    /// A dataset file (or its folder) that cannot be used: missing, malformed, or
    /// inconsistent with its partner file. `path` is the file (or folder) at fault.
    #[error("{path}: {problem}")]
    Data { path: String, problem: String },
    /// A normalisation setting (`MEAN,STD[;MEAN,STD...]`, `train` or `none`) that does not
    /// parse, has a non-finite value or a standard deviation that is not positive.
    #[error("normalize {spec:?}: {why}")]
    Normalize { spec: String, why: String },
    /// Reading or writing a file failed, or the file is not one this program may read.
    #[error("{path}: {reason}")]
    Io {
        path: String,
        reason: std::io::Error,
    },
    /// Another process holds the lock on a folder this process must write.
    #[error(
        "{path} is in use by another process{by}: wait for it to finish, or use another folder"
    )]
    Locked { path: String, by: String },
}

/// Shorthand used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
