// block_stats: per-block errors of METHOD.md §2 over V = W + U, and the packed signs of V,
// for one chunk.
// Bindings: 0-2 from chunk_pieces.wgsl (chunk, layers, pieces), 3 W, 4 U (read), 5 prune keys,
// 6 unify keys, 7 mean |v| per block, 8 first bad (non-finite) index per layer (atomic min),
// 9 sign words (words_per_block per block; bit i set when the block's i-th weight, in
// row-major order inside the block, is negative).
// Dispatch: one invocation per padded block served by the chunk (pieces rounded up to whole
// workgroups), STATS_WG * STATS_ITEMS blocks per workgroup, laid out 2-D when needed.
//
// Range: the errors rank blocks correctly for any finite f32 input. The common pass sums in
// plain f32, which is exact enough while the block's largest |v| lies in
// [SAFE_MIN, SAFE_MAX): no sum can overflow, and whatever falls below the normal range
// (flushed to zero, as WGSL allows) is under 2^-50 of the block's Σv². A block outside that
// range (huge, tiny or subnormal values) is summed again by `scaled_block`, in a domain
// where its largest |v| is exactly 2^0 and every value is built from the bits, so no
// multiplication ever touches a subnormal. Keys carry the scale as a wider exponent
// (`wide_key` in common.wgsl).
//
// Loops: lavapipe (Mesa's gallivm) gives one invocation (a SIMD group of lanes) 65,535 loop
// iterations in all, and silently ends every loop once they are spent. The worst case of
// this kernel at MAX_BLOCK_SIDE is computed in kernels-tests/loop_budget.rs from the loops
// below: a loop added, removed or made longer here must be reflected there.

override STATS_WG: u32;
// Blocks per invocation: fewer, longer-lived invocations amortise per-workgroup costs.
override STATS_ITEMS: u32;

// Largest |v| of a block for which the plain f32 sums are used (2^-32 and 2^32): below it
// the sums could lose terms that matter, above it n·|v|² could approach the f32 range.
const SAFE_MIN_BITS: u32 = 0x2f800000u;
const SAFE_MAX_BITS: u32 = 0x4f800000u;

@group(0) @binding(3) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> u: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> key_prune: array<u32>;
@group(0) @binding(6) var<storage, read_write> key_unify: array<u32>;
@group(0) @binding(7) var<storage, read_write> mean_abs: array<f32>;
@group(0) @binding(8) var<storage, read_write> first_bad: array<atomic<u32>>;
@group(0) @binding(9) var<storage, read_write> signs: array<u32>;

@compute @workgroup_size(STATS_WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let per_wg = STATS_WG * STATS_ITEMS;
    let t0 = linear_workgroup(wid, nwg) * per_wg;
    if (t0 >= chunk.num_threads) {
        return;
    }
    let piece = pieces[find_piece(t0)];
    let layer = layers[piece.layer];
    let first = piece.block_begin + (t0 - piece.thread_begin) + lid;
    for (var i = 0u; i < STATS_ITEMS; i++) { // loop budget: STATS_ITEMS
        let b = first + i * STATS_WG;
        if (b < piece.block_end) {
            one_block(b, piece, layer);
        }
    }
}

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

