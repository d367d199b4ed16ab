//! A user's TorchScript module (`torch.jit.script` or `torch.jit.trace` output) as a trainable
//! network: its parameters by their `named_parameters()` names, sharing storage with the
//! module so that the optimizer's in-place updates are what the module computes with, and
//! its train/eval mode switched to match each forward pass (BatchNorm and dropout).
//!
//! Buffers (BatchNorm's running statistics) are read by the one call tch does not wrap
//! (`named_buffers.cpp`); checkpoints hold the whole module as the bytes `torch.jit.save`
//! writes, so whatever state it carries comes back on a resume.

use crate::fsio::read_regular;
use anyhow::{Result, anyhow, bail};
use std::cell::{Cell, RefCell};
use std::ffi::{CStr, c_char, c_void};
use std::path::Path;
use tch::{CModule, Device, Kind, Tensor};

unsafe extern "C" {
    fn microunify_named_buffers(
        module: *mut c_void,
        data: *mut c_void,
        each: extern "C" fn(*mut c_void, *const c_char, *mut c_void),
        fail: extern "C" fn(*mut c_void, *const c_char),
    );
}

/// What `microunify_named_buffers` fills in.
#[derive(Default)]
struct Buffers {
    found: Vec<(String, Tensor)>,
    error: Option<String>,
}

fn c_text(s: *const c_char) -> String {
    // SAFETY: the C++ side passes NUL-terminated strings that live for the call.
    unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
}

extern "C" fn add_buffer(data: *mut c_void, name: *const c_char, tensor: *mut c_void) {
    // SAFETY: `data` is the `Buffers` passed below, `tensor` a new `torch::Tensor*` whose
    // ownership passes to the tch tensor (which frees it on drop).
    let b = unsafe { &mut *(data as *mut Buffers) };
    let t = unsafe { Tensor::from_ptr(tensor as *mut torch_sys::C_tensor) };
    b.found.push((c_text(name), t));
}

extern "C" fn buffer_error(data: *mut c_void, message: *const c_char) {
    // SAFETY: as in `add_buffer`.
    let b = unsafe { &mut *(data as *mut Buffers) };
    b.error = Some(c_text(message));
}

// tch keeps the `torch::jit::Module*` as the one private field of `CModule`; reading it is
// the only way to hand the module to our C++ call, so its layout is checked here.
const _: () = assert!(std::mem::size_of::<CModule>() == std::mem::size_of::<*mut c_void>());

/// The buffers of `m` (recursively, by their `named_buffers()` names), sharing storage.
fn named_buffers(m: &CModule) -> Result<Vec<(String, Tensor)>> {
    // SAFETY: `CModule` is a single raw pointer (checked above), valid while `m` lives.
    let ptr = unsafe { *(m as *const CModule as *const *mut c_void) };
    let mut b = Buffers::default();
    // SAFETY: the callbacks only touch `b`, which outlives the call.
    unsafe {
        microunify_named_buffers(
            ptr,
            &mut b as *mut Buffers as *mut c_void,
            add_buffer,
            buffer_error,
        )
    };
    match b.error {
        Some(e) => bail!(
            "reading the module's buffers: {}",
            e.lines().next().unwrap_or("")
        ),
        None => Ok(b.found),
    }
}

/// The largest TorchScript file read.
pub const MAX_MODULE_BYTES: u64 = 16 << 30;

/// The first line of a libtorch exception (the rest is a C++ backtrace).
pub fn torch_message(e: &tch::TchError) -> String {
    let text = e.to_string();
    let text = text
        .strip_prefix("Internal torch error: ")
        .unwrap_or(&text)
        .to_string();
    let mut lines = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Exception raised from") && !l.starts_with("frame #"))
        .filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("unknown libtorch error").to_string();
    // TorchScript runtime errors put the Python-side message on a later line.
    match lines.find(|l| l.contains("Error:")) {
        Some(detail) if !first.contains("Error:") => format!("{first} {detail}"),
        _ => first,
    }
}

