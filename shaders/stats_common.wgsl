// Bindings 3-10 of the statistics kernels (block_stats, block_rescale) and what both do
// to a block: where it lies, its values, and its statistics in a scaled domain. Prepended
// after common.wgsl and chunk_pieces.wgsl.
// Bindings: 3 W, 4 U (read), 5 prune keys, 6 unify keys, 7 mean |v| per block, 8 first bad
// (non-finite) index per layer (atomic min), 9 sign words (words_per_block per block; bit
// r·bc + c set when weight (r, c) of the block is negative: the full-tile numbering of the
// compressed matrix, the file and the GEMM, also at ragged edges, whose missing weights
// leave their bits clear),
// and 10, declared by each kernel: the chunk's list of blocks for block_rescale (a count,
// the indirect dispatch arguments of block_rescale, then the listed block numbers),
// written by block_stats and only read by block_rescale, whose dispatch arguments it also
// holds.
//
// Loops: modelled in src/gpu/loops.rs, which kernels-tests/loop_budget.rs checks against
// this file (lavapipe's 65,535 iterations per invocation); change both together.

// Invocations per workgroup of block_rescale (block_stats arms its dispatch).
override RESCALE_WG: u32;

@group(0) @binding(3) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> u: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> key_prune: array<u32>;
@group(0) @binding(6) var<storage, read_write> key_unify: array<u32>;
@group(0) @binding(7) var<storage, read_write> mean_abs: array<f32>;
@group(0) @binding(8) var<storage, read_write> first_bad: array<atomic<u32>>;
@group(0) @binding(9) var<storage, read_write> signs: array<u32>;

// Where a block lies in its chunk.
struct Extent {
    base: u32,  // element index of its first weight in the chunk
    h: u32,     // rows (fewer at the bottom edge)
    wd: u32,    // columns (fewer at the right edge)
    row0: u32,  // first row and column in the layer's matrix
    col0: u32,
}

fn extent_of(lb: u32, piece: Piece, layer: Layer) -> Extent {
    let brow = lb / layer.block_cols;
    let bcol = lb - brow * layer.block_cols;
    let row0 = brow * layer.br;
    let col0 = bcol * layer.bc;
    return Extent(
        piece.elem_offset + (brow - piece.block_row0) * layer.br * layer.cols + col0,
        min(layer.br, layer.rows - row0),
        min(layer.bc, layer.cols - col0),
        row0,
        col0,
    );
}

fn load_w(i: u32) -> f32 {
    return w[i >> 2u][i & 3u];
}

fn load_u(i: u32) -> f32 {
    return u[i >> 2u][i & 3u];
}

// |x|·2^k for a finite x given by its bits, built from the bits (the exponent is moved, the
// mantissa kept): exact wherever the result is a normal number, 0 below that. Callers keep
// the result below 4, so it never overflows.
fn scaled_abs(bits: u32, k: i32) -> f32 {
    let a = bits & 0x7fffffffu;
    if (a == 0u) {
        return 0.0;
    }
    let n = normalise(a);
    let e = n.x + k;
    if (e < 1) {
        return 0.0;
    }
    return bitcast<f32>((u32(e) << 23u) | u32(n.y));
}

fn scaled(bits: u32, k: i32) -> f32 {
    return bitcast<f32>(bitcast<u32>(scaled_abs(bits, k)) | (bits & 0x80000000u));
}

// w + u, exactly as IEEE f32 addition rounds it, as `v·2^-k` with `v` a normal number in
// (-4, 4) or 0: both are moved (from their bits) so that the larger lands in [1, 2), where
// the addition needs no subnormal. A part of the smaller one lost below the normal range
// there is less than 2^-126 of the larger: IEEE would round it away too.
struct Exact {
    v: f32,
    k: i32,
}

fn exact_sum(wb: u32, ub: u32) -> Exact {
    let big = max(wb & 0x7fffffffu, ub & 0x7fffffffu);
    if (big == 0u) {
        return Exact(0.0, 0);
    }
    let k = 127 - normalise(big).x;
    return Exact(scaled(wb, k) + scaled(ub, k), k);
}

