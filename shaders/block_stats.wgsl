// requires: common.wgsl chunk_pieces.wgsl stats_common.wgsl
// block_stats: per-block errors of docs/METHOD.md §2 over V = W + U, and the packed signs of V,
// for one chunk.
// Bindings: 0-2 from chunk_pieces.wgsl (chunk, layers, pieces), 3-10 from stats_common.wgsl.
// Dispatch: one invocation per padded block served by the chunk (pieces rounded up to whole
// workgroups), STATS_WG * STATS_ITEMS blocks per workgroup, laid out 2-D when needed.
//
// Range: the errors rank blocks correctly for any finite f32 input. This pass sums in plain
// f32, which is exact enough while the block's largest |v| lies in [SAFE_MIN, SAFE_MAX): no
// sum can overflow, and whatever falls below the normal range (flushed to zero, as WGSL
// allows) is under 2^-50 of the block's Σv². A block outside that range (huge, tiny or
// subnormal values, all zero, or not finite) is listed for block_rescale, which sums it
// again in a domain where its largest |v| is about 2^0 and every value is built from the
// bits, and overwrites what this pass wrote for it. A separate kernel, not a branch here:
// CPU drivers (lavapipe) run a branch that no lane takes anyway, under a zero mask, so
// the common path would pay for the rare one on every block. Keys carry the scale as a
// wider exponent (`wide_key` in common.wgsl).
//
// Loops: lavapipe (Mesa's gallivm) gives one invocation (a SIMD group of lanes) 65,535 loop
// iterations in all, and silently ends every loop once they are spent. The loops below are
// modelled in src/gpu/loops.rs, which kernels-tests/loop_budget.rs checks against this
// file and bounds at MAX_BLOCK_SIDE: a loop added, removed or made longer here must be
// reflected there.

override STATS_WG: u32;
// Blocks per invocation: fewer, longer-lived invocations amortise per-workgroup costs.
override STATS_ITEMS: u32;

// The chunk's list for block_rescale. Twins: `Listed` in block_rescale.wgsl (the same
// layout, read only) and RESCALE_HEADER in src/gpu/kernels/block_stats.rs (the reset values).
struct Rescale {
    count: atomic<u32>,
    groups_x: atomic<u32>,  // indirect dispatch arguments of block_rescale
    groups_y: atomic<u32>,
    groups_z: u32,
    blocks: array<u32>,
}

@group(0) @binding(10) var<storage, read_write> rescale: Rescale;

