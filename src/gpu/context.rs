//! The GPU context: picks an adapter, owns device, queue and the pipeline cache.
//! Getting a device is kept apart from the GPU work so tests can hand in their own.

use crate::error::{Error, Result};
use crate::gpu::kernels::Kernel;
use std::collections::HashMap;
use std::sync::Mutex;

/// A wgpu backend the user may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
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
}

impl Gpu {
    /// Opens the adapter the options (and environment) ask for.
    pub fn new(options: &GpuOptions) -> Result<Self> {
        let options = options.clone().with_env()?;
        let adapters = enumerate(&options);
        if adapters.is_empty() {
            return Err(Error::NoAdapter(format!(
                "wgpu found no adapter for backends {:?}; on Linux without a GPU install lavapipe (apt-get install mesa-vulkan-drivers)",
                options.backends()
            )));
        }
        let wanted = options.adapter.as_deref().map(str::to_lowercase);
        let mut matching: Vec<wgpu::Adapter> = adapters
            .iter()
            .filter(|a| {
                wanted
                    .as_ref()
                    .is_none_or(|w| a.get_info().name.to_lowercase().contains(w))
            })
            .cloned()
            .collect();
        if matching.is_empty() {
            let seen: Vec<String> = adapters.iter().map(|a| describe(&a.get_info())).collect();
            return Err(Error::NoAdapter(format!(
                "no adapter name contains {:?}; available: {}",
                options.adapter.unwrap_or_default(),
                seen.join("; ")
            )));
        }
        matching.sort_by_key(|a| rank(&a.get_info()));
        Self::from_adapter(matching.swap_remove(0))
    }

    /// Opens a device on a given adapter with the adapter's own limits (wgpu's defaults
    /// would cap buffers at 256 MiB and workgroup storage at 16 KiB).
    pub fn from_adapter(adapter: wgpu::Adapter) -> Result<Self> {
        let desc = wgpu::DeviceDescriptor {
            label: Some("microunify"),
            required_features: wgpu::Features::empty(),
            required_limits: adapter.limits(),
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc))?;
        let info = adapter.get_info();
        Ok(Self {
            adapter,
            device,
            queue,
            info,
            pipelines: Mutex::new(HashMap::new()),
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
                    source: wgpu::ShaderSource::Wgsl(source.as_str().into()),
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
            Some(source) => Err(Error::Wgpu {
                context: context.to_string(),
                source,
            }),
        }
    }

    /// Waits until the queue is idle.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::Readback(format!("waiting for the GPU: {e}")))
    }
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe(&self.info))
    }
}
