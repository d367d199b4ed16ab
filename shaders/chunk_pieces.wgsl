// Bindings 0-2 of the per-chunk kernels (block_stats, apply_projection) and their piece
// lookup. Prepended after common.wgsl.

@group(0) @binding(0) var<uniform> chunk: ChunkParams;
@group(0) @binding(1) var<storage, read> layers: array<Layer>;
@group(0) @binding(2) var<storage, read> pieces: array<Piece>;

// The piece holding block slot t. Called with a workgroup's first slot, so the search is
// uniform: a per-invocation search costs lavapipe more than a block's arithmetic.
// The midpoint cannot overflow and the loop is bounded (32 halvings cover any u32 range),
// so even inconsistent parameters cannot make it endless: lavapipe silently ends every
// loop once an invocation has spent 65,535 iterations in all, a real GPU would spin
// forever (a hang).
// Its 32 steps are counted in src/gpu/loops.rs (SEARCH_STEPS).
fn find_piece(t: u32) -> u32 {
    var lo = chunk.piece_begin;
    var hi = max(chunk.piece_end, lo + 1u) - 1u;
    for (var n = 0u; n < 32u && lo < hi; n++) {
        let mid = lo + (hi - lo + 1u) / 2u;
        if (pieces[mid].thread_begin <= t) {
            lo = mid;
        } else {
            hi = mid - 1u;
        }
    }
    return lo;
}

// The piece serving block b (a per-invocation search: block_rescale's blocks are scattered).
// Pieces of a chunk serve increasing block ranges. Bounded like find_piece.
fn find_piece_of_block(b: u32) -> u32 {
    var lo = chunk.piece_begin;
    var hi = max(chunk.piece_end, lo + 1u) - 1u;
    for (var n = 0u; n < 32u && lo < hi; n++) {
        let mid = lo + (hi - lo + 1u) / 2u;
        if (pieces[mid].block_begin <= b) {
            lo = mid;
        } else {
            hi = mid - 1u;
        }
    }
    return lo;
}
