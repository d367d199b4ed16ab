// Bindings 0-1 of the selection kernels (radix_histogram, pack_states) and their group
// lookup. Prepended after common.wgsl.

@group(0) @binding(0) var<uniform> params: PassParams;
@group(0) @binding(1) var<storage, read> groups: array<Group>;

// The selection group holding block b (called per workgroup: layers are padded so that a
// workgroup's blocks share one group). Bounded like find_piece (chunk_pieces.wgsl).
// Its 32 steps are counted in src/gpu/loops.rs (SEARCH_STEPS).
fn find_group(b: u32) -> u32 {
    var lo = 0u;
    var hi = max(params.num_groups, 1u) - 1u;
    for (var n = 0u; n < 32u && lo < hi; n++) {
        let mid = lo + (hi - lo + 1u) / 2u;
        if (groups[mid].block_begin <= b) {
            lo = mid;
        } else {
            hi = mid - 1u;
        }
    }
    return lo;
}
