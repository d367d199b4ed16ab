// Shared declarations of the batched projection kernels (each names it on its `requires` line).
// Rust twins of the same names: src/gpu/kernels/common.rs. Every struct is a multiple of 16
// bytes so arrays of them have no padding.

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
    max_groups: u32,    // max_compute_workgroups_per_dimension (for block_rescale's grid)
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

// Keys: an order-preserving u32 image of a non-negative error e = f·2^extra (f a finite f32,
// `extra` the exponent block_stats scaled it by), over a range far wider than f32's: 10
// exponent bits (biased by KEY_EXP_BIAS, 0 kept for e = 0) and the top 22 bits of f's
// mantissa. The sign bit is never needed (errors are sums of squares, clamped at 0). Every
// non-zero error of a finite input lies between 2^-447 (a subnormal e_u in the scaled domain
// of the tiniest blocks) and 2^266 (32·32 values near f32's largest, squared): biased
// exponents -320..393, so keys use exponent fields 1..714 and
// KEY_EXCLUDED stays above all of them; the clamp only matters for non-finite input, which
// the projection reports as an error anyway. The top radix digit is the top 8 exponent bits.
// Resolution: 2^-22 relative, below the f32 sums' own rounding (n·2^-24 and more).
const KEY_EXP_BIAS: i32 = 321;
const KEY_EXP_MAX: i32 = 1022;

fn wide_key(f: f32, extra: i32) -> u32 {
    let bits = bitcast<u32>(f) & 0x7fffffffu;
    if (bits == 0u) {
        return 0u;
    }
    let n = normalise(bits);
    let e = clamp(n.x + extra + KEY_EXP_BIAS, 1, KEY_EXP_MAX);
    return (u32(e) << 22u) | (u32(n.y) >> 1u);
}

// A non-zero |x| given by its bits as (biased exponent, 23-bit mantissa) of the normal form
// |x| = (1 + m·2^-23)·2^(e-127): subnormals get exponents 0 down to -22, from the bits alone
// (integer operations never flush, floating-point ones may).
fn normalise(bits: u32) -> vec2<i32> {
    let e = bits >> 23u;
    let m = bits & 0x7fffffu;
    if (e != 0u) {
        return vec2<i32>(i32(e), i32(m));
    }
    let p = firstLeadingBit(m);
    return vec2<i32>(i32(p) - 22, i32((m << (23u - p)) & 0x7fffffu));
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
