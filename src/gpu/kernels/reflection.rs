//! What build.rs reflected from each shader (build/shaders.rs): the composed source, the
//! override names, the bindings the entry point uses and the workgroup size. The library
//! compiles these sources, so what it binds is checked against what it runs.

/// How a binding is declared in WGSL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindingKind {
    /// `var<uniform>`.
    Uniform,
    /// `var<storage, read>`.
    StorageReadOnly,
    /// `var<storage, read_write>`.
    StorageReadWrite,
}

impl BindingKind {
    /// The usage a buffer needs to be bound this way.
    pub fn usage(self) -> wgpu::BufferUsages {
        match self {
            Self::Uniform => wgpu::BufferUsages::UNIFORM,
            Self::StorageReadOnly | Self::StorageReadWrite => wgpu::BufferUsages::STORAGE,
        }
    }

    /// The declaration, as WGSL writes it.
    pub fn wgsl(self) -> &'static str {
        match self {
            Self::Uniform => "var<uniform>",
            Self::StorageReadOnly => "var<storage, read>",
            Self::StorageReadWrite => "var<storage, read_write>",
        }
    }
}

/// One binding the kernel's entry point uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReflectedBinding {
    pub group: u32,
    pub binding: u32,
    /// The WGSL variable's name.
    pub name: &'static str,
    pub kind: BindingKind,
}

/// One dimension of `@workgroup_size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkgroupDim {
    Literal(u32),
    /// Set by the named override constant.
    Override(&'static str),
}

/// A kernel as build.rs found it.
pub struct Reflection {
    /// The file's stem, the kernel's one name (module, pipeline label, tests).
    pub name: &'static str,
    /// File name under `shaders/`.
    pub file: &'static str,
    /// The preludes its `// requires:` line names, in order.
    pub preludes: &'static [&'static str],
    /// The preludes and the kernel, composed as validated.
    pub source: &'static str,
    pub overrides: &'static [&'static str],
    /// Sorted by group and binding number.
    pub bindings: &'static [ReflectedBinding],
    pub workgroup_size: [WorkgroupDim; 3],
}

/// The tables build.rs generated.
pub mod generated {
    use super::{BindingKind, ReflectedBinding, Reflection, WorkgroupDim};
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// The size naga gives a named WGSL struct of the kernels (`None`: no kernel has it).
pub fn struct_size(name: &str) -> Option<u32> {
    generated::STRUCTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
}