// Largest |v| of a block for which the plain f32 sums are used (2^-32 and 2^32): below it
// the sums could lose terms that matter, above it n·|v|² could approach the f32 range.
const SAFE_MIN_BITS: u32 = 0x2f800000u;
const SAFE_MAX_BITS: u32 = 0x4f800000u;

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

    // Shifted sums keep e_u = Σ(x-K)² - (Σ(x-K))²/n accurate for near-uniform blocks; the
    // mean comes from the plain Σx (K + Σ(x-K)/n cancels when K, the first |v|, is far
    // above the mean). Per-row (and per-lane) partial sums keep the rounding error growing
    // with rows + cols, not rows · cols. W and U are read as vec4s where block rows allow
    // it: on CPU drivers (lavapipe) scalar per-invocation loads cost several times more
    // per byte.
    let shift = abs(load_w(base) + load_u(base));
    var s0 = 0.0;
    var s1 = 0.0;
    var s2 = 0.0;
    var sq = 0.0;
    // The largest |v| (its bits: integer order is magnitude order) decides whether the
    // plain sums can be trusted; a NaN or infinity makes it 0x7f800000 or more, so
    // block_rescale, which gets such blocks, is also where non-finite values are located.
    var top = 0u;
    let sign_base = layer.sign_offset + lb * layer.words_per_block;
    var word = 0u;
    var bit = 0u;
    var widx = 0u;
    if (layer.vec4_rows != 0u) {
        let sh = vec4<f32>(shift);
        var top4 = vec4<u32>(0u);
        for (var r = 0u; r < h; r++) { // loop budget: block rows
            var r0 = vec4<f32>(0.0);
            var r1 = vec4<f32>(0.0);
            var r2 = vec4<f32>(0.0);
            var rq = vec4<f32>(0.0);
            let rb = (base + r * layer.cols) >> 2u;
            for (var c = 0u; c < wd / 4u; c++) { // loop budget: block columns / 4
                let v = w[rb + c] + u[rb + c];
                let x = abs(v);
                let d = x - sh;
                r0 += x;
                r1 += d;
                r2 += d * d;
                rq += x * x;
                top4 = max(top4, bitcast<vec4<u32>>(x));
                // `bit` stays a multiple of 4 (so does the gap past a ragged edge: bc and wd
                // are multiples of 4 here), so 4 sign bits never straddle a word.
                // Not `select` on integer vectors: GLSL below 4.5 has no integer `mix`.
                let nb = vec4<u32>(v < vec4<f32>(0.0)) * vec4<u32>(1u, 2u, 4u, 8u);
                word |= (nb.x | nb.y | nb.z | nb.w) << bit;
                bit += 4u;
                if (bit == 32u) {
                    signs[sign_base + widx] = word;
                    widx += 1u;
                    word = 0u;
                    bit = 0u;
                }
            }
            skip_tile_padding(sign_base, layer.bc - wd, &word, &bit, &widx);
            s0 += (r0.x + r0.y) + (r0.z + r0.w);
            s1 += (r1.x + r1.y) + (r1.z + r1.w);
            s2 += (r2.x + r2.y) + (r2.z + r2.w);
            sq += (rq.x + rq.y) + (rq.z + rq.w);
        }
        top = max(max(top4.x, top4.y), max(top4.z, top4.w));
    } else {
        for (var r = 0u; r < h; r++) { // loop budget: block rows
            var r0 = 0.0;
            var r1 = 0.0;
            var r2 = 0.0;
            var rq = 0.0;
            let rb = base + r * layer.cols;
            for (var c = 0u; c < wd; c++) { // loop budget: block columns
                let i = rb + c;
                let v = load_w(i) + load_u(i);
                let x = abs(v);
                let d = x - shift;
                r0 += x;
                r1 += d;
                r2 += d * d;
                rq += x * x;
                top = max(top, bitcast<u32>(x));
                word |= select(0u, 1u, v < 0.0) << bit;
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
    }
    if (bit != 0u) {
        signs[sign_base + widx] = word;
        widx += 1u;
    }
    for (; widx < layer.words_per_block; widx++) { // loop budget: unused sign words
        signs[sign_base + widx] = 0u;
    }
    let n = f32(h * wd);
    // An all-zero V (top 0) is rescaled too: an adapter that flushes subnormals may have
    // turned tiny values into zeros here, and only the bits can tell.
    if (top >= SAFE_MIN_BITS && top < SAFE_MAX_BITS) {
        var e_u = max(s2 - s1 * s1 / n, 0.0);
        var e_p = sq;
        if (layer.normalise != 0u) {
            e_u = e_u / n;
            e_p = e_p / n;
        }
        key_prune[b] = wide_key(e_p, 0);
        key_unify[b] = wide_key(e_u, 0);
        mean_abs[b] = s0 / n;
    } else {
        // block_rescale rewrites this block's unify key; until then it holds the largest |v|
        // (as bits: a u32 buffer keeps them whatever they are as a float).
        key_unify[b] = top;
        let slot = atomicAdd(&rescale.count, 1u);
        rescale.blocks[slot] = b;
        // Arm block_rescale: enough workgroups for every listed block, 2-D past the limit.
        let g = slot / RESCALE_WG;
        atomicMax(&rescale.groups_x, min(g + 1u, chunk.max_groups));
        atomicMax(&rescale.groups_y, g / chunk.max_groups + 1u);
    }
}

