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

/// Copies `parts` (buffer, byte offset, byte length) back to the host in one submission
/// and one wait; returns one vector per part. `what` names the data in errors; the wait
/// is bounded by [`Gpu::timeout`] (a hung kernel before the copy is reported, not waited
/// for forever).
pub fn read_ranges<T: bytemuck::Pod>(
    gpu: &Gpu,
    what: &str,
    parts: &[(&wgpu::Buffer, u64, u64)],
) -> Result<Vec<Vec<T>>> {
    let mut encoder = gpu
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("readback"),
        });
    let staging = Staging::record(gpu, &mut encoder, parts);
    let step = format!("reading back {what}");
    let index = gpu.submit(&step, encoder.finish())?;
    staging.finish(gpu, &step, index)
}

/// Where one part of a readback landed: (staging buffer, byte offset there, bytes).
type Segment = (usize, u64, u64);

/// Staging buffers kept from one readback to the next of the same sizes (a projection
/// reads the same tensors every round): a fresh buffer the size of a network costs its
/// allocation and a first touch of every page each time, on a CPU adapter as much as the
/// copy itself, and pinned host memory on a discrete GPU.
#[derive(Default)]
pub struct StagingPool(std::sync::Mutex<Vec<wgpu::Buffer>>);

impl StagingPool {
    /// The smallest kept buffer of at least `size` bytes (and not far larger: some
    /// backends copy a whole mapped range), or a new one.
    fn take(&self, gpu: &Gpu, size: u64) -> wgpu::Buffer {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let fits = |b: &wgpu::Buffer| b.size() >= size && b.size() <= size.max(1 << 20) * 2;
        let best = (0..kept.len())
            .filter(|&i| fits(&kept[i]))
            .min_by_key(|&i| kept[i].size());
        match best {
            Some(i) => kept.swap_remove(i),
            None => new_staging(gpu, size),
        }
    }

    fn put(&self, buffers: Vec<wgpu::Buffer>) {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        kept.extend(buffers);
    }
}

fn new_staging(gpu: &Gpu, size: u64) -> wgpu::Buffer {
    gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback staging"),
        size: size.max(wgpu::COPY_BUFFER_ALIGNMENT),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// Host-readable copies of buffer ranges, recorded into a caller's encoder so that they
/// ride in the same submission as the work that produces them, and read after one wait.
pub struct Staging<'p> {
    buffers: Vec<wgpu::Buffer>,
    /// Bytes of each buffer the copies fill (a pooled buffer may be larger).
    used: Vec<u64>,
    /// Where the buffers go back after a readback that succeeded.
    pool: Option<&'p StagingPool>,
    /// Per part, its pieces in order (a part larger than one staging buffer spans several).
    parts: Vec<(u64, Vec<Segment>)>,
}

impl<'p> Staging<'p> {
    /// Records the copies of `parts` (buffer, byte offset, byte length; lengths rounded up
    /// to whole words for the copy) into `encoder`.
    pub fn record(
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        parts: &[(&wgpu::Buffer, u64, u64)],
    ) -> Self {
        Self::record_in(gpu, encoder, parts, gpu.limits().max_buffer_size, None)
    }

    /// [`record`](Self::record) into buffers taken from `pool` (and given back to it).
    pub fn record_pooled(
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        parts: &[(&wgpu::Buffer, u64, u64)],
        pool: &'p StagingPool,
    ) -> Self {
        Self::record_in(
            gpu,
            encoder,
            parts,
            gpu.limits().max_buffer_size,
            Some(pool),
        )
    }

    /// [`record`](Self::record) into staging buffers of at most `cap` bytes each. All parts
    /// share one staging buffer while they fit in the adapter's largest buffer; past that
    /// they are spread over as few buffers as hold them (filled in order, a part cut where
    /// a buffer is full), all copied in the same submission and mapped after the same wait.
    pub fn record_capped(
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        parts: &[(&wgpu::Buffer, u64, u64)],
        cap: u64,
    ) -> Self {
        Self::record_in(gpu, encoder, parts, cap, None)
    }

