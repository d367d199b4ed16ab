// requires: common.wgsl chunk_pieces.wgsl stats_common.wgsl
// block_rescale: the statistics of the blocks block_stats listed (largest |v| outside the
// range its plain f32 sums can be trusted in), recomputed by scaled_block (stats_common.wgsl)
// over one chunk; it overwrites their keys, magnitudes and sign words, and reports their
// non-finite values.
// Bindings: 0-2 from chunk_pieces.wgsl (chunk, layers, pieces), 3-10 from stats_common.wgsl.
// Dispatch: indirect, armed by block_stats: one invocation per listed block, RESCALE_WG per
// workgroup, 2-D past the per-dimension limit (chunk.max_groups).

// block_stats' `Rescale`, field for field, read only: the buffer is this dispatch's indirect
// arguments too, and a read-write binding of it would conflict with that use.
struct Listed {
    count: u32,
    groups_x: u32,
    groups_y: u32,
    groups_z: u32,
    blocks: array<u32>,
}

@group(0) @binding(10) var<storage, read> rescale: Listed;

@compute @workgroup_size(RESCALE_WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let slot = linear_workgroup(wid, nwg) * RESCALE_WG + lid;
    if (slot >= rescale.count) {
        return;
    }
    let b = rescale.blocks[slot];
    let piece = pieces[find_piece_of_block(b)];
    let layer = layers[piece.layer];
    let lb = b - layer.block_start;
    let sign_base = layer.sign_offset + lb * layer.words_per_block;
    // block_stats left the block's largest |v| (bits) in its unify key.
    scaled_block(b, extent_of(lb, piece, layer), piece, layer, sign_base, key_unify[b]);
}
