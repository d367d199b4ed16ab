//! The batched projection on the GPU: block statistics, per-group radix select of the
//! pruned and then the unified blocks (no per-block data leaves the GPU), and the apply
//! pass fused with the ADMM dual update. All layers go in one pass: the number of
//! dispatches depends on the number of chunks (network size over the binding limit),
//! never on the number of layers.

use crate::block::{BlockState, LayerSpec, SelectionMode, StateMap};
use crate::error::{Error, Result};
use crate::gpu::buffers::{
    Staging, StagingPool, read_ranges, storage, storage_init, uniform_slots, uniform_stride,
};
use crate::gpu::kernels::block_stats::RESCALE_HEADER;
use crate::gpu::kernels::common::{ChunkParams, Group, Layer, PassParams, Piece, SelState};
use crate::gpu::kernels::{
    self, Bound, SELECT_BLOCKS_PER_WORKGROUP, apply_projection, block_rescale, block_stats,
    pack_states, radix_histogram, radix_resolve, scale_dual,
};
use crate::gpu::packing::{BLOCK_PAD, pack_limits};
use crate::gpu::{Gpu, grid};
use crate::layout::{NetworkLayout, PackLimits};
use wgpu::util::DeviceExt;

pub mod stages;

/// Bounded GPU waits of one ADMM Z/U step driven the way the pipeline drives it, whatever
/// the number of layers: [`NetworkProjection::run`] (the projection and its non-finite
/// check), then [`NetworkProjection::read_tensors`] of `Z` and `U`. Uploads of `W` and the
/// dual rescale queue work without waiting.
pub const WAITS_PER_ROUND: u64 = 2;

/// Which of the per-chunk tensors to move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tensor {
    /// Weights `W` (input).
    W,
    /// Scaled dual `U` (input, updated in place to `U + W − Z`).
    U,
    /// Projection `Z = Π(W + U)` (output).
    Z,
}

/// One layer's results read back from the GPU.
#[derive(Clone, Debug, PartialEq)]
pub struct ProjectedLayer {
    pub z: Vec<f32>,
    pub u: Vec<f32>,
    pub states: Vec<BlockState>,
    /// `a` of unified blocks, 0 elsewhere.
    pub magnitudes: Vec<f32>,
    /// Signs of `W + U`, `words_per_block` words per block, for every block (only unified
    /// blocks need them; see [`crate::cpu::projection::sign_words`]), bit `r·bc + c` for
    /// weight `(r, c)` of the block's tile, the numbering the compressed matrix keeps.
    pub signs: Vec<u32>,
}

/// The radix-select passes: four 8-bit key digits, then as many 8-bit digits of the block
/// number as the network needs (ties in error go to the lower block number).
fn passes(
    total_blocks: usize,
    num_groups: u32,
    hist_workgroups: u32,
    grid: (u32, u32),
) -> Vec<PassParams> {
    let idx_bits = (usize::BITS - total_blocks.saturating_sub(1).leading_zeros()).max(1);
    let idx_digits = idx_bits.div_ceil(8);
    let mut out = Vec::new();
    let high = |bits_below: u32| -> u32 {
        if bits_below >= 32 {
            0
        } else {
            !((1u64 << bits_below) - 1) as u32
        }
    };
    for which in 0..2 {
        for d in 0..4u32 {
            let shift = 24 - 8 * d;
            out.push(PassParams {
                which,
                on_index: 0,
                shift,
                key_mask: high(shift + 8),
                idx_mask: 0,
                num_groups,
                num_workgroups: hist_workgroups,
                ..Default::default()
            });
        }
        for d in 0..idx_digits {
            let shift = 8 * (idx_digits - 1 - d);
            out.push(PassParams {
                which,
                on_index: 1,
                shift,
                key_mask: u32::MAX,
                idx_mask: high(shift + 8),
                num_groups,
                num_workgroups: hist_workgroups,
                ..Default::default()
            });
        }
    }
    // Each resolve arms the next pass of the same selection; the first pass of each
    // selection is armed by the host.
    let per_selection = out.len() / 2;
    for (i, p) in out.iter_mut().enumerate() {
        let last = (i + 1) % per_selection == 0;
        p.next_args = if last {
            u32::MAX
        } else {
            radix_histogram::ARGS_WORDS * (i as u32 + 1)
        };
        (p.grid_x, p.grid_y) = grid;
    }
    out
}

/// Bytes of chunk `c`'s block_rescale list: its header and a block number for each real
/// block the chunk serves (at most all of them are listed).
fn rescale_list_bytes(layout: &NetworkLayout, c: usize) -> u64 {
    let real: usize = layout.pieces[layout.chunks[c].pieces.clone()]
        .iter()
        .map(|p| {
            let place = &layout.placements[p.layer];
            p.blocks.end.min(place.block_start + place.num_blocks) - p.blocks.start
        })
        .sum();
    std::mem::size_of_val(&RESCALE_HEADER) as u64 + 4 * real as u64
}

/// One dispatch of the projection (see [`NetworkProjection::steps`]).
#[derive(Clone, Copy, Debug)]
enum Step {
    /// block_stats over chunk `c`.
    Stats(usize),
    /// block_rescale over the blocks of chunk `c` that block_stats listed (indirect).
    Rescale(usize),
    /// radix_histogram of pass `i`.
    Histogram(usize),
    /// radix_resolve of pass `i`.
    Resolve(usize),
    /// pack_states.
    Pack,
    /// apply_projection over chunk `c`.
    Apply(usize),
}

struct ChunkBuffers {
    w: wgpu::Buffer,
    u: wgpu::Buffer,
    z: wgpu::Buffer,
    /// The blocks block_stats lists for block_rescale (header, then a pair per block).
    rescale: wgpu::Buffer,
    stats: wgpu::BindGroup,
    rescale_bind: wgpu::BindGroup,
    apply: wgpu::BindGroup,
    scale: wgpu::BindGroup,
    block_slots: u32,
    /// f32 elements of each tensor's chunk buffer.
    len: u32,
}