fn one_block(b: u32, piece: Piece, layer: Layer) {
    let lb = b - layer.block_start;
    if (lb >= layer.num_blocks) {
        key_prune[b] = KEY_EXCLUDED;
        key_unify[b] = KEY_EXCLUDED;
        mean_abs[b] = 0.0;
        return;
    }
    let ext = extent_of(lb, piece, layer);
    let base = ext.base;
    let h = ext.h;
    let wd = ext.wd;

    // Shifted sums keep e_u = Σ(x-K)² - (Σ(x-K))²/n accurate for near-uniform blocks; per-row
    // (and per-lane) partial sums keep the rounding error growing with rows + cols, not
    // rows · cols. W and U are read as vec4s where block rows allow it: on CPU drivers
    // (lavapipe) scalar per-invocation loads cost several times more per byte.
    let shift = abs(load_w(base) + load_u(base));
    var s1 = 0.0;
    var s2 = 0.0;
    var sq = 0.0;
    // The largest |v| (its bits: integer order is magnitude order) and any non-zero input
    // bit, which decide whether the plain sums can be trusted.
    var top = 0u;
    var any_input = 0u;
    var bad = 0xffffffffu;
    let sign_base = layer.sign_offset + lb * layer.words_per_block;
    var word = 0u;
    var bit = 0u;
    var widx = 0u;
    if (layer.vec4_rows != 0u) {
        let sh = vec4<f32>(shift);
        var top4 = vec4<u32>(0u);
        var any4 = vec4<u32>(0u);
        for (var r = 0u; r < h; r++) { // loop budget: block rows
            var r1 = vec4<f32>(0.0);
            var r2 = vec4<f32>(0.0);
            var rq = vec4<f32>(0.0);
            let rb = (base + r * layer.cols) >> 2u;
            for (var c = 0u; c < wd / 4u; c++) { // loop budget: block columns / 4
                let wv = w[rb + c];
                let uv = u[rb + c];
                let v = wv + uv;
                let fin = (bitcast<vec4<u32>>(v) & vec4<u32>(0x7f800000u)) != vec4<u32>(0x7f800000u);
                if (!all(fin)) {
                    for (var k = 0u; k < 4u; k++) { // constant trip count: unrolled
                        if (!fin[k]) {
                            bad = min(bad, (ext.row0 + r) * layer.cols + ext.col0 + 4u * c + k);
                        }
                    }
                }
                let x = abs(v);
                let d = x - sh;
                r1 += d;
                r2 += d * d;
                rq += x * x;
                top4 = max(top4, bitcast<vec4<u32>>(x));
                any4 |= bitcast<vec4<u32>>(wv) | bitcast<vec4<u32>>(uv);
                // `bit` stays a multiple of 4, so 4 sign bits never straddle a word.
                let nb = select(vec4<u32>(0u), vec4<u32>(1u, 2u, 4u, 8u), v < vec4<f32>(0.0));
                word |= (nb.x | nb.y | nb.z | nb.w) << bit;
                bit += 4u;
                if (bit == 32u) {
                    signs[sign_base + widx] = word;
                    widx += 1u;
                    word = 0u;
                    bit = 0u;
                }
            }
            s1 += (r1.x + r1.y) + (r1.z + r1.w);
            s2 += (r2.x + r2.y) + (r2.z + r2.w);
            sq += (rq.x + rq.y) + (rq.z + rq.w);
        }
        top = max(max(top4.x, top4.y), max(top4.z, top4.w));
        any_input = (any4.x | any4.y) | (any4.z | any4.w);
    } else {
        for (var r = 0u; r < h; r++) { // loop budget: block rows
            var r1 = 0.0;
            var r2 = 0.0;
            var rq = 0.0;
            let rb = base + r * layer.cols;
            for (var c = 0u; c < wd; c++) { // loop budget: block columns
                let i = rb + c;
                let wv = load_w(i);
                let uv = load_u(i);
                let v = wv + uv;
                if (!is_finite_f32(v)) {
                    bad = min(bad, (ext.row0 + r) * layer.cols + ext.col0 + c);
                }
                let x = abs(v);
                let d = x - shift;
                r1 += d;
                r2 += d * d;
                rq += x * x;
                top = max(top, bitcast<u32>(x));
                any_input |= bitcast<u32>(wv) | bitcast<u32>(uv);
                word |= select(0u, 1u, v < 0.0) << bit;
                bit += 1u;
                if (bit == 32u) {
                    signs[sign_base + widx] = word;
                    widx += 1u;
                    word = 0u;
                    bit = 0u;
                }
            }
            s1 += r1;
            s2 += r2;
            sq += rq;
        }
    }
    if (bit != 0u) {
        signs[sign_base + widx] = word;
        widx += 1u;
    }
    for (; widx < layer.words_per_block; widx++) { // loop budget: unused sign words
        signs[sign_base + widx] = 0u;
    }
    if (bad != 0xffffffffu) {
        atomicMin(&first_bad[piece.layer], bad);
    }
    let n = f32(h * wd);
    let exact_zero = (any_input & 0x7fffffffu) == 0u;
    if (exact_zero || (top >= SAFE_MIN_BITS && top < SAFE_MAX_BITS)) {
        var e_u = max(s2 - s1 * s1 / n, 0.0);
        var e_p = sq;
        if (layer.normalise != 0u) {
            e_u = e_u / n;
            e_p = e_p / n;
        }
        key_prune[b] = wide_key(e_p, 0);
        key_unify[b] = wide_key(e_u, 0);
        mean_abs[b] = shift + s1 / n;
    } else {
        scaled_block(b, ext, layer, sign_base);
    }
}

