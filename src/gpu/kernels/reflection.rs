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
    use super::{BindingKind, ReflectedBinding, ReflectedStruct, Reflection, WorkgroupDim};
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// A named WGSL struct of the kernels as naga lays it out.
#[derive(Debug)]
pub struct ReflectedStruct {
    pub name: &'static str,
    /// Bytes.
    pub size: u32,
    /// Each member's name and byte offset, in order.
    pub members: &'static [(&'static str, u32)],
}

fn reflected_struct(name: &str) -> Option<&'static ReflectedStruct> {
    generated::STRUCTS.iter().find(|s| s.name == name)
}

/// The size naga gives a named WGSL struct of the kernels (`None`: no kernel has it).
pub fn struct_size(name: &str) -> Option<u32> {
    reflected_struct(name).map(|s| s.size)
}

/// Each member of a named WGSL struct of the kernels, its name and byte offset.
pub fn struct_members(name: &str) -> Option<&'static [(&'static str, u32)]> {
    reflected_struct(name).map(|s| s.members)
}

/// Checks a Rust twin against its WGSL struct: the same size, the same members in the
/// same order (`fields`: the twin's, as `(name, offset_of!)`), at the same offsets.
/// Used by each twin's test through [`twin_layout!`](crate::twin_layout).
pub fn check_twin(wgsl: &str, size: usize, fields: &[(&str, usize)]) -> Result<(), String> {
    let members = struct_members(wgsl).ok_or(format!("no kernel has a struct {wgsl}"))?;
    let want: Vec<(&str, usize)> = members.iter().map(|&(n, o)| (n, o as usize)).collect();
    if want != fields {
        return Err(format!(
            "{wgsl}: the twin's fields and offsets {fields:?} are not the WGSL's {want:?}"
        ));
    }
    match struct_size(wgsl) {
        Some(s) if s as usize == size => Ok(()),
        s => Err(format!(
            "{wgsl}: the twin has {size} bytes, the WGSL struct {s:?}"
        )),
    }
}

/// `twin_layout!(Twin, "WgslName", field, ...)`: asserts [`check_twin`] for a `#[repr(C)]`
/// twin whose fields are named as the WGSL members.
#[macro_export]
macro_rules! twin_layout {
    ($twin:ty, $wgsl:expr, $($field:ident),+ $(,)?) => {
        if let Err(e) = $crate::gpu::kernels::reflection::check_twin(
            $wgsl,
            ::std::mem::size_of::<$twin>(),
            &[$((stringify!($field), ::std::mem::offset_of!($twin, $field))),+],
        ) {
            panic!("{e}");
        }
    };
}
