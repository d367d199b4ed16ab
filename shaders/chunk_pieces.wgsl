// Bindings 0-2 of the per-chunk kernels (block_stats, apply_projection) and their piece
// lookup. Prepended after common.wgsl.

@group(0) @binding(0) var<uniform> chunk: ChunkParams;
@group(0) @binding(1) var<storage, read> layers: array<Layer>;
@group(0) @binding(2) var<storage, read> pieces: array<Piece>;

// The piece holding block slot t. Called with a workgroup's first slot, so the search is
// uniform: a per-invocation search costs lavapipe more than a block's arithmetic.
// The midpoint cannot overflow and the loop is bounded (32 halvings cover any u32 range),
// so even inconsistent parameters cannot make it endless: lavapipe silently ends every
// loop after 65535 iterations, a real GPU would spin forever (a hang).
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
