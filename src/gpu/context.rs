//! The GPU context: picks an adapter, owns device, queue and the pipeline cache.
//! Getting a device is kept apart from the GPU work so tests can hand in their own.

use crate::error::{Error, Result};
use crate::gpu::kernels::Kernel;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Environment variable bounding every wait for GPU work, in seconds (fractions allowed).
pub const GPU_TIMEOUT_ENV: &str = "MICROUNIFY_GPU_TIMEOUT_S";
/// Bound on one wait for GPU work when [`GPU_TIMEOUT_ENV`] is unset: far above any
/// submission this crate makes on lavapipe (the slowest adapter it runs on), far below
/// "silence forever" when a kernel hangs.
pub const DEFAULT_GPU_TIMEOUT: Duration = Duration::from_secs(120);
/// Environment variable: `1` makes the projection submit each kernel dispatch on its own
/// and wait for it, so that a hang is reported with the exact kernel (slower; diagnosis).
pub const GPU_SYNC_ENV: &str = "MICROUNIFY_GPU_SYNC";

/// The wait bound from the value of [`GPU_TIMEOUT_ENV`] (`None`: unset or empty).
pub fn parse_timeout(value: Option<&str>) -> Result<Duration> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(DEFAULT_GPU_TIMEOUT);
    };
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 1e9)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| Error::Env {
            name: GPU_TIMEOUT_ENV,
            value: v.to_string(),
            expected: "expected a number of seconds greater than 0",
        })
}

/// Whether [`GPU_SYNC_ENV`] asks for one submission per kernel dispatch.
fn sync_from_env() -> bool {
    std::env::var(GPU_SYNC_ENV).is_ok_and(|v| v == "1")
}

/// A wgpu backend the user may ask for.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum BackendChoice {
    Vulkan,
    Metal,
    Dx12,
    Gl,
}

impl BackendChoice {
    pub fn backends(self) -> wgpu::Backends {
        match self {
            Self::Vulkan => wgpu::Backends::VULKAN,
            Self::Metal => wgpu::Backends::METAL,
            Self::Dx12 => wgpu::Backends::DX12,
            Self::Gl => wgpu::Backends::GL,
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "vulkan" => Ok(Self::Vulkan),
            "metal" => Ok(Self::Metal),
            "dx12" => Ok(Self::Dx12),
            "gl" => Ok(Self::Gl),
            _ => Err(Error::NoAdapter(format!(
                "unknown backend {s:?} (expected vulkan, metal, dx12 or gl)"
            ))),
        }
    }
}

/// Which adapter to use: a name substring and/or a backend; empty means the best one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuOptions {
    pub adapter: Option<String>,
    pub backend: Option<BackendChoice>,
}

impl GpuOptions {
    /// Fills unset fields from `MICROUNIFY_ADAPTER` and `MICROUNIFY_BACKEND`.
    pub fn with_env(mut self) -> Result<Self> {
        if self.adapter.is_none() {
            self.adapter = std::env::var("MICROUNIFY_ADAPTER")
                .ok()
                .filter(|s| !s.is_empty());
        }
        if self.backend.is_none()
            && let Ok(b) = std::env::var("MICROUNIFY_BACKEND")
            && !b.is_empty()
        {
            self.backend = Some(BackendChoice::parse(&b)?);
        }
        Ok(self)
    }

    fn backends(&self) -> wgpu::Backends {
        self.backend
            .map_or(wgpu::Backends::all(), BackendChoice::backends)
    }
}

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

/// Every adapter wgpu can see for the given options' backends.
pub fn enumerate(options: &GpuOptions) -> Vec<wgpu::Adapter> {
    pollster::block_on(instance(options.backends()).enumerate_adapters(options.backends()))
}

