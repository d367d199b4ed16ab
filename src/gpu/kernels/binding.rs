//! Bind groups from named fields: each kernel module declares a struct with one field per
//! binding, named as the WGSL variable, and every bind group made from it is first checked
//! against the bindings build.rs reflected from the shader. A field that is missing, extra,
//! numbered or named differently, or a buffer whose usage does not fit the declaration, is
//! an [`Error::Binding`] naming kernel and binding, never a silent mis-binding.

use super::Kernel;
use super::reflection::ReflectedBinding;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use std::num::NonZeroU64;

/// The host binds everything in this group.
pub const GROUP: u32 = 0;

/// A buffer, or one record of it, bound to one binding.
#[derive(Clone, Copy, Debug)]
pub struct Bound<'a> {
    buffer: &'a wgpu::Buffer,
    offset: u64,
    size: Option<NonZeroU64>,
}

impl<'a> Bound<'a> {
    /// The whole buffer.
    pub fn whole(buffer: &'a wgpu::Buffer) -> Self {
        Self {
            buffer,
            offset: 0,
            size: None,
        }
    }

    /// Record `index` of `T`s laid out `stride` bytes apart (one uniform per dispatch, see
    /// [`crate::gpu::buffers::uniform_slots`]).
    pub fn record<T>(buffer: &'a wgpu::Buffer, index: usize, stride: u64) -> Self {
        Self {
            buffer,
            offset: index as u64 * stride,
            size: NonZeroU64::new(std::mem::size_of::<T>() as u64),
        }
    }

    fn resource(&self) -> wgpu::BindingResource<'a> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: self.buffer,
            offset: self.offset,
            size: self.size,
        })
    }
}

/// One field of a bindings struct, as the check sees it.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    pub binding: u32,
    pub name: &'static str,
    pub usage: wgpu::BufferUsages,
}

fn describe(b: &ReflectedBinding) -> String {
    format!("{} `{}` ({})", b.binding, b.name, b.kind.wgsl())
}

/// Checks a bindings struct's fields against the kernel's reflected bindings.
pub fn check(kernel: &Kernel, fields: &[Field]) -> Result<()> {
    let reflected = kernel.bindings();
    let refuse = |binding: String, problem: String| Error::Binding {
        kernel: kernel.name.to_string(),
        binding,
        problem,
    };
    if let Some(b) = reflected.iter().find(|b| b.group != GROUP) {
        return Err(refuse(
            describe(b),
            format!("is in group {}; the host binds group {GROUP} only", b.group),
        ));
    }
    for (i, f) in fields.iter().enumerate() {
        let here = format!("{} `{}`", f.binding, f.name);
        if fields[..i].iter().any(|g| g.binding == f.binding) {
            return Err(refuse(here, "is given twice".into()));
        }
        let Some(r) = reflected.iter().find(|r| r.binding == f.binding) else {
            let used: Vec<String> = reflected.iter().map(describe).collect();
            return Err(refuse(
                here,
                format!(
                    "the entry point does not use this binding (it uses {})",
                    used.join(", ")
                ),
            ));
        };
        if r.name != f.name {
            return Err(refuse(
                here,
                format!("the shader names binding {} `{}`", r.binding, r.name),
            ));
        }
        if !f.usage.contains(r.kind.usage()) {
            return Err(refuse(
                describe(r),
                format!(
                    "the buffer bound to it has usage {:?}, without {:?}",
                    f.usage,
                    r.kind.usage()
                ),
            ));
        }
    }
    if let Some(r) = reflected
        .iter()
        .find(|r| !fields.iter().any(|f| f.binding == r.binding))
    {
        return Err(refuse(
            describe(r),
            "has no field in the bindings struct".into(),
        ));
    }
    Ok(())
}

/// Checks `fields` (binding number, WGSL name, what is bound) and creates the bind group.
pub fn bind_group(
    gpu: &Gpu,
    kernel: &Kernel,
    pipeline: &wgpu::ComputePipeline,
    label: &str,
    fields: &[(u32, &'static str, Bound)],
) -> Result<wgpu::BindGroup> {
    let checked: Vec<Field> = fields
        .iter()
        .map(|(binding, name, bound)| Field {
            binding: *binding,
            name,
            usage: bound.buffer.usage(),
        })
        .collect();
    check(kernel, &checked)?;
    let entries: Vec<wgpu::BindGroupEntry> = fields
        .iter()
        .map(|(binding, _, bound)| wgpu::BindGroupEntry {
            binding: *binding,
            resource: bound.resource(),
        })
        .collect();
    Ok(gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(label),
        layout: &pipeline.get_bind_group_layout(GROUP),
        entries: &entries,
    }))
}