// |x|·2^k for a finite x given by its bits, built from the bits (the exponent is moved, the
// mantissa kept): exact wherever the result is a normal number, 0 below that. Callers keep
// the result at most 4, so it never overflows.
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

// The statistics of a block outside the plain sums' range, in the domain where its largest
// |v| lies in [1, 2): first the largest exponent of V (computed exactly), then the same
// shifted sums as the common pass over |v|·2^K, and the signs of the exact V. Keys get the
// scale back as exponent (-2K for squares), the magnitude through ldexp (a subnormal a is
// flushed to 0 by adapters that flush subnormals, as WGSL allows).
fn scaled_block(b: u32, ext: Extent, layer: Layer, sign_base: u32) {
    let h = ext.h;
    let wd = ext.wd;
    var top = -1000; // biased exponent of the largest |v|; below any real one
    for (var r = 0u; r < h; r++) { // loop budget: block rows
        let rb = ext.base + r * layer.cols;
        for (var c = 0u; c < wd; c++) { // loop budget: block columns
            let i = rb + c;
            let s = exact_sum(bitcast<u32>(load_w(i)), bitcast<u32>(load_u(i)));
            if (s.v != 0.0) {
                top = max(top, normalise(bitcast<u32>(s.v) & 0x7fffffffu).x - s.k);
            }
        }
    }
    if (top == -1000) {
        // Every v is exactly 0 (inputs that cancel): no error, no magnitude, and the common
        // pass already wrote all-positive signs (v < 0 is false for ±0).
        key_prune[b] = 0u;
        key_unify[b] = 0u;
        mean_abs[b] = 0.0;
        return;
    }
    let scale = 127 - top;
    let s0 = exact_sum(bitcast<u32>(load_w(ext.base)), bitcast<u32>(load_u(ext.base)));
    let shift = scaled_abs(bitcast<u32>(s0.v), scale - s0.k);
    var s1 = 0.0;
    var s2 = 0.0;
    var sq = 0.0;
    var word = 0u;
    var bit = 0u;
    var widx = 0u;
    for (var r = 0u; r < h; r++) { // loop budget: block rows
        var r1 = 0.0;
        var r2 = 0.0;
        var rq = 0.0;
        let rb = ext.base + r * layer.cols;
        for (var c = 0u; c < wd; c++) { // loop budget: block columns
            let i = rb + c;
            let s = exact_sum(bitcast<u32>(load_w(i)), bitcast<u32>(load_u(i)));
            let x = scaled_abs(bitcast<u32>(s.v), scale - s.k);
            let d = x - shift;
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
        s1 += r1;
        s2 += r2;
        sq += rq;
    }
    if (bit != 0u) {
        signs[sign_base + widx] = word;
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
    mean_abs[b] = ldexp(shift + s1 / n, -scale);
}