/// A network resident on the GPU, ready to be projected again and again (one ADMM Z/U
/// step per [`NetworkProjection::run`]).
pub struct NetworkProjection {
    pub layout: NetworkLayout,
    pub mode: SelectionMode,
    chunks: Vec<ChunkBuffers>,
    key_prune: wgpu::Buffer,
    key_unify: wgpu::Buffer,
    magnitude: wgpu::Buffer,
    signs: wgpu::Buffer,
    state_map: wgpu::Buffer,
    hist: wgpu::Buffer,
    states: wgpu::Buffer,
    first_bad: wgpu::Buffer,
    indirect: wgpu::Buffer,
    /// The start values of `states`, `indirect` and `first_bad`, back to back: every
    /// recorded projection copies them in first (inside its command buffer, so that
    /// several projections recorded into one encoder each start afresh).
    reset: wgpu::Buffer,
    reset_bytes: [u64; 4],
    pass_list: Vec<PassParams>,
    select: Vec<(wgpu::BindGroup, wgpu::BindGroup)>,
    pack: wgpu::BindGroup,
    num_groups: u32,
    hist_workgroups: u32,
    /// `max_compute_workgroups_per_dimension` of the device.
    max_dim: u32,
    /// One [`scale_dual::ScaleParams`] per chunk, `scale_stride` apart (the factor is
    /// written before each rescale).
    scale_params: wgpu::Buffer,
    scale_stride: u64,
    /// The staging buffers of the per-round readbacks (the non-finite markers; Z and U:
    /// host-visible memory of twice the network's weights once they have been read).
    staging: StagingPool,
    pipelines: Pipelines,
}

/// The projection's compiled kernels.
struct Pipelines {
    block_stats: wgpu::ComputePipeline,
    block_rescale: wgpu::ComputePipeline,
    radix_histogram: wgpu::ComputePipeline,
    radix_resolve: wgpu::ComputePipeline,
    pack_states: wgpu::ComputePipeline,
    apply_projection: wgpu::ComputePipeline,
    scale_dual: wgpu::ComputePipeline,
}

impl NetworkProjection {
    /// Allocates a network on the GPU with the device's own binding limits.
    pub fn new(gpu: &Gpu, layers: Vec<LayerSpec>, mode: SelectionMode) -> Result<Self> {
        let limits = pack_limits(&gpu.limits());
        Self::with_limits(gpu, layers, mode, limits)
    }

    /// As [`new`](Self::new), with chosen (smaller) limits, e.g. to exercise splitting.
    pub fn with_limits(
        gpu: &Gpu,
        layers: Vec<LayerSpec>,
        mode: SelectionMode,
        limits: PackLimits,
    ) -> Result<Self> {
        mode.check(&layers)?;
        let device_limits = pack_limits(&gpu.limits());
        let limits = PackLimits {
            max_binding_bytes: limits
                .max_binding_bytes
                .min(device_limits.max_binding_bytes),
            offset_alignment: limits.offset_alignment.max(device_limits.offset_alignment),
        };
        let layout = NetworkLayout::new(layers, limits, BLOCK_PAD)?;
        gpu.scoped("allocating the projection", || {
            Self::allocate(gpu, layout, mode)
        })?
    }

