//! A vec4 copy: the memory-bandwidth yardstick for memory-bound kernels on the same adapter.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::gpu::buffers::{storage, uniform_slots};
use crate::gpu::kernels::copy_vec4::{self, CopyParams};
use crate::gpu::kernels::{Bound, COPY_VEC4};

/// Two buffers of the same size and the pipeline that copies one into the other.
pub struct VecCopy {
    pub src: wgpu::Buffer,
    pub dst: wgpu::Buffer,
    bind: wgpu::BindGroup,
    pipeline: wgpu::ComputePipeline,
    vec4s: u32,
}

impl VecCopy {
    /// Buffers of `bytes` each (rounded down to whole vec4s, capped to one binding).
    pub fn new(gpu: &Gpu, bytes: u64) -> Result<Self> {
        let limits = gpu.limits();
        let cap = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let bytes = bytes.min(cap) / 16 * 16;
        if bytes == 0 {
            return Err(Error::TooLarge(
                "copy benchmark needs at least 16 bytes".into(),
            ));
        }
        let vec4s = (bytes / 16) as u32;
        let pipeline = gpu.pipeline(&COPY_VEC4)?;
        gpu.scoped("allocating the copy benchmark", || {
            let src = storage(gpu, "copy src", bytes);
            let dst = storage(gpu, "copy dst", bytes);
            let record = CopyParams {
                len: vec4s,
                _pad0: 0,
                _pad1: 0,
                _pad2: 0,
            };
            let stride = size_of::<CopyParams>() as u64;
            let params = uniform_slots(gpu, "copy params", &[record], stride);
            let bind = copy_vec4::Bindings {
                src: Bound::whole(&src),
                dst: Bound::whole(&dst),
                params: Bound::whole(&params),
            }
            .bind_group(gpu, &pipeline, COPY_VEC4.label())?;
            Ok(Self {
                src,
                dst,
                bind,
                pipeline,
                vec4s,
            })
        })?
    }

    /// Records one copy.
    pub fn record(&self, gpu: &Gpu, encoder: &mut wgpu::CommandEncoder) {
        let max_dim = gpu.limits().max_compute_workgroups_per_dimension;
        let (x, y) = copy_vec4::workgroups(self.vec4s, max_dim);
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(COPY_VEC4.label()),
            timestamp_writes: None,
        });
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind, &[]);
        pass.dispatch_workgroups(x, y, 1);
    }

    /// Copies once and waits.
    pub fn run(&self, gpu: &Gpu) -> Result<()> {
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        self.record(gpu, &mut encoder);
        gpu.submit_and_wait(COPY_VEC4.name, encoder.finish())
    }

    /// Bytes read plus bytes written by one copy.
    pub fn bytes_moved(&self) -> u64 {
        2 * 16 * self.vec4s as u64
    }
}
