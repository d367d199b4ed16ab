//! What the network layout (`crate::layout`, which knows nothing of wgpu) takes from the
//! GPU: the block pad the selection kernels need and a device's binding limits.

use crate::gpu::kernels::SELECT_BLOCKS_PER_WORKGROUP;
use crate::layout::PackLimits;

/// Blocks of each layer are numbered from a multiple of this, so that a selection workgroup
/// (which covers this many blocks) never straddles two layers.
pub const BLOCK_PAD: usize = SELECT_BLOCKS_PER_WORKGROUP as usize;

/// The packing limits of a device: its largest storage binding (no larger than its largest
/// buffer) and its storage offset alignment.
pub fn pack_limits(limits: &wgpu::Limits) -> PackLimits {
    PackLimits {
        max_binding_bytes: limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size),
        offset_alignment: limits.min_storage_buffer_offset_alignment as u64,
    }
}