/// Declares a kernel's bindings struct: `binding => wgsl_name` per field.
macro_rules! bindings {
    (
        $(#[$meta:meta])*
        pub struct $name:ident for $kernel:path {
            $($(#[$fmeta:meta])* $binding:literal => $field:ident,)*
        }
    ) => {
        $(#[$meta])*
        pub struct $name<'a> {
            $($(#[$fmeta])* pub $field: $crate::gpu::kernels::Bound<'a>,)*
        }

        impl<'a> $name<'a> {
            /// Binding number and WGSL variable name of each field.
            pub const FIELDS: &'static [(u32, &'static str)] =
                &[$(($binding, stringify!($field))),*];

            /// Checks the fields against the shader's reflected bindings and creates the
            /// bind group for `pipeline` (built from the same kernel).
            pub fn bind_group(
                &self,
                gpu: &$crate::gpu::Gpu,
                pipeline: &wgpu::ComputePipeline,
                label: &str,
            ) -> $crate::error::Result<wgpu::BindGroup> {
                $crate::gpu::kernels::binding::bind_group(
                    gpu,
                    &$kernel,
                    pipeline,
                    label,
                    &[$(($binding, stringify!($field), self.$field)),*],
                )
            }
        }
    };
}
pub(crate) use bindings;

/// The fields of a bindings struct, each with the usage its reflected binding needs: what
/// the check sees when only the field list can be wrong.
#[cfg(test)]
pub(crate) fn fields_of(kernel: &Kernel, declared: &[(u32, &'static str)]) -> Vec<Field> {
    declared
        .iter()
        .map(|&(binding, name)| Field {
            binding,
            name,
            usage: kernel
                .bindings()
                .iter()
                .find(|r| r.binding == binding)
                .map_or(
                    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::UNIFORM,
                    |r| r.kind.usage(),
                ),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::kernels::{ALL, COPY_VEC4, copy_vec4};

    /// Bindings structs that disagree with copy_vec4.wgsl; only their field lists are used.
    #[allow(dead_code)]
    mod wrong {
        use crate::gpu::kernels::COPY_VEC4;

        bindings! {
            /// copy_vec4's bindings with `dst` and `params` swapped.
            pub struct Swapped for COPY_VEC4 {
                0 => src,
                2 => dst,
                1 => params,
            }
        }

        bindings! {
            /// copy_vec4's bindings without `params`.
            pub struct Short for COPY_VEC4 {
                0 => src,
                1 => dst,
            }
        }

        bindings! {
            /// copy_vec4's bindings and one the shader does not have.
            pub struct Long for COPY_VEC4 {
                0 => src,
                1 => dst,
                2 => params,
                3 => extra,
            }
        }
    }
    use wrong::{Long, Short, Swapped};

    fn refusal(declared: &[(u32, &'static str)]) -> String {
        check(&COPY_VEC4, &fields_of(&COPY_VEC4, declared))
            .expect_err("a wrong field list must be refused")
            .to_string()
    }

    #[test]
    fn the_right_field_list_is_accepted() {
        check(
            &COPY_VEC4,
            &fields_of(&COPY_VEC4, copy_vec4::Bindings::FIELDS),
        )
        .unwrap();
    }

    #[test]
    fn a_field_list_that_disagrees_with_the_shader_is_refused() {
        let e = refusal(Swapped::FIELDS);
        assert!(
            e.contains("copy_vec4") && e.contains("2 `dst`") && e.contains("`params`"),
            "{e}"
        );
        let e = refusal(Short::FIELDS);
        assert!(e.contains("2 `params`") && e.contains("no field"), "{e}");
        let e = refusal(Long::FIELDS);
        assert!(e.contains("3 `extra`") && e.contains("does not use"), "{e}");
        let e = refusal(&[(0, "src"), (0, "src"), (1, "dst"), (2, "params")]);
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn a_buffer_without_the_usage_its_binding_needs_is_refused() {
        let mut fields = fields_of(&COPY_VEC4, copy_vec4::Bindings::FIELDS);
        fields[2].usage = wgpu::BufferUsages::STORAGE;
        let e = check(&COPY_VEC4, &fields).unwrap_err().to_string();
        assert!(
            e.contains("2 `params` (var<uniform>)") && e.contains("UNIFORM"),
            "{e}"
        );
    }

    #[test]
    fn every_kernel_binds_group_0_only() {
        for k in ALL {
            assert!(k.bindings().iter().all(|b| b.group == GROUP), "{}", k.name);
        }
    }
}