/// The backends wgpu can have on this operating system, by name.
fn platform_backends() -> &'static [(BackendChoice, &'static str)] {
    if cfg!(target_os = "macos") || cfg!(target_os = "ios") {
        &[
            (BackendChoice::Metal, "metal"),
            (BackendChoice::Vulkan, "vulkan (through MoltenVK)"),
        ]
    } else if cfg!(windows) {
        &[
            (BackendChoice::Dx12, "dx12"),
            (BackendChoice::Vulkan, "vulkan"),
            (BackendChoice::Gl, "gl"),
        ]
    } else {
        &[(BackendChoice::Vulkan, "vulkan"), (BackendChoice::Gl, "gl")]
    }
}

/// The adapters the options select (backend, then name substring), or an error that says
/// what exists instead: a backend this system cannot have, other backends' adapters, or,
/// with no adapter at all, how to get one.
pub fn matching_adapters(options: &GpuOptions) -> Result<Vec<wgpu::Adapter>> {
    let platform = platform_backends();
    if let Some(b) = options.backend
        && !platform.iter().any(|(p, _)| *p == b)
    {
        let names: Vec<&str> = platform.iter().map(|(_, n)| *n).collect();
        return Err(Error::NoAdapter(format!(
            "the {b:?} backend does not exist on this operating system; it has {}",
            names.join(", ")
        )));
    }
    let adapters = enumerate(options);
    if adapters.is_empty() {
        let others = enumerate(&GpuOptions::default());
        return Err(Error::NoAdapter(if others.is_empty() {
            let hint = if cfg!(target_os = "linux") {
                "; without a GPU, install Mesa's lavapipe (Debian: apt-get install mesa-vulkan-drivers libvulkan1)"
            } else {
                "; check the GPU driver"
            };
            format!("wgpu found no adapter at all{hint}")
        } else {
            let seen: Vec<String> = others.iter().map(|a| describe(&a.get_info())).collect();
            format!(
                "no adapter on backend {:?}; adapters on other backends: {}",
                options.backends(),
                seen.join("; ")
            )
        }));
    }
    let Some(wanted) = options.adapter.as_deref().map(str::to_lowercase) else {
        return Ok(adapters);
    };
    let (matching, rest): (Vec<_>, Vec<_>) = adapters
        .into_iter()
        .partition(|a| a.get_info().name.to_lowercase().contains(&wanted));
    if matching.is_empty() {
        let seen: Vec<String> = rest.iter().map(|a| describe(&a.get_info())).collect();
        return Err(Error::NoAdapter(format!(
            "no adapter name contains {:?}; available: {}",
            options.adapter.as_deref().unwrap_or_default(),
            seen.join("; ")
        )));
    }
    Ok(matching)
}

/// Mesa's device-select Vulkan layer prints `XDG_RUNTIME_DIR is invalid` lines when wgpu's
/// surface extensions wake it; a compute-only program needs neither. Must run before any
/// wgpu instance exists and before any other thread starts (it sets a process variable).
/// A value the user set is kept.
pub fn quiet_mesa_device_select() {
    if std::env::var_os("NODEVICE_SELECT").is_none() {
        // SAFETY: called first thing in `main`, while the process has one thread.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
}

/// Preference among adapters: real GPUs before software ones, native APIs before GL.
fn rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let device = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    let backend = u8::from(info.backend == wgpu::Backend::Gl);
    (device, backend)
}

/// One line naming an adapter: name, backend, type, driver.
pub fn describe(info: &wgpu::AdapterInfo) -> String {
    format!(
        "{} ({:?}, {:?}, driver {} {})",
        info.name, info.backend, info.device_type, info.driver, info.driver_info
    )
}

/// The device, its queue and the compiled pipelines.
pub struct Gpu {
    pub adapter: wgpu::Adapter,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    /// Keyed by file name plus the override constants (one pipeline per specialisation).
    pipelines: Mutex<HashMap<String, wgpu::ComputePipeline>>,
    /// Bound on every wait for GPU work ([`GPU_TIMEOUT_ENV`]).
    timeout: Duration,
    /// One submission per projection kernel dispatch ([`GPU_SYNC_ENV`]).
    stepwise: bool,
    /// The step whose wait ran out first, once one has: the GPU may still be busy forever,
    /// so later submissions and waits are refused ([`Error::GpuLost`]), and dropping the
    /// queue would block in wgpu's wait-for-idle. Never cleared.
    lost: Mutex<Option<String>>,
    /// Bounded waits that saw their work finish ([`waits`](Self::waits)).
    waits: AtomicU64,
}