    fn record_in(
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        parts: &[(&wgpu::Buffer, u64, u64)],
        cap: u64,
        pool: Option<&'p StagingPool>,
    ) -> Self {
        let cap = (cap / wgpu::COPY_BUFFER_ALIGNMENT).max(1) * wgpu::COPY_BUFFER_ALIGNMENT;
        let mut sizes: Vec<u64> = vec![0];
        let mut placed = Vec::with_capacity(parts.len());
        let mut copies = Vec::new();
        for &(buf, off, len) in parts {
            let mut segments = Vec::new();
            let (mut from, mut left) = (off, len.next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT));
            while left > 0 {
                if sizes[sizes.len() - 1] == cap {
                    sizes.push(0);
                }
                let s = sizes.len() - 1;
                let n = left.min(cap - sizes[s]);
                copies.push((buf, from, s, sizes[s], n));
                segments.push((s, sizes[s], n));
                sizes[s] += n;
                from += n;
                left -= n;
            }
            placed.push((len, segments));
        }
        let buffers: Vec<wgpu::Buffer> = sizes
            .iter()
            .map(|&size| match pool {
                Some(pool) => pool.take(gpu, size),
                None => new_staging(gpu, size),
            })
            .collect();
        for (buf, from, s, at, n) in copies {
            encoder.copy_buffer_to_buffer(buf, from, &buffers[s], at, n);
        }
        Self {
            buffers,
            used: sizes
                .iter()
                .map(|&s| s.max(wgpu::COPY_BUFFER_ALIGNMENT))
                .collect(),
            pool,
            parts: placed,
        }
    }

    /// How many staging buffers the copies use.
    pub fn buffers(&self) -> usize {
        self.buffers.len()
    }

    /// Waits (once, at most [`Gpu::timeout`]) for `submission`, which holds the recorded
    /// copies, and returns one vector per part. `step` names the work in errors.
    pub fn finish<T: bytemuck::Pod>(
        self,
        gpu: &Gpu,
        step: &str,
        submission: wgpu::SubmissionIndex,
    ) -> Result<Vec<Vec<T>>> {
        let lens: Vec<usize> = self.parts.iter().map(|p| p.0 as usize).collect();
        let mut out: Vec<Vec<T>> = vec![Vec::new(); lens.len()];
        // Parts cut over several staging buffers are gathered first.
        let mut pending: Vec<Vec<u8>> = vec![Vec::new(); lens.len()];
        self.finish_into(gpu, step, submission, |part, at, bytes| {
            if at == 0 && bytes.len() == lens[part] {
                out[part] = bytemuck::pod_collect_to_vec(bytes);
            } else {
                pending[part].extend_from_slice(bytes);
            }
        })?;
        for (part, bytes) in pending.iter().enumerate() {
            if !bytes.is_empty() {
                out[part] = bytemuck::pod_collect_to_vec(bytes);
            }
        }
        Ok(out)
    }

    /// [`finish`](Self::finish) without copies of its own: hands `sink` each part's bytes
    /// straight from the mapped staging, as `(part, byte offset in the part, bytes)`, in
    /// order (a part cut over several staging buffers comes in several calls).
    pub fn finish_into(
        self,
        gpu: &Gpu,
        step: &str,
        submission: wgpu::SubmissionIndex,
        mut sink: impl FnMut(usize, usize, &[u8]),
    ) -> Result<()> {
        let receivers: Vec<_> = self
            .buffers
            .iter()
            .zip(&self.used)
            .map(|(b, &used)| {
                let (tx, rx) = std::sync::mpsc::channel();
                b.slice(..used).map_async(wgpu::MapMode::Read, move |r| {
                    let _ = tx.send(r);
                });
                rx
            })
            .collect();
        gpu.wait_for(step, submission)?;
        for rx in &receivers {
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
        }
        let views = self
            .buffers
            .iter()
            .zip(&self.used)
            .map(|(b, &used)| b.slice(..used).get_mapped_range())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Readback(format!("{step}: {e}")))?;
        for (part, (len, segments)) in self.parts.iter().enumerate() {
            let mut done = 0usize;
            for &(s, at, n) in segments {
                // The copy is whole words; the part may end inside the last one.
                let n = (n as usize).min(*len as usize - done);
                sink(part, done, &views[s][at as usize..at as usize + n]);
                done += n;
            }
        }
        drop(views);
        for b in &self.buffers {
            b.unmap();
        }
        if let Some(pool) = self.pool {
            pool.put(self.buffers);
        }
        Ok(())
    }
}
