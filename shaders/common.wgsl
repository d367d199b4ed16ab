// Shared declarations of the batched projection kernels (prepended to each of them).
// Rust twins: src/gpu/projection.rs (GpuLayer, GpuPiece, ChunkParams, GpuGroup, SelState,
// PassParams). Every struct is a multiple of 16 bytes so arrays of them have no padding.

struct Layer {
    rows: u32,
    cols: u32,
    br: u32,
    bc: u32,
    block_cols: u32,
    num_blocks: u32,
    block_start: u32,   // first block in the padded network numbering
    sign_offset: u32,   // first sign word of the layer
    words_per_block: u32,
    normalise: u32,     // 1 in global mode: keys are errors divided by the block size
    vec4_rows: u32,     // 1 when bc and cols are multiples of 4: block rows are whole vec4s
    _pad1: u32,
}

struct Piece {
    layer: u32,
    block_row0: u32,    // first block row of the layer stored in this piece
    elem_offset: u32,   // element offset of that row inside the chunk
    block_begin: u32,   // padded block numbers served by this piece: [begin, end)
    block_end: u32,
    thread_begin: u32,  // first block slot of the piece in its chunk's per-block dispatch
                        // (a multiple of a workgroup's blocks: no workgroup spans two pieces)
    _pad0: u32,
    _pad1: u32,
}

struct ChunkParams {
    piece_begin: u32,
    piece_end: u32,
    num_threads: u32,   // block slots of the per-block dispatches
    _pad: u32,
}

struct Group {
    block_begin: u32,
    block_end: u32,
    prune: u32,         // blocks to prune
    unify: u32,         // blocks to unify among the rest
}

// Radix-select state of one group: the composite (key, block) prefix decided so far and how
// many blocks are still to be taken inside it (0 once exact: (key, idx) is then the
// largest composite selected, with undecided low bits set to ones).
struct SelState {
    k: u32,
    rem: u32,
    key: u32,
    idx: u32,
}

struct PassParams {
    which: u32,         // 0: prune selection, 1: unify selection
    on_index: u32,      // 0: this pass splits a key digit, 1: a block-number digit
    shift: u32,         // bit position of the digit
    key_mask: u32,      // key bits already decided
    idx_mask: u32,      // block-number bits already decided
    num_groups: u32,
    num_workgroups: u32,
    next_args: u32,     // u32 index of the next histogram pass's indirect arguments, or
                        // 0xffffffff when the next pass needs no arming (last, or first of
                        // a selection, which the host arms)
    grid_x: u32,        // the full histogram dispatch, written there while work remains
    grid_y: u32,
    _pad0: u32,
    _pad1: u32,
}

const RADIX: u32 = 256u;
// Padding blocks get this key: above every real key (finite or not), never selected.
const KEY_EXCLUDED: u32 = 0xffffffffu;

// Order-preserving map of a non-negative error onto u32. Errors are sums of squares (or
// clamped at 0), so the sign bit is always 0 (-0 maps like +0) and is shifted out: the top
// radix digit is then the whole exponent, which splits real error distributions far better
// than sign + 7 exponent bits and saves a selection pass. +inf and NaN (overflowed sums)
// stay below KEY_EXCLUDED.
fn order_key(f: f32) -> u32 {
    return bitcast<u32>(f) << 1u;
}

fn is_finite_f32(f: f32) -> bool {
    return (bitcast<u32>(f) & 0x7f800000u) != 0x7f800000u;
}

// Composite order (key, block): true when block `idx` with `key` is among the selected.
fn is_selected(key: u32, idx: u32, s: SelState) -> bool {
    return s.k > 0u && (key < s.key || (key == s.key && idx <= s.idx));
}

// Dispatches are 2-D when they exceed the per-dimension limit; this is the linear id.
fn linear_workgroup(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}
