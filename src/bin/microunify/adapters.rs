//! `microunify adapters`: what wgpu can see here, and the limits that shape our kernels.

use anyhow::Result;
use microunify::gpu::GpuOptions;
use microunify::gpu::context::{describe, matching_adapters};

#[derive(clap::Args)]
pub struct Args {
    /// Print every limit and feature, not just the ones the kernels depend on.
    #[arg(long)]
    all: bool,
}

pub fn run(options: &GpuOptions, args: &Args) -> Result<()> {
    let options = options.clone().with_env()?;
    let adapters = matching_adapters(&options)?;
    for (i, a) in adapters.iter().enumerate() {
        let info = a.get_info();
        let l = a.limits();
        microunify::outln!("[{i}] {}", describe(&info));
        if args.all {
            microunify::outln!("    limits: {l:#?}");
            microunify::outln!("    features: {:?}", a.features());
            continue;
        }
        microunify::outln!(
            "    max_storage_buffer_binding_size {} MiB, max_buffer_size {} MiB, min_storage_buffer_offset_alignment {}",
            l.max_storage_buffer_binding_size >> 20,
            l.max_buffer_size >> 20,
            l.min_storage_buffer_offset_alignment
        );
        microunify::outln!(
            "    workgroup storage {} KiB, invocations per workgroup {}, workgroups per dimension {}, subgroup size {}..{}",
            l.max_compute_workgroup_storage_size >> 10,
            l.max_compute_invocations_per_workgroup,
            l.max_compute_workgroups_per_dimension,
            info.subgroup_min_size,
            info.subgroup_max_size
        );
        let f = a.features();
        let named = [
            ("SHADER_F16", wgpu::Features::SHADER_F16),
            ("SUBGROUP", wgpu::Features::SUBGROUP),
            ("TIMESTAMP_QUERY", wgpu::Features::TIMESTAMP_QUERY),
        ];
        let have: Vec<&str> = named
            .iter()
            .filter(|(_, x)| f.contains(*x))
            .map(|(n, _)| *n)
            .collect();
        microunify::outln!("    features: {}", have.join(", "));
    }
    Ok(())
}