pub struct Script {
    module: RefCell<CModule>,
    /// The mode last set (`None` before the first forward pass).
    training: Cell<Option<bool>>,
    params: Vec<(String, Tensor)>,
}

impl Script {
    /// Loads a module from a file (a regular file, bounded; never a FIFO that blocks).
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let bytes = read_regular(path, MAX_MODULE_BYTES, "TorchScript model")?;
        Self::from_bytes(&bytes, device).map_err(|e| anyhow!("{}: {e}", path.display()))
    }

    /// Loads a module from the bytes `torch.jit.save` writes.
    pub fn from_bytes(bytes: &[u8], device: Device) -> Result<Self> {
        // The graph executor's optimisations (fusion, profiling-guided specialisation)
        // change float rounding after a module's first runs; without them every forward
        // pass computes the same way, so a resumed run ends where an uninterrupted one does.
        let _ = tch::jit::f_set_graph_executor_optimize(false);
        let mut module = CModule::load_data_on_device(&mut &bytes[..], device).map_err(|e| {
            anyhow!(
                "not a TorchScript module (torch.jit.save output): {}",
                torch_message(&e)
            )
        })?;
        let mut params = module
            .named_parameters()
            .map_err(|e| anyhow!("reading its parameters: {}", torch_message(&e)))?;
        if params.iter().any(|(_, t)| is_other_float(t.kind())) {
            // One precision throughout: the projection and the file are f32.
            module.to(device, Kind::Float, false);
            params = module
                .named_parameters()
                .map_err(|e| anyhow!("reading its parameters: {}", torch_message(&e)))?;
        }
        if params.is_empty() {
            bail!("the module has no parameters to train");
        }
        Ok(Self {
            module: RefCell::new(module),
            training: Cell::new(None),
            params,
        })
    }

    /// `(name, buffer)` in the module's order (shallow handles to its live buffers).
    pub fn buffers(&self) -> Result<Vec<(String, Tensor)>> {
        named_buffers(&self.module.borrow())
    }

    /// `(name, parameter)` in the module's order.
    pub fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }

    fn set_mode(&self, train: bool) -> Result<()> {
        if self.training.get() != Some(train) {
            let mut m = self.module.borrow_mut();
            let r = if train {
                m.f_set_train()
            } else {
                m.f_set_eval()
            };
            r.map_err(|e| anyhow!("switching the module's mode: {}", torch_message(&e)))?;
            self.training.set(Some(train));
        }
        Ok(())
    }

    /// The module's output for `x`, in training mode or in evaluation mode.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.set_mode(train)?;
        self.module
            .borrow()
            .forward_ts(&[x])
            .map_err(|e| anyhow!("{}", torch_message(&e)))
    }

    /// The module as `torch.jit.save` writes it, in evaluation mode if `eval` (what a user
    /// loads to run it) or in its current mode (a checkpoint).
    pub fn to_bytes(&self, eval: bool) -> Result<Vec<u8>> {
        let before = self.training.get();
        if eval {
            self.set_mode(false)?;
        }
        let bytes = saved_bytes(&self.module.borrow());
        if let Some(mode) = before {
            self.set_mode(mode)?;
        }
        bytes
    }
}

/// What `torch.jit.save` writes for `m` (tch saves only to a path, so through a temporary
/// folder).
pub fn saved_bytes(m: &CModule) -> Result<Vec<u8>> {
    let dir = tempfile::tempdir().map_err(|e| anyhow!("a temporary folder: {e}"))?;
    let path = dir.path().join("module.pt");
    m.save(&path)
        .map_err(|e| anyhow!("saving the TorchScript module: {}", torch_message(&e)))?;
    std::fs::read(&path).map_err(|e| anyhow!("reading the saved module: {e}"))
}

fn is_other_float(k: Kind) -> bool {
    matches!(k, Kind::Half | Kind::Double | Kind::BFloat16)
}