impl Gpu {
    /// Opens the adapter the options (and environment) ask for.
    pub fn new(options: &GpuOptions) -> Result<Self> {
        let options = options.clone().with_env()?;
        let mut matching = matching_adapters(&options)?;
        matching.sort_by_key(|a| rank(&a.get_info()));
        Self::from_adapter(matching.swap_remove(0))
    }

    /// Opens a device on a given adapter with the adapter's own limits (wgpu's defaults
    /// would cap buffers at 256 MiB and workgroup storage at 16 KiB).
    pub fn from_adapter(adapter: wgpu::Adapter) -> Result<Self> {
        let timeout = parse_timeout(std::env::var(GPU_TIMEOUT_ENV).ok().as_deref())?;
        let desc = wgpu::DeviceDescriptor {
            label: Some("microunify"),
            required_features: wgpu::Features::empty(),
            required_limits: adapter.limits(),
            ..Default::default()
        };
        let (device, queue) =
            pollster::block_on(adapter.request_device(&desc)).map_err(Error::RequestDevice)?;
        let info = adapter.get_info();
        Ok(Self {
            adapter,
            device,
            queue,
            info,
            pipelines: Mutex::new(HashMap::new()),
            timeout,
            stepwise: sync_from_env(),
            lost: Mutex::new(None),
            waits: AtomicU64::new(0),
        })
    }

    /// The device's limits.
    pub fn limits(&self) -> wgpu::Limits {
        self.device.limits()
    }

    /// The compute pipeline of a kernel, compiled on first use and cached.
    pub fn pipeline(&self, kernel: &Kernel) -> Result<wgpu::ComputePipeline> {
        self.pipeline_with(kernel, kernel.constants)
    }