    fn allocate(gpu: &Gpu, layout: NetworkLayout, mode: SelectionMode) -> Result<Self> {
        // The layout keeps every block's key within one binding; the rescale list holds a
        // header more than a chunk's keys, which only a network at that very limit fills.
        for c in 0..layout.chunks.len() {
            let bytes = rescale_list_bytes(&layout, c);
            if bytes > layout.limits.max_binding_bytes {
                return Err(Error::TooLarge(format!(
                    "chunk {} of the network: its block_rescale list needs {bytes} bytes, more than one storage binding ({} bytes); use larger blocks",
                    c + 1,
                    layout.limits.max_binding_bytes
                )));
            }
        }
        let pipelines = Pipelines {
            block_stats: gpu.pipeline(&kernels::BLOCK_STATS)?,
            block_rescale: gpu.pipeline(&kernels::BLOCK_RESCALE)?,
            radix_histogram: gpu.pipeline(&kernels::RADIX_HISTOGRAM)?,
            radix_resolve: gpu.pipeline(&kernels::RADIX_RESOLVE)?,
            pack_states: gpu.pipeline(&kernels::PACK_STATES)?,
            apply_projection: gpu.pipeline(&kernels::APPLY_PROJECTION)?,
            scale_dual: gpu.pipeline(&kernels::SCALE_DUAL)?,
        };
        let global = matches!(mode, SelectionMode::Global(_));
        let gpu_layers: Vec<Layer> = layout
            .layers
            .iter()
            .zip(&layout.placements)
            .map(|(l, p)| Layer {
                rows: l.view.rows as u32,
                cols: l.view.cols as u32,
                br: l.block.rows as u32,
                bc: l.block.cols as u32,
                block_cols: l.grid().block_cols() as u32,
                num_blocks: p.num_blocks as u32,
                block_start: p.block_start as u32,
                sign_offset: p.sign_offset as u32,
                words_per_block: p.words_per_block as u32,
                normalise: u32::from(global),
                vec4_rows: u32::from(l.block.cols % 4 == 0 && l.view.cols % 4 == 0),
                _pad1: 0,
            })
            .collect();
        // Each piece's slots start at a whole workgroup of its chunk's dispatches, so that
        // kernels find their piece once per workgroup.
        let mut block_slots = vec![0u32; layout.chunks.len()];
        let gpu_pieces: Vec<Piece> = layout
            .pieces
            .iter()
            .map(|p| {
                let thread_begin = block_slots[p.chunk];
                block_slots[p.chunk] +=
                    (p.blocks.len() as u32).next_multiple_of(kernels::BLOCKS_PER_WORKGROUP);
                Piece {
                    layer: p.layer as u32,
                    block_row0: p.block_rows.start as u32,
                    elem_offset: p.offset as u32,
                    block_begin: p.blocks.start as u32,
                    block_end: p.blocks.end as u32,
                    thread_begin,
                    _pad0: 0,
                    _pad1: 0,
                }
            })
            .collect();
        let groups: Vec<Group> = match &mode {
            SelectionMode::PerLayer(ratios) => layout
                .placements
                .iter()
                .zip(ratios)
                .map(|(p, r)| {
                    let (kp, ku) = r.counts(p.num_blocks);
                    Group {
                        block_begin: p.block_start as u32,
                        block_end: (p.block_start + p.padded_blocks) as u32,
                        prune: kp as u32,
                        unify: ku as u32,
                    }
                })
                .collect(),
            SelectionMode::Global(r) => {
                let real: usize = layout.placements.iter().map(|p| p.num_blocks).sum();
                let (kp, ku) = r.counts(real);
                vec![Group {
                    block_begin: 0,
                    block_end: layout.total_blocks as u32,
                    prune: kp as u32,
                    unify: ku as u32,
                }]
            }
        };
        let num_groups = groups.len() as u32;
        let initial_states: Vec<SelState> = groups
            .iter()
            .map(|g| (g.prune, g))
            .chain(groups.iter().map(|g| (g.unify, g)))
            .map(|(k, _)| SelState {
                k,
                rem: k,
                key: 0,
                idx: 0,
            })
            .collect();

        let limits = gpu.limits();
        let blocks = layout.total_blocks as u64;
        let layers_buf = storage_init(gpu, "projection layers", &gpu_layers);
        let pieces_buf = storage_init(gpu, "projection pieces", &gpu_pieces);
        let groups_buf = storage_init(gpu, "projection groups", &groups);
        let states = storage_init(gpu, "selection states", &initial_states);
        let hist = storage(
            gpu,
            "radix histograms",
            num_groups as u64 * kernels::RADIX as u64 * 4,
        );
        let key_prune = storage(gpu, "prune keys", blocks * 4);
        let key_unify = storage(gpu, "unify keys", blocks * 4);
        let magnitude = storage(gpu, "magnitudes", blocks * 4);
        let map_words = StateMap::word_len(layout.total_blocks) as u64;
        let state_map = storage(gpu, "block-state map", map_words * 4);
        let signs = storage(gpu, "sign words", layout.total_sign_words as u64 * 4);
        let first_bad = storage(
            gpu,
            "first non-finite index",
            layout.layers.len() as u64 * 4,
        );

        let chunk_params: Vec<ChunkParams> = layout
            .chunks
            .iter()
            .enumerate()
            .map(|(i, c)| ChunkParams {
                piece_begin: c.pieces.start as u32,
                piece_end: c.pieces.end as u32,
                num_threads: block_slots[i],
                max_groups: limits.max_compute_workgroups_per_dimension,
            })
            .collect();
        let chunk_stride = uniform_stride::<ChunkParams>(gpu);
        let chunk_uniform = uniform_slots(gpu, "chunk params", &chunk_params, chunk_stride);
        let hist_workgroups = (layout.total_blocks as u32) / SELECT_BLOCKS_PER_WORKGROUP;
        let hist_grid = grid(hist_workgroups, limits.max_compute_workgroups_per_dimension);
        let pass_list = passes(layout.total_blocks, num_groups, hist_workgroups, hist_grid);
        // Indirect arguments of every histogram pass: the first pass of a selection gets
        // the full grid when any group selects something, the others start at zero
        // workgroups and are armed by the preceding resolve while work remains.
        let per_selection = pass_list.len() / 2;
        let mut initial_args = vec![[0u32, 1, 1]; pass_list.len()];
        if groups.iter().any(|g| g.prune > 0) {
            initial_args[0] = [hist_grid.0, hist_grid.1, 1];
        }
        if groups.iter().any(|g| g.unify > 0) {
            initial_args[per_selection] = [hist_grid.0, hist_grid.1, 1];
        }
        let indirect = gpu
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("radix pass dispatch arguments"),
                contents: bytemuck::cast_slice(&initial_args),
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::INDIRECT
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
            });
        let none = vec![u32::MAX; layout.layers.len()];
        let reset_parts: [&[u8]; 4] = [
            bytemuck::cast_slice(&initial_states),
            bytemuck::cast_slice(&initial_args),
            bytemuck::cast_slice(&none),
            bytemuck::cast_slice(&RESCALE_HEADER),
        ];
        let reset_bytes = reset_parts.map(|p| p.len() as u64);
        let reset = gpu
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("projection reset values"),
                contents: &reset_parts.concat(),
                usage: wgpu::BufferUsages::COPY_SRC,
            });
        let pass_stride = uniform_stride::<PassParams>(gpu);
        let pass_uniform = uniform_slots(gpu, "radix pass params", &pass_list, pass_stride);
        let scale_stride = uniform_stride::<scale_dual::ScaleParams>(gpu);
        let scale_params = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("dual rescale params"),
            size: layout.chunks.len().max(1) as u64 * scale_stride,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let chunks: Vec<ChunkBuffers> = layout
            .chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let bytes = c.len as u64 * 4;
                let w = storage(gpu, &format!("W chunk {i}"), bytes);
                let u = storage(gpu, &format!("U chunk {i}"), bytes);
                let z = storage(gpu, &format!("Z chunk {i}"), bytes);
                let listed = rescale_list_bytes(&layout, i);
                let rescale = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&format!("block_rescale list, chunk {i}")),
                    size: listed,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::INDIRECT
                        | wgpu::BufferUsages::COPY_DST
                        | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                });
                let chunk = Bound::record::<ChunkParams>(&chunk_uniform, i, chunk_stride);
                let stats = block_stats::Bindings {
                    chunk,
                    layers: Bound::whole(&layers_buf),
                    pieces: Bound::whole(&pieces_buf),
                    w: Bound::whole(&w),
                    u: Bound::whole(&u),
                    key_prune: Bound::whole(&key_prune),
                    key_unify: Bound::whole(&key_unify),
                    mean_abs: Bound::whole(&magnitude),
                    signs: Bound::whole(&signs),
                    rescale: Bound::whole(&rescale),
                };
                let rescale_bind = block_rescale::Bindings {
                    chunk,
                    layers: stats.layers,
                    pieces: stats.pieces,
                    w: stats.w,
                    u: stats.u,
                    key_prune: stats.key_prune,
                    key_unify: stats.key_unify,
                    mean_abs: stats.mean_abs,
                    first_bad: Bound::whole(&first_bad),
                    signs: stats.signs,
                    rescale: stats.rescale,
                }
                .bind_group(
                    gpu,
                    &pipelines.block_rescale,
                    kernels::BLOCK_RESCALE.label(),
                )?;
                let apply = apply_projection::Bindings {
                    chunk,
                    layers: stats.layers,
                    pieces: stats.pieces,
                    w: stats.w,
                    u: stats.u,
                    z: Bound::whole(&z),
                    state_map: Bound::whole(&state_map),
                    magnitude: stats.mean_abs,
                }
                .bind_group(
                    gpu,
                    &pipelines.apply_projection,
                    kernels::APPLY_PROJECTION.label(),
                )?;
                let scale = scale_dual::Bindings {
                    u: stats.u,
                    params: Bound::record::<scale_dual::ScaleParams>(
                        &scale_params,
                        i,
                        scale_stride,
                    ),
                }
                .bind_group(
                    gpu,
                    &pipelines.scale_dual,
                    kernels::SCALE_DUAL.label(),
                )?;
                let stats =
                    stats.bind_group(gpu, &pipelines.block_stats, kernels::BLOCK_STATS.label())?;
                Ok(ChunkBuffers {
                    w,
                    u,
                    z,
                    rescale,
                    stats,
                    rescale_bind,
                    apply,
                    scale,
                    block_slots: chunk_params[i].num_threads,
                    len: c.len as u32,
                })
            })
            .collect::<Result<_>>()?;
        let select = (0..pass_list.len())
            .map(|i| {
                let params = Bound::record::<PassParams>(&pass_uniform, i, pass_stride);
                let histogram = radix_histogram::Bindings {
                    params,
                    groups: Bound::whole(&groups_buf),
                    key_prune: Bound::whole(&key_prune),
                    key_unify: Bound::whole(&key_unify),
                    states: Bound::whole(&states),
                    hist: Bound::whole(&hist),
                }
                .bind_group(
                    gpu,
                    &pipelines.radix_histogram,
                    kernels::RADIX_HISTOGRAM.label(),
                )?;
                let resolve = radix_resolve::Bindings {
                    params,
                    states: Bound::whole(&states),
                    hist: Bound::whole(&hist),
                    args: Bound::whole(&indirect),
                }
                .bind_group(
                    gpu,
                    &pipelines.radix_resolve,
                    kernels::RADIX_RESOLVE.label(),
                )?;
                Ok((histogram, resolve))
            })
            .collect::<Result<_>>()?;
        let pack = pack_states::Bindings {
            params: Bound::record::<PassParams>(&pass_uniform, 0, pass_stride),
            groups: Bound::whole(&groups_buf),
            key_prune: Bound::whole(&key_prune),
            key_unify: Bound::whole(&key_unify),
            states: Bound::whole(&states),
            state_map: Bound::whole(&state_map),
            magnitude: Bound::whole(&magnitude),
        }
        .bind_group(gpu, &pipelines.pack_states, kernels::PACK_STATES.label())?;
        Ok(Self {
            layout,
            mode,
            chunks,
            key_prune,
            key_unify,
            magnitude,
            signs,
            state_map,
            hist,
            states,
            first_bad,
            indirect,
            reset,
            reset_bytes,
            pass_list,
            select,
            pack,
            num_groups,
            hist_workgroups,
            max_dim: limits.max_compute_workgroups_per_dimension,
            scale_params,
            scale_stride,
            staging: StagingPool::default(),
            pipelines,
        })
    }

    fn chunk_buffer(&self, t: Tensor, chunk: usize) -> &wgpu::Buffer {
        let c = &self.chunks[chunk];
        match t {
            Tensor::W => &c.w,
            Tensor::U => &c.u,
            Tensor::Z => &c.z,
        }
    }

    fn check_layer(&self, layer: usize, len: usize) -> Result<()> {
        let spec = self.layout.layers.get(layer).ok_or_else(|| Error::Shape {
            layer: format!("#{layer}"),
            why: format!("the network has {} layers", self.layout.layers.len()),
        })?;
        if len != spec.view.len() {
            return Err(Error::Shape {
                layer: spec.name.clone(),
                why: format!(
                    "{len} values given for a {}x{} matrix",
                    spec.view.rows, spec.view.cols
                ),
            });
        }
        Ok(())
    }

    /// Uploads one layer's `W` or `U` (row-major GEMM view).
    pub fn write(&self, gpu: &Gpu, t: Tensor, layer: usize, data: &[f32]) -> Result<()> {
        self.check_layer(layer, data.len())?;
        let spec = &self.layout.layers[layer];
        for p in self.layout.pieces_of(layer) {
            let src = &data[p.source(spec)];
            gpu.queue.write_buffer(
                self.chunk_buffer(t, p.chunk),
                p.offset as u64 * 4,
                bytemuck::cast_slice(src),
            );
        }
        Ok(())
    }

    fn check_network<D: AsRef<[f32]>>(&self, data: &[D]) -> Result<()> {
        if data.len() != self.layout.layers.len() {
            return Err(Error::Shape {
                layer: "(the network)".into(),
                why: format!(
                    "{} layers given for a network of {}",
                    data.len(),
                    self.layout.layers.len()
                ),
            });
        }
        for (l, d) in data.iter().enumerate() {
            self.check_layer(l, d.as_ref().len())?;
        }
        Ok(())
    }

    /// Uploads every layer's `W` or `U` (row-major GEMM views, one per layer, in order):
    /// one staging upload per chunk, no wait (the queue orders it before later work).
    pub fn write_all<D: AsRef<[f32]>>(&self, gpu: &Gpu, t: Tensor, data: &[D]) -> Result<()> {
        self.check_network(data)?;
        let context = format!("uploading {t:?} of every layer");
        gpu.scoped(&context, || {
            for (c, chunk) in self.layout.chunks.iter().enumerate() {
                let Some(size) = std::num::NonZeroU64::new(chunk.len as u64 * 4) else {
                    continue;
                };
                let buffer = self.chunk_buffer(t, c);
                let Some(mut view) = gpu.queue.write_buffer_with(buffer, 0, size) else {
                    // wgpu reported why to the error scope.
                    return;
                };
                // Alignment gaps between pieces are written as zeros: no kernel reads
                // them, and a staging buffer's bytes are not known to be anything else.
                let mut at = 0;
                for p in &self.layout.pieces[chunk.pieces.clone()] {
                    let spec = &self.layout.layers[p.layer];
                    let src: &[u8] = bytemuck::cast_slice(&data[p.layer].as_ref()[p.source(spec)]);
                    let start = p.offset * 4;
                    view.slice(at..start).fill(0);
                    view.slice(start..start + src.len()).copy_from_slice(src);
                    at = start + src.len();
                }
                view.slice(at..).fill(0);
            }
        })
    }

    /// Multiplies `U` by `factor` everywhere, on the GPU (the rescale of the scaled dual
    /// when ρ changes): submitted, not waited for; later work and readbacks see it. Each
    /// value is rounded as the host's `x *= factor` in f32 ([`crate::cpu::scale_dual`]).
    pub fn scale_dual(&self, gpu: &Gpu, factor: f32) -> Result<()> {
        let mut slots = vec![0u8; self.scale_params.size() as usize];
        for (i, c) in self.chunks.iter().enumerate() {
            let record = scale_dual::ScaleParams {
                len: c.len,
                factor,
                ..Default::default()
            };
            let at = i * self.scale_stride as usize;
            let bytes = bytemuck::bytes_of(&record);
            slots[at..at + bytes.len()].copy_from_slice(bytes);
        }
        gpu.queue.write_buffer(&self.scale_params, 0, &slots);
        let mut encoder = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some(kernels::SCALE_DUAL.label()),
            });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(kernels::SCALE_DUAL.label()),
                timestamp_writes: None,
            });
            pass.set_pipeline(&self.pipelines.scale_dual);
            for c in &self.chunks {
                let (x, y) = scale_dual::workgroups(c.len, self.max_dim);
                pass.set_bind_group(0, &c.scale, &[]);
                pass.dispatch_workgroups(x, y, 1);
            }
        }
        gpu.submit(
            &format!("{} x{}", kernels::SCALE_DUAL.name, self.chunks.len()),
            encoder.finish(),
        )?;
        Ok(())
    }

    /// Sets `U` to zero everywhere (a one-shot projection, or the start of ADMM).
    pub fn zero_dual(&self, gpu: &Gpu) -> Result<()> {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        for c in &self.chunks {
            enc.clear_buffer(&c.u, 0, None);
        }
        gpu.submit("clearing U", enc.finish())?;
        Ok(())
    }

    /// Fills every output buffer with `bits`, so that a kernel that skips a write is caught.
    pub fn poison(&self, gpu: &Gpu, bits: u32) {
        let fill = |b: &wgpu::Buffer| {
            let v = vec![bits; (b.size() / 4) as usize];
            gpu.queue.write_buffer(b, 0, bytemuck::cast_slice(&v));
        };
        for c in &self.chunks {
            fill(&c.z);
        }
        for b in [
            &self.key_prune,
            &self.key_unify,
            &self.magnitude,
            &self.signs,
            &self.state_map,
        ] {
            fill(b);
        }
    }

    /// The dispatches of one projection, in order: statistics (and the rescale of the
    /// blocks they list) per chunk, the histogram and resolve of every radix pass, the
    /// state map, then apply per chunk.
    fn steps(&self) -> Vec<Step> {
        let chunks = 0..self.chunks.len();
        chunks
            .clone()
            .flat_map(|c| [Step::Stats(c), Step::Rescale(c)])
            .chain((0..self.select.len()).flat_map(|i| [Step::Histogram(i), Step::Resolve(i)]))
            .chain([Step::Pack])
            .chain(chunks.map(Step::Apply))
            .collect()
    }

    /// The kernel and what it works on, for error messages.
    fn describe(&self, step: &Step) -> String {
        let chunks = self.chunks.len();
        let pass = |i: usize| {
            let p = &self.pass_list[i];
            format!(
                "{} selection, {} digit at bit {}, pass {} of {}",
                if p.which == 0 { "prune" } else { "unify" },
                if p.on_index == 0 {
                    "key"
                } else {
                    "block-number"
                },
                p.shift,
                i + 1,
                self.pass_list.len()
            )
        };
        match *step {
            Step::Stats(c) => format!("block_stats (chunk {} of {chunks})", c + 1),
            Step::Rescale(c) => format!(
                "block_rescale (chunk {} of {chunks}, indirect dispatch)",
                c + 1
            ),
            Step::Histogram(i) => format!("radix_histogram ({}, indirect dispatch)", pass(i)),
            Step::Resolve(i) => format!("radix_resolve ({})", pass(i)),
            Step::Pack => "pack_states".to_string(),
            Step::Apply(c) => format!("apply_projection (chunk {} of {chunks})", c + 1),
        }
    }

    /// Records one dispatch (its pipeline and bind group included).
    fn encode(&self, pass: &mut wgpu::ComputePass, step: &Step) {
        let max_dim = self.max_dim;
        let p = &self.pipelines;
        match *step {
            Step::Stats(c) => {
                let c = &self.chunks[c];
                let (x, y) = block_stats::workgroups(c.block_slots, max_dim);
                pass.set_pipeline(&p.block_stats);
                pass.set_bind_group(0, &c.stats, &[]);
                pass.dispatch_workgroups(x, y, 1);
            }
            Step::Rescale(c) => {
                let c = &self.chunks[c];
                pass.set_pipeline(&p.block_rescale);
                pass.set_bind_group(0, &c.rescale_bind, &[]);
                pass.dispatch_workgroups_indirect(&c.rescale, block_rescale::ARGS_OFFSET);
            }
            Step::Histogram(i) => {
                pass.set_pipeline(&p.radix_histogram);
                pass.set_bind_group(0, &self.select[i].0, &[]);
                pass.dispatch_workgroups_indirect(&self.indirect, radix_histogram::args_offset(i));
            }
            Step::Resolve(i) => {
                pass.set_pipeline(&p.radix_resolve);
                pass.set_bind_group(0, &self.select[i].1, &[]);
                pass.dispatch_workgroups(radix_resolve::workgroups(self.num_groups), 1, 1);
            }
            Step::Pack => {
                let (x, y) = pack_states::workgroups(self.hist_workgroups, max_dim);
                pass.set_pipeline(&p.pack_states);
                pass.set_bind_group(0, &self.pack, &[]);
                pass.dispatch_workgroups(x, y, 1);
            }
            Step::Apply(c) => {
                let c = &self.chunks[c];
                let (x, y) = apply_projection::workgroups(c.block_slots, max_dim);
                pass.set_pipeline(&p.apply_projection);
                pass.set_bind_group(0, &c.apply, &[]);
                pass.dispatch_workgroups(x, y, 1);
            }
        }
    }

    /// Records the reset of the selection states, the histogram passes' dispatch
    /// arguments, the non-finite markers, the rescale lists and the histograms.
    fn record_reset(&self, encoder: &mut wgpu::CommandEncoder) {
        let [s, a, f, r] = self.reset_bytes;
        encoder.copy_buffer_to_buffer(&self.reset, 0, &self.states, 0, s);
        encoder.copy_buffer_to_buffer(&self.reset, s, &self.indirect, 0, a);
        encoder.copy_buffer_to_buffer(&self.reset, s + a, &self.first_bad, 0, f);
        for c in &self.chunks {
            encoder.copy_buffer_to_buffer(&self.reset, s + a + f, &c.rescale, 0, r);
        }
        encoder.clear_buffer(&self.hist, 0, None);
    }

    /// Records the whole projection into `encoder` (the caller submits): the reset of the
    /// selection state, statistics, both selections, the state map, then apply with the
    /// dual update. Self-contained: several projections may share one encoder.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder) {
        self.record_reset(encoder);
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("projection"),
            timestamp_writes: None,
        });
        for step in self.steps() {
            self.encode(&mut pass, &step);
        }
    }

    /// Projects once: `Z = Π(W + U)`, `U ← U + W − Z`, and the compact outputs. Waits for
    /// the GPU (at most [`Gpu::timeout`]) and fails, naming the layer and index, if
    /// `W + U` held a NaN or infinity. With [`Gpu::stepwise`] every dispatch is submitted
    /// and waited for on its own (see [`run_stepwise`](Self::run_stepwise)).
    pub fn run(&self, gpu: &Gpu) -> Result<()> {
        if gpu.stepwise() {
            return self.run_stepwise(gpu);
        }
        let mut encoder = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("projection"),
            });
        self.record(&mut encoder);
        let staging =
            Staging::record_pooled(gpu, &mut encoder, &[self.first_bad_part()], &self.staging);
        let step = format!(
            "projection (block_stats/block_rescale x{c}, radix_histogram/radix_resolve x{p}, pack_states, apply_projection x{c}; set {env}=1 to name the kernel)",
            c = self.chunks.len(),
            p = self.select.len(),
            env = crate::gpu::context::GPU_SYNC_ENV,
        );
        let index = gpu.submit(&step, encoder.finish())?;
        let bad = staging.finish::<u32>(gpu, &step, index)?.remove(0);
        self.report_non_finite(gpu, &bad)
    }

    /// [`run`](Self::run) with one submission and one bounded wait per kernel dispatch,
    /// so that a kernel that never finishes is named in the [`Error::GpuTimeout`]. The
    /// results are the same; only slower (a round trip per dispatch).
    pub fn run_stepwise(&self, gpu: &Gpu) -> Result<()> {
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        self.record_reset(&mut encoder);
        gpu.submit_and_wait("projection reset", encoder.finish())?;
        for step in self.steps() {
            let what = self.describe(&step);
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("projection step"),
                    timestamp_writes: None,
                });
                self.encode(&mut pass, &step);
            }
            gpu.submit_and_wait(&what, encoder.finish())?;
        }
        self.check_finite(gpu)
    }

    /// The per-layer non-finite markers written by the statistics kernel.
    fn first_bad_part(&self) -> (&wgpu::Buffer, u64, u64) {
        (&self.first_bad, 0, self.layout.layers.len() as u64 * 4)
    }

    /// Reads the per-layer non-finite markers written by the statistics kernel.
    pub fn check_finite(&self, gpu: &Gpu) -> Result<()> {
        let bad: Vec<u32> =
            read_ranges(gpu, "the non-finite markers", &[self.first_bad_part()])?.remove(0);
        self.report_non_finite(gpu, &bad)
    }

    /// The error naming the first layer whose marker is set (its input value read back).
    fn report_non_finite(&self, gpu: &Gpu, bad: &[u32]) -> Result<()> {
        let Some((l, &index)) = bad.iter().enumerate().find(|(_, i)| **i != u32::MAX) else {
            return Ok(());
        };
        let index = index as usize;
        let spec = &self.layout.layers[l];
        let (row, col) = (index / spec.view.cols, index % spec.view.cols);
        let piece = self
            .layout
            .pieces_of(l)
            .find(|p| p.source(spec).contains(&index))
            .expect("index inside its layer");
        let at = (piece.offset + index - piece.source(spec).start) as u64 * 4;
        let vals: Vec<Vec<f32>> = read_ranges(
            gpu,
            "the non-finite input value",
            &[
                (self.chunk_buffer(Tensor::W, piece.chunk), at, 4),
                (self.chunk_buffer(Tensor::U, piece.chunk), at, 4),
            ],
        )?;
        Err(Error::NonFinite {
            layer: spec.name.clone(),
            index,
            row,
            col,
            value: vals[0][0] + vals[1][0],
        })
    }

    /// Reads one layer's `W`, `U` or `Z` back (row-major GEMM view).
    pub fn read(&self, gpu: &Gpu, t: Tensor, layer: usize) -> Result<Vec<f32>> {
        self.check_layer(
            layer,
            self.layout.layers.get(layer).map_or(0, |l| l.view.len()),
        )?;
        let spec = &self.layout.layers[layer];
        let parts: Vec<(&wgpu::Buffer, u64, u64)> = self
            .layout
            .pieces_of(layer)
            .map(|p| {
                (
                    self.chunk_buffer(t, p.chunk),
                    p.offset as u64 * 4,
                    p.source(spec).len() as u64 * 4,
                )
            })
            .collect();
        let what = format!("{t:?} of layer {:?}", spec.name);
        Ok(read_ranges::<f32>(gpu, &what, &parts)?.concat())
    }

    /// Reads every layer's `W`, `U` or `Z` back (row-major GEMM views, one per layer):
    /// every chunk copied into one staging buffer in one submission, one wait.
    pub fn read_all(&self, gpu: &Gpu, t: Tensor) -> Result<Vec<Vec<f32>>> {
        Ok(self.read_tensors(gpu, &[t])?.remove(0))
    }

    /// [`read_all`](Self::read_all) of several tensors together (one submission, one wait):
    /// per tensor, one vector per layer, filled straight from the staging buffer.
    pub fn read_tensors(&self, gpu: &Gpu, ts: &[Tensor]) -> Result<Vec<Vec<Vec<f32>>>> {
        let parts: Vec<_> = ts.iter().flat_map(|&t| self.chunk_parts(t)).collect();
        let mut encoder = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("readback"),
            });
        let staging = Staging::record_pooled(gpu, &mut encoder, &parts, &self.staging);
        let step = format!("reading back {ts:?} of every layer");
        let index = gpu.submit(&step, encoder.finish())?;
        let mut out: Vec<Vec<Vec<f32>>> = ts
            .iter()
            .map(|_| {
                let layers = self.layout.layers.iter();
                layers.map(|l| Vec::with_capacity(l.view.len())).collect()
            })
            .collect();
        let n = self.chunks.len();
        staging.finish_into(gpu, &step, index, |part, at, bytes| {
            let (t, c) = (part / n, part % n);
            self.split_chunk(c, at, bytes, &mut out[t]);
        })?;
        Ok(out)
    }

    /// Appends the values of chunk `c` in `bytes` (from byte `at` of the chunk; chunks
    /// come in order, each in order) to their layers' vectors.
    fn split_chunk(&self, c: usize, at: usize, bytes: &[u8], out: &mut [Vec<f32>]) {
        let (begin, end) = (at, at + bytes.len());
        for p in &self.layout.pieces[self.layout.chunks[c].pieces.clone()] {
            let n = p.source(&self.layout.layers[p.layer]).len();
            let (from, to) = ((p.offset * 4).max(begin), ((p.offset + n) * 4).min(end));
            if from < to {
                let b = &bytes[from - begin..to - begin];
                match bytemuck::try_cast_slice::<u8, f32>(b) {
                    Ok(v) => out[p.layer].extend_from_slice(v),
                    Err(_) => out[p.layer].extend(bytemuck::pod_collect_to_vec::<u8, f32>(b)),
                }
            }
        }
    }

    /// Whole-chunk copies of one tensor: the chunk's pieces, and their alignment gaps.
    fn chunk_parts(&self, t: Tensor) -> Vec<(&wgpu::Buffer, u64, u64)> {
        (0..self.chunks.len())
            .map(|c| {
                (
                    self.chunk_buffer(t, c),
                    0,
                    self.layout.chunks[c].len as u64 * 4,
                )
            })
            .collect()
    }

    /// One vector per layer from one tensor's whole chunks.
    fn split_chunks(&self, chunks: &[Vec<f32>]) -> Vec<Vec<f32>> {
        let mut out: Vec<Vec<f32>> = self
            .layout
            .layers
            .iter()
            .map(|l| Vec::with_capacity(l.view.len()))
            .collect();
        for (c, values) in chunks.iter().enumerate() {
            self.split_chunk(c, 0, bytemuck::cast_slice(values), &mut out);
        }
        out
    }

    /// Reads everything the projection produced for one layer (one wait).
    pub fn read_layer(&self, gpu: &Gpu, layer: usize) -> Result<ProjectedLayer> {
        self.check_layer(
            layer,
            self.layout.layers.get(layer).map_or(0, |l| l.view.len()),
        )?;
        let spec = &self.layout.layers[layer];
        let pieces: Vec<_> = self.layout.pieces_of(layer).collect();
        let tensor_parts = |t: Tensor| {
            pieces.iter().map(move |p| {
                (
                    self.chunk_buffer(t, p.chunk),
                    p.offset as u64 * 4,
                    p.source(spec).len() as u64 * 4,
                )
            })
        };
        let p = &self.layout.placements[layer];
        let (b0, n) = (p.block_start as u64, p.num_blocks as u64);
        let mut parts: Vec<_> = tensor_parts(Tensor::Z)
            .chain(tensor_parts(Tensor::U))
            .collect();
        parts.extend([
            // A layer starts at a multiple of BLOCK_PAD, so at a whole word of the map.
            (
                &self.state_map,
                StateMap::word_len(b0 as usize) as u64 * 4,
                StateMap::word_len(n as usize) as u64 * 4,
            ),
            (&self.magnitude, b0 * 4, n * 4),
            (
                &self.signs,
                p.sign_offset as u64 * 4,
                n * p.words_per_block as u64 * 4,
            ),
        ]);
        let what = format!("the projection of layer {:?}", spec.name);
        let mut raw: Vec<Vec<u32>> = read_ranges(gpu, &what, &parts)?;
        let signs = raw.pop().unwrap_or_default();
        let magnitudes = bytemuck::cast_slice(&raw.pop().unwrap_or_default()).to_vec();
        let map = raw.pop().unwrap_or_default();
        let states = StateMap::from_words(&map, n as usize)
            .map_err(|e| Error::Readback(format!("layer {:?}: state map: {e}", spec.name)))?
            .to_vec();
        let u: Vec<u32> = raw.split_off(pieces.len()).concat();
        let z: Vec<u32> = raw.concat();
        Ok(ProjectedLayer {
            z: bytemuck::cast_slice(&z).to_vec(),
            u: bytemuck::cast_slice(&u).to_vec(),
            states,
            magnitudes,
            signs,
        })
    }

    /// Reads everything the projection produced for every layer: `Z` and `U` chunks, the
    /// whole state map, magnitudes and sign words, in one submission and one wait.
    pub fn read_outputs(&self, gpu: &Gpu) -> Result<Vec<ProjectedLayer>> {
        let total = self.layout.total_blocks;
        let mut parts = self.chunk_parts(Tensor::Z);
        parts.extend(self.chunk_parts(Tensor::U));
        parts.extend([
            (&self.state_map, 0, StateMap::word_len(total) as u64 * 4),
            (&self.magnitude, 0, total as u64 * 4),
            (&self.signs, 0, self.layout.total_sign_words as u64 * 4),
        ]);
        let mut raw: Vec<Vec<u32>> = read_ranges(gpu, "the projection of every layer", &parts)?;
        let signs = raw.pop().unwrap_or_default();
        let magnitudes: Vec<f32> = bytemuck::cast_slice(&raw.pop().unwrap_or_default()).to_vec();
        let map_words = raw.pop().unwrap_or_default();
        let map = StateMap::from_words(&map_words, total)
            .map_err(|e| Error::Readback(format!("the block-state map: {e}")))?;
        let as_f32 = |v: &[Vec<u32>]| -> Vec<Vec<f32>> {
            v.iter().map(|c| bytemuck::cast_slice(c).to_vec()).collect()
        };
        let u = self.split_chunks(&as_f32(&raw.split_off(self.chunks.len())));
        let z = self.split_chunks(&as_f32(&raw));
        Ok(z.into_iter()
            .zip(u)
            .zip(&self.layout.placements)
            .map(|((z, u), p)| {
                let blocks = p.block_start..p.block_start + p.num_blocks;
                let words = p.sign_offset..p.sign_offset + p.num_blocks * p.words_per_block;
                ProjectedLayer {
                    z,
                    u,
                    states: blocks.clone().map(|b| map.get(b)).collect(),
                    magnitudes: magnitudes[blocks].to_vec(),
                    signs: signs[words].to_vec(),
                }
            })
            .collect())
    }

    /// Block states of every layer, read from the state map.
    pub fn states(&self, gpu: &Gpu) -> Result<Vec<Vec<BlockState>>> {
        let total = self.layout.total_blocks;
        let words = StateMap::word_len(total) as u64 * 4;
        let raw: Vec<u32> =
            read_ranges(gpu, "the block-state map", &[(&self.state_map, 0, words)])?.remove(0);
        let map = StateMap::from_words(&raw, total)
            .map_err(|e| Error::Readback(format!("the block-state map: {e}")))?;
        Ok(self
            .layout
            .placements
            .iter()
            .map(|p| {
                (p.block_start..p.block_start + p.num_blocks)
                    .map(|b| map.get(b))
                    .collect()
            })
            .collect())
    }

    /// Bytes a projection must move: read W and U, write Z and U, plus the compact outputs
    /// (state map, magnitudes, sign words).
    pub fn bytes_moved(&self) -> u64 {
        let weights = self.layout.num_weights() as u64;
        let blocks: u64 = self
            .layout
            .placements
            .iter()
            .map(|p| p.num_blocks as u64)
            .sum();
        16 * weights + blocks / 4 + 4 * blocks + 4 * self.layout.total_sign_words as u64
    }
}
