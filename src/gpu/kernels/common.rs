//! Rust twins of the structs in shaders/common.wgsl, field for field (checked by size
//! against naga's layout of the WGSL struct).

use bytemuck::{Pod, Zeroable};

/// WGSL `Layer`: one layer of the network as the projection kernels see it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct Layer {
    pub rows: u32,
    pub cols: u32,
    pub br: u32,
    pub bc: u32,
    pub block_cols: u32,
    pub num_blocks: u32,
    pub block_start: u32,
    pub sign_offset: u32,
    pub words_per_block: u32,
    pub normalise: u32,
    pub vec4_rows: u32,
    pub _pad1: u32,
}

/// WGSL `Piece`: the block rows of one layer stored in one chunk.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct Piece {
    pub layer: u32,
    pub block_row0: u32,
    pub elem_offset: u32,
    pub block_begin: u32,
    pub block_end: u32,
    pub thread_begin: u32,
    pub _pad0: u32,
    pub _pad1: u32,
}

/// WGSL `ChunkParams`: the uniform of the per-chunk kernels.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct ChunkParams {
    pub piece_begin: u32,
    pub piece_end: u32,
    pub num_threads: u32,
    pub max_groups: u32,
}

/// WGSL `Group`: the blocks one selection ranks together and how many it picks.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct Group {
    pub block_begin: u32,
    pub block_end: u32,
    pub prune: u32,
    pub unify: u32,
}

/// WGSL `SelState`: one group's radix-select progress.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct SelState {
    pub k: u32,
    pub rem: u32,
    pub key: u32,
    pub idx: u32,
}

/// WGSL `PassParams`: the uniform of one radix-select pass.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct PassParams {
    pub which: u32,
    pub on_index: u32,
    pub shift: u32,
    pub key_mask: u32,
    pub idx_mask: u32,
    pub num_groups: u32,
    pub num_workgroups: u32,
    pub next_args: u32,
    pub grid_x: u32,
    pub grid_y: u32,
    pub _pad0: u32,
    pub _pad1: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::kernels::reflection::struct_size;

    #[test]
    fn the_twins_have_the_size_of_their_wgsl_structs() {
        for (name, size) in [
            ("Layer", size_of::<Layer>()),
            ("Piece", size_of::<Piece>()),
            ("ChunkParams", size_of::<ChunkParams>()),
            ("Group", size_of::<Group>()),
            ("SelState", size_of::<SelState>()),
            ("PassParams", size_of::<PassParams>()),
        ] {
            assert_eq!(struct_size(name), Some(size as u32), "{name}");
        }
    }
}