// x·2^e for a finite x ≥ 0, rounded to nearest (ties to even) as IEEE multiplication
// would, built from the bits: WGSL's ldexp may flush a subnormal result to 0 (Mesa's GL
// driver does), and a subnormal magnitude of a unified block is still its magnitude.
// Callers keep the result below 2^128.
fn exact_ldexp(x: f32, e: i32) -> f32 {
    let bits = bitcast<u32>(x) & 0x7fffffffu;
    if (bits == 0u) {
        return 0.0;
    }
    let n = normalise(bits);
    let t = n.x + e;
    if (t >= 1) {
        return bitcast<f32>((u32(t) << 23u) | u32(n.y));
    }
    // Subnormal: the 24-bit significand shifted down by 1 - t, rounded to nearest even.
    let shift = u32(1 - t);
    if (shift > 24u) {
        return 0.0;
    }
    let m = u32(n.y) | 0x800000u;
    var k = m >> shift;
    let rest = m & ((1u << shift) - 1u);
    let half = 1u << (shift - 1u);
    if (rest > half || (rest == half && (k & 1u) == 1u)) {
        k += 1u;
    }
    return bitcast<f32>(k);
}

// After a block row of `wd` weights, moves the sign bit position past the `gap` = bc - wd
// tile positions the row lacks at a ragged right edge (bit r·bc + c is weight (r, c)),
// storing the word if that fills it. `bit` < 32 and `gap` < 32, so at most one word fills.
fn skip_tile_padding(sign_base: u32, gap: u32, word: ptr<function, u32>, bit: ptr<function, u32>,
                     widx: ptr<function, u32>) {
    *bit += gap;
    if (*bit >= 32u) {
        signs[sign_base + *widx] = *word;
        *widx += 1u;
        *word = 0u;
        *bit -= 32u;
    }
}

// The statistics of a block outside the plain sums' range, over |v|·2^K with K chosen from
// block_stats' largest |v| (`top`) so that the largest value lands in [1/4, 2): the same
// shifted sums, the signs of the exact V, and the first non-finite index. On an adapter that flushes subnormals
// `top` is within one binade of the exact largest |v| when it is a normal number; when it
// is 0, every |v| is below 2^-125 (or exactly 0) and K = 126 maps them below 2. Keys get
// the scale back as exponent (-2K for squares), the magnitude through exact_ldexp.
fn scaled_block(b: u32, ext: Extent, piece: Piece, layer: Layer, sign_base: u32, top: u32) {
    let h = ext.h;
    let wd = ext.wd;
    var scale = 126;
    if (top != 0u) {
        scale = 126 - normalise(top).x;
    }
    let first = exact_sum(bitcast<u32>(load_w(ext.base)), bitcast<u32>(load_u(ext.base)));
    let shift = scaled_abs(bitcast<u32>(first.v), scale - first.k);
    var s0 = 0.0;
    var s1 = 0.0;
    var s2 = 0.0;
    var sq = 0.0;
    var word = 0u;
    var bit = 0u;
    var widx = 0u;
    var bad = 0xffffffffu;
    for (var r = 0u; r < h; r++) { // loop budget: block rows
        var r0 = 0.0;
        var r1 = 0.0;
        var r2 = 0.0;
        var rq = 0.0;
        let rb = ext.base + r * layer.cols;
        for (var c = 0u; c < wd; c++) { // loop budget: block columns
            let i = rb + c;
            let wv = load_w(i);
            let uv = load_u(i);
            if (!is_finite_f32(wv + uv)) {
                bad = min(bad, (ext.row0 + r) * layer.cols + ext.col0 + c);
            }
            let s = exact_sum(bitcast<u32>(wv), bitcast<u32>(uv));
            let x = scaled_abs(bitcast<u32>(s.v), scale - s.k);
            let d = x - shift;
            r0 += x;
            r1 += d;
            r2 += d * d;
            rq += x * x;
            word |= select(0u, 1u, s.v < 0.0) << bit;
            bit += 1u;
            if (bit == 32u) {
                signs[sign_base + widx] = word;
                widx += 1u;
                word = 0u;
                bit = 0u;
            }
        }
        skip_tile_padding(sign_base, layer.bc - wd, &word, &bit, &widx);
        s0 += r0;
        s1 += r1;
        s2 += r2;
        sq += rq;
    }
    if (bit != 0u) {
        signs[sign_base + widx] = word;
    }
    if (bad != 0xffffffffu) {
        atomicMin(&first_bad[piece.layer], bad);
    }
    let n = f32(h * wd);
    var e_u = max(s2 - s1 * s1 / n, 0.0);
    var e_p = sq;
    if (layer.normalise != 0u) {
        e_u = e_u / n;
        e_p = e_p / n;
    }
    key_prune[b] = wide_key(e_p, -2 * scale);
    key_unify[b] = wide_key(e_u, -2 * scale);
    mean_abs[b] = exact_ldexp(s0 / n, -scale);
}
