//! Buffer creation, uploads and readbacks, with labels so validation errors name buffers.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use wgpu::util::DeviceExt;

/// Poison for output buffers before a checked run: a NaN bit pattern no kernel produces, so
/// an output a kernel fails to write cannot pass for a result.
pub const POISON: u32 = 0x7fc0_dead;

/// A storage buffer that can also be written by the queue and copied out.
pub fn storage(gpu: &Gpu, label: &str, bytes: u64) -> wgpu::Buffer {
    gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes.max(16).next_multiple_of(4),
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    })
}

/// A storage buffer initialised with `data`.
pub fn storage_init<T: bytemuck::Pod>(gpu: &Gpu, label: &str, data: &[T]) -> wgpu::Buffer {
    let bytes: &[u8] = bytemuck::cast_slice(data);
    if bytes.is_empty() {
        return storage(gpu, label, 16);
    }
    gpu.device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytes,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
        })
}

/// The distance between uniform records of `T` bound at fixed offsets: the size of `T`
/// rounded up to the device's uniform offset alignment.
pub fn uniform_stride<T>(gpu: &Gpu) -> u64 {
    let align = gpu.limits().min_uniform_buffer_offset_alignment as u64;
    (std::mem::size_of::<T>() as u64).next_multiple_of(align)
}

/// A uniform buffer holding `slots` records of `T`, each at a multiple of `stride` bytes
/// (at least the record's size; see [`uniform_stride`]).
pub fn uniform_slots<T: bytemuck::Pod>(
    gpu: &Gpu,
    label: &str,
    slots: &[T],
    stride: u64,
) -> wgpu::Buffer {
    let mut bytes = vec![0u8; (slots.len().max(1) as u64 * stride) as usize];
    for (i, s) in slots.iter().enumerate() {
        let b = bytemuck::bytes_of(s);
        let at = i * stride as usize;
        bytes[at..at + b.len()].copy_from_slice(b);
    }
    gpu.device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: &bytes,
            usage: wgpu::BufferUsages::UNIFORM,
        })
}

/// Copies `ranges` (byte offset, byte length) of `buffers` back to the host in one
/// submission; returns one vector per range. `what` names the data in errors; the wait
/// is bounded by [`Gpu::timeout`] (a hung kernel before the copy is reported, not waited
/// for forever).
pub fn read_ranges<T: bytemuck::Pod>(
    gpu: &Gpu,
    what: &str,
    parts: &[(&wgpu::Buffer, u64, u64)],
) -> Result<Vec<Vec<T>>> {
    let total: u64 = parts.iter().map(|p| p.2.next_multiple_of(4)).sum();
    let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback staging"),
        size: total.max(4),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = gpu
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("readback"),
        });
    let mut at = 0;
    for &(buf, off, len) in parts {
        if len > 0 {
            encoder.copy_buffer_to_buffer(buf, off, &staging, at, len.next_multiple_of(4));
        }
        at += len.next_multiple_of(4);
    }
    let step = format!("reading back {what}");
    let index = gpu.submit(&step, encoder.finish())?;
    let slice = staging.slice(..);
    let (tx, rx) = std::sync::mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    gpu.wait_for(&step, index)?;
    // The callback runs inside the poll that saw the copy finish; never block on it.
    let mapped = match rx.try_recv() {
        Ok(r) => r,
        Err(_) => {
            let _ = gpu.device.poll(wgpu::PollType::Poll);
            rx.try_recv().map_err(|_| {
                Error::Readback(format!(
                    "{step}: the buffer was not mapped after its copy finished"
                ))
            })?
        }
    };
    mapped.map_err(|e| Error::Readback(format!("{step}: {e}")))?;
    let view = slice
        .get_mapped_range()
        .map_err(|e| Error::Readback(format!("{step}: {e}")))?;
    let mut out = Vec::with_capacity(parts.len());
    let mut at = 0usize;
    for &(_, _, len) in parts {
        let bytes = &view[at..at + len as usize];
        out.push(bytemuck::pod_collect_to_vec(bytes));
        at += len.next_multiple_of(4) as usize;
    }
    drop(view);
    staging.unmap();
    Ok(out)
}