    /// The pipeline of a kernel specialised with other override constants (e.g. the GEMM
    /// per block shape); each distinct set is compiled once and cached.
    pub fn pipeline_with(
        &self,
        kernel: &Kernel,
        constants: &[(&str, f64)],
    ) -> Result<wgpu::ComputePipeline> {
        let key = constants
            .iter()
            .fold(kernel.file.to_string(), |k, (n, v)| format!("{k};{n}={v}"));
        let mut cache = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.get(&key) {
            return Ok(p.clone());
        }
        let source = kernel.source();
        let pipeline = self.scoped(&format!("compiling {}", kernel.file), || {
            let module = self
                .device
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(kernel.label()),
                    source: wgpu::ShaderSource::Wgsl(source.into()),
                });
            self.device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(kernel.label()),
                    layout: None,
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants,
                        zero_initialize_workgroup_memory: false,
                    },
                    cache: None,
                })
        })?;
        cache.insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// Runs `f` inside validation and out-of-memory error scopes and turns what they
    /// caught into an `Err` instead of a wgpu panic.
    pub fn scoped<T>(&self, context: &str, f: impl FnOnce() -> T) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = f();
        let v = pollster::block_on(validation.pop());
        let o = pollster::block_on(oom.pop());
        match v.or(o) {
            None => Ok(value),
            Some(reason) => Err(Error::Wgpu {
                context: context.to_string(),
                reason,
            }),
        }
    }

    /// The bound on every wait for GPU work.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Changes the bound on waits for GPU work (default: [`GPU_TIMEOUT_ENV`] or
    /// [`DEFAULT_GPU_TIMEOUT`]).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Whether the projection submits and waits for each kernel dispatch on its own.
    pub fn stepwise(&self) -> bool {
        self.stepwise
    }

    /// Sets [`stepwise`](Self::stepwise) (default: [`GPU_SYNC_ENV`]).
    pub fn set_stepwise(&mut self, on: bool) {
        self.stepwise = on;
    }

    /// The step whose bounded wait ran out first, if one has: the device is then lost.
    pub fn lost(&self) -> Option<String> {
        self.lost.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `Err(GpuLost)` naming the first stalled step, if a wait has run out.
    fn alive(&self, now: &str) -> Result<()> {
        match self.lost() {
            None => Ok(()),
            Some(step) => Err(Error::GpuLost {
                step,
                now: now.to_string(),
            }),
        }
    }

    /// Submits one command buffer, turning validation errors into an `Err` naming `step`.
    /// Refused at once on a lost device.
    pub fn submit(
        &self,
        step: &str,
        commands: wgpu::CommandBuffer,
    ) -> Result<wgpu::SubmissionIndex> {
        self.alive(&format!("submitting {step}"))?;
        self.scoped(step, || self.queue.submit([commands]))
    }

    /// Waits for everything submitted so far, at most [`timeout`](Self::timeout); `step`
    /// names the work in the error.
    pub fn wait(&self, step: &str) -> Result<()> {
        self.wait_timeout(step, None, self.timeout)
    }

    /// Waits for one submission, at most [`timeout`](Self::timeout).
    pub fn wait_for(&self, step: &str, submission: wgpu::SubmissionIndex) -> Result<()> {
        self.wait_timeout(step, Some(submission), self.timeout)
    }

    /// Waits for `submission` (or everything submitted, when `None`) at most `timeout`.
    /// A wait that runs out is [`Error::GpuTimeout`] naming `step`: a hung kernel shows up
    /// as an error instead of a process that blocks forever. The work itself is not
    /// cancelled (wgpu cannot), so the device is lost from then on: every later wait or
    /// submission is [`Error::GpuLost`] at once, naming this step.
    pub fn wait_timeout(
        &self,
        step: &str,
        submission: Option<wgpu::SubmissionIndex>,
        timeout: Duration,
    ) -> Result<()> {
        self.alive(&format!("waiting for {step}"))?;
        let poll = wgpu::PollType::Wait {
            submission_index: submission,
            timeout: Some(timeout),
        };
        match self.device.poll(poll) {
            Ok(_) => {
                self.waits.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(wgpu::PollError::Timeout) => {
                self.lost
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert_with(|| step.to_string());
                Err(Error::GpuTimeout {
                    step: step.to_string(),
                    seconds: timeout.as_secs_f64(),
                })
            }
            Err(e) => Err(Error::Readback(format!("waiting for {step}: {e}"))),
        }
    }

    /// How many bounded waits for GPU work have completed on this device: each is a round
    /// trip between host and GPU, what a loop over layers must not multiply.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// Submits one command buffer and waits for it (see [`wait_for`](Self::wait_for)).
    pub fn submit_and_wait(&self, step: &str, commands: wgpu::CommandBuffer) -> Result<()> {
        let index = self.submit(step, commands)?;
        self.wait_for(step, index)
    }
}

impl Drop for Gpu {
    /// A lost device and its queue are leaked instead of dropped: wgpu's queue drop waits
    /// for the GPU to go idle without a bound, which would turn the reported
    /// [`Error::GpuTimeout`] back into a silent hang at exit.
    fn drop(&mut self) {
        if self.lost().is_some() {
            std::mem::forget(self.queue.clone());
            std::mem::forget(self.device.clone());
        }
    }
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe(&self.info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_from_the_environment() {
        assert_eq!(parse_timeout(None).unwrap(), DEFAULT_GPU_TIMEOUT);
        assert_eq!(parse_timeout(Some(" ")).unwrap(), DEFAULT_GPU_TIMEOUT);
        assert_eq!(parse_timeout(Some("30")).unwrap(), Duration::from_secs(30));
        assert_eq!(
            parse_timeout(Some("0.25")).unwrap(),
            Duration::from_millis(250)
        );
        for bad in ["0", "-1", "soon", "inf", "NaN"] {
            let e = parse_timeout(Some(bad)).unwrap_err().to_string();
            assert!(e.contains(GPU_TIMEOUT_ENV) && e.contains(bad), "{e}");
        }
    }
}
