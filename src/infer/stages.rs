//! One dispatch of a network kernel (im2col, pool2d, argmax) bound to its buffers, ready to
//! record into a batch's command encoder.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::gpu::buffers::{uniform_slots, uniform_stride};
use crate::gpu::kernels::argmax::{self, ArgmaxParams};
use crate::gpu::kernels::im2col::{self, Im2colParams};
use crate::gpu::kernels::pool2d::{self, Pool2dParams};
use crate::gpu::kernels::{self, Bound, Kernel};

/// A kernel, its bind group and its workgroup grid.
pub struct Dispatch {
    pub label: String,
    pipeline: wgpu::ComputePipeline,
    bind: wgpu::BindGroup,
    groups: (u32, u32),
}

/// The buffers a network kernel reads and writes: the activation, the per-channel scale
/// and shift pending on it, and the output.
pub struct Io<'a> {
    pub input: &'a wgpu::Buffer,
    pub scale: &'a wgpu::Buffer,
    pub shift: &'a wgpu::Buffer,
    pub output: &'a wgpu::Buffer,
}

/// Refuses a dispatch whose `values` (or an index the kernel computes) pass u32.
pub fn check_u32(label: &str, what: &str, values: usize) -> Result<u32> {
    u32::try_from(values).map_err(|_| {
        Error::TooLarge(format!(
            "{label}: {what} of {values} values passes the kernels' 32-bit indices; use a smaller --batch"
        ))
    })
}

impl Dispatch {
    fn new<P: bytemuck::Pod>(
        gpu: &Gpu,
        kernel: &Kernel,
        label: String,
        params: &P,
        groups: (u32, u32),
        bind: impl FnOnce(Bound<'_>, &wgpu::ComputePipeline) -> Result<wgpu::BindGroup>,
    ) -> Result<Self> {
        let pipeline = gpu.pipeline(kernel)?;
        let stride = uniform_stride::<P>(gpu);
        let uniform = uniform_slots(gpu, &label, std::slice::from_ref(params), stride);
        let bind = gpu.scoped(&format!("binding {label}"), || {
            bind(Bound::record::<P>(&uniform, 0, stride), &pipeline)
        })??;
        Ok(Self {
            label,
            pipeline,
            bind,
            groups,
        })
    }

    /// im2col with params `p` (see shaders/im2col.wgsl) writing `io.output`.
    pub fn im2col(gpu: &Gpu, label: &str, p: &Im2colParams, io: Io) -> Result<Self> {
        let max_dim = gpu.limits().max_compute_workgroups_per_dimension;
        let label = format!("im2col of {label}");
        Self::new(
            gpu,
            &kernels::IM2COL,
            label.clone(),
            p,
            im2col::workgroups(p, max_dim)?,
            |p, pipeline| {
                im2col::Bindings {
                    input: Bound::whole(io.input),
                    scale: Bound::whole(io.scale),
                    shift: Bound::whole(io.shift),
                    x: Bound::whole(io.output),
                    p,
                }
                .bind_group(gpu, pipeline, &label)
            },
        )
    }

    /// pool2d with params `p` writing `io.output`.
    pub fn pool2d(gpu: &Gpu, label: &str, p: &Pool2dParams, io: Io) -> Result<Self> {
        let max_dim = gpu.limits().max_compute_workgroups_per_dimension;
        let label = label.to_string();
        Self::new(
            gpu,
            &kernels::POOL2D,
            label.clone(),
            p,
            pool2d::workgroups(p.total, max_dim),
            |p, pipeline| {
                pool2d::Bindings {
                    input: Bound::whole(io.input),
                    scale: Bound::whole(io.scale),
                    shift: Bound::whole(io.shift),
                    output: Bound::whole(io.output),
                    p,
                }
                .bind_group(gpu, pipeline, &label)
            },
        )
    }

    /// argmax with params `p` writing one class per column into `io.output`.
    pub fn argmax(gpu: &Gpu, label: &str, p: &ArgmaxParams, io: Io) -> Result<Self> {
        let max_dim = gpu.limits().max_compute_workgroups_per_dimension;
        let label = label.to_string();
        Self::new(
            gpu,
            &kernels::ARGMAX,
            label.clone(),
            p,
            argmax::workgroups(p.cols, max_dim),
            |p, pipeline| {
                argmax::Bindings {
                    input: Bound::whole(io.input),
                    scale: Bound::whole(io.scale),
                    shift: Bound::whole(io.shift),
                    classes: Bound::whole(io.output),
                    p,
                }
                .bind_group(gpu, pipeline, &label)
            },
        )
    }

    /// Records the dispatch into `encoder` (in a pass of its own).
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(&self.label),
            timestamp_writes: None,
        });
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind, &[]);
        pass.dispatch_workgroups(self.groups.0, self.groups.1, 1);
    }

    /// Runs the dispatch alone: submits and waits.
    pub fn run(&self, gpu: &Gpu) -> Result<()> {
        let mut encoder = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some(&self.label),
            });
        self.record(&mut encoder);
        gpu.submit_and_wait(&self.label, encoder.finish())
    }
}
