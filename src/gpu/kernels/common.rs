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
    #[test]
    fn the_twins_match_their_wgsl_structs() {
        crate::twin_layout!(
            super::Layer,
            "Layer",
            rows,
            cols,
            br,
            bc,
            block_cols,
            num_blocks,
            block_start,
            sign_offset,
            words_per_block,
            normalise,
            vec4_rows,
            _pad1
        );
        crate::twin_layout!(
            super::Piece,
            "Piece",
            layer,
            block_row0,
            elem_offset,
            block_begin,
            block_end,
            thread_begin,
            _pad0,
            _pad1
        );
        crate::twin_layout!(
            super::ChunkParams,
            "ChunkParams",
            piece_begin,
            piece_end,
            num_threads,
            max_groups
        );
        crate::twin_layout!(super::Group, "Group", block_begin, block_end, prune, unify);
        crate::twin_layout!(super::SelState, "SelState", k, rem, key, idx);
        crate::twin_layout!(
            super::PassParams,
            "PassParams",
            which,
            on_index,
            shift,
            key_mask,
            idx_mask,
            num_groups,
            num_workgroups,
            next_args,
            grid_x,
            grid_y,
            _pad0,
            _pad1
        );
    }
}
