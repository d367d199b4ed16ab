// requires: gemm_params.wgsl
// gemm_micro_small: Y = W·X + bias, optional ReLU, W micro-structured, for small batches
// (N ≤ 8), where the weights' bytes decide the time: a unified block costs its sign words
// (1 bit per weight, streamed as u32 words) and one magnitude instead of 32 bits per weight.
// Bindings: 0 rows (read, vec4<u32> per block row: first entry, first unified entry, end),
//   1 entries (read, vec2<u32>: block column, dense tile offset in `values` or unified
//   index), 2 values (read, vec4 view of the full BR×BC tiles; BC is a multiple of 4),
//   3 unified (read, u32: magnitude bits then WPB sign words per unified block),
//   4 XT (read, X transposed: NB rows × K4 vec4, zero past K), 5 table (read, f32: the 16
//   signed sums of each group of 4 inputs, from gemm_sign_table; not read, and not built,
//   by the ROWS4 pipelines), 6 bias (read, M_pad f32),
//   7 Y (read_write, f32, M_pad rows of N4·4), 8 GemmParams (uniform).
// Dispatch: ceil(M_pad / RL / MICRO_WG) workgroups (2-D when needed) of MICRO_WG
// invocations, once per slice of the block rows' entries (gemm_params.wgsl); an invocation owns RL rows (dividing BR) of one block row. It walks the
// block row's dense entries, then its unified ones (two loops, so lanes never branch on an
// entry's kind), streaming tile rows as vec4s (dense) or 4 sign bits at a time (unified:
// one lookup in the signed-sum table each), and keeps RL × NB partial sums; a unified
// tile row's signed sum is multiplied by its magnitude once. Several rows per lane share
// each entry, sign word and X load.

// Loops: modelled in src/gpu/loops.rs, which kernels-tests/loop_budget.rs checks against
// this file (lavapipe's 65,535 iterations per invocation); change both together.

override MICRO_WG: u32;
override RL: u32; // rows per invocation: divides BR, RL · NB ≤ 8
override BR: u32;
override BC: u32;
override WPB: u32;
override NB: u32; // columns of X and Y, 1..8
// 4 rows per lane and one column (N = 1, any block of 4k rows): the loops over rows written
// out, partial sums in named vectors instead of the indexed arrays (folded at pipeline
// creation). On lavapipe, 4x4 at N = 1: all-unified 0.91 -> 0.72 ms, 50% pruned + 40%
// unified 0.56 -> 0.48 ms. Its unified tile rows flip the signs of their one vec4 of X
// themselves (an xor of the sign bits into the floats' sign bits, then a dot) instead of
// 4 table lookups per tile row and the table pass before (0.34 -> 0.24 ms, 1024x1024,
// 50% pruned + 40% unified); the host then skips that pass
// (gemm_micro_small::reads_table).
override ROWS4: bool = RL == 4u && NB == 1u;

@group(0) @binding(0) var<storage, read> rows: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> entries: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read> values: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> unified: array<u32>;
@group(0) @binding(4) var<storage, read> xt: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> table: array<f32>;
@group(0) @binding(6) var<storage, read> bias: array<f32>;
@group(0) @binding(7) var<storage, read_write> y: array<f32>;
@group(0) @binding(8) var<uniform> p: GemmParams;

/// `±x` for the 4 inputs whose bits are `xb`, bit j of `nib` set = minus: the sign bit
/// xor-ed in (exact, as the table's sums of ±x are).
fn flip(xb: vec4<u32>, nib: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(xb ^ (((vec4(nib) >> vec4(0u, 1u, 2u, 3u)) & vec4(1u)) << vec4(31u)));
}

@compute @workgroup_size(MICRO_WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let m0 = ((wid.y * nwg.x + wid.x) * MICRO_WG + lid) * RL;
    if (m0 >= p.m) {
        return;
    }
    let c4 = BC / 4u;
    // First row inside the tile (0 when a lane owns whole tiles: folded, so the sign-word
    // loads of the rows below become one).
    let r0 = select(m0 % BR, 0u, RL == BR);
    let ri = rows[m0 / BR];
    var acc: array<vec4<f32>, 8>;
    // With 4 rows and one column of X the partial sums live in named vectors, not in the
    // indexed array: rows 0..3 of dense tiles in d0..d3, of unified ones in uni.
    var d0 = vec4(0.0);
    var d1 = vec4(0.0);
    var d2 = vec4(0.0);
    var d3 = vec4(0.0);
    var uni = vec4(0.0);
    let ds = slice_range(ri.x, ri.y);
    for (var e = ds.x; e < ds.y; e++) { // loop budget: one slice (src/gpu/loops.rs)
        let ent = entries[e];
        let xq = ent.x * c4;
        let tq = ent.y / 4u + r0 * c4;
        if (ROWS4) {
            for (var c = 0u; c < c4; c++) {
                let xv = xt[xq + c];
                d0 = fma(values[tq + c], xv, d0);
                d1 = fma(values[tq + c4 + c], xv, d1);
                d2 = fma(values[tq + 2u * c4 + c], xv, d2);
                d3 = fma(values[tq + 3u * c4 + c], xv, d3);
            }
            continue;
        }
        for (var c = 0u; c < c4; c++) {
            // Each load of X serves the lane's RL rows (its tile values are loaded per
            // column of X: at N = 1 once, and N ≤ 8 keeps them in cache).
            for (var n = 0u; n < NB; n++) {
                let xv = xt[n * p.k4 + xq + c];
                for (var i = 0u; i < RL; i++) {
                    acc[i * NB + n] = fma(values[tq + i * c4 + c], xv, acc[i * NB + n]);
                }
            }
        }
    }
    let us = slice_range(ri.y, ri.z);
    for (var e = us.x; e < us.y; e++) { // loop budget: one slice
        let ent = entries[e];
        let xq = ent.x * c4;
        let rec = ent.y * (WPB + 1u);
        if (ROWS4) {
            // The 4 rows' sign bits, and their signed sums, as vectors over the rows.
            let bit = (vec4(r0) + vec4(0u, 1u, 2u, 3u)) * BC;
            var bits: vec4<u32>;
            if (WPB == 1u) {
                bits = vec4(unified[rec + 1u]) >> bit;
            } else {
                let wi = vec4(rec + 1u) + bit / 32u;
                bits = vec4(unified[wi.x], unified[wi.y], unified[wi.z], unified[wi.w])
                    >> (bit % 32u);
            }
            var sv = vec4(0.0);
            for (var c = 0u; c < c4; c++) {
                let nib = (bits >> vec4(4u * c)) & vec4(15u);
                let xb = bitcast<vec4<u32>>(xt[xq + c]);
                sv.x += dot(flip(xb, nib.x), vec4(1.0));
                sv.y += dot(flip(xb, nib.y), vec4(1.0));
                sv.z += dot(flip(xb, nib.z), vec4(1.0));
                sv.w += dot(flip(xb, nib.w), vec4(1.0));
            }
            uni = fma(vec4(bitcast<f32>(unified[rec])), sv, uni);
            continue;
        }
        // Each of the lane's tile rows lies in one sign word (BC is 4, 8, 16 or 32, or a
        // multiple of 32): load each row's bits once per tile.
        var rw: array<u32, 8>;
        if (WPB == 1u) {
            // The whole tile's bits are in one word: one load for all the lane's rows.
            let w0 = unified[rec + 1u];
            for (var i = 0u; i < RL; i++) {
                rw[i] = w0 >> ((r0 + i) * BC);
            }
        } else {
            for (var i = 0u; i < RL; i++) {
                let bit = (r0 + i) * BC;
                rw[i] = unified[rec + 1u + bit / 32u] >> (bit % 32u);
            }
        }
        // Signed sums per tile row: each 4 sign bits index the 16 precomputed sums of
        // their 4 inputs (gemm_sign_table), one load instead of a decode per weight.
        var s: array<f32, 8>;
        for (var c = 0u; c < c4; c++) {
            let word = 32u * (c * 4u / 32u); // first bit of column group c in its word
            for (var i = 0u; i < RL; i++) {
                var bits = rw[i];
                if (BC > 32u) {
                    bits = unified[rec + 1u + ((r0 + i) * BC + 4u * c) / 32u];
                }
                let nib = (bits >> (4u * c - word)) & 15u;
                for (var n = 0u; n < NB; n++) {
                    s[i * NB + n] += table[(n * p.k4 + xq + c) * 16u + nib];
                }
            }
        }
        let a = bitcast<f32>(unified[rec]);
        for (var t = 0u; t < RL * NB; t++) {
            acc[t].x = fma(a, s[t], acc[t].x);
        }
    }
    if (ROWS4) {
        acc[0] = d0 + vec4(uni.x, 0.0, 0.0, 0.0);
        acc[1] = d1 + vec4(uni.y, 0.0, 0.0, 0.0);
        acc[2] = d2 + vec4(uni.z, 0.0, 0.0, 0.0);
        acc[3] = d3 + vec4(uni.w, 0.0, 0.0, 0.0);
    }
    for (var i = 0u; i < RL; i++) {
        let m = m0 + i;
        for (var n = 0u; n < NB; n++) {
            let at = m * p.n4 * 4u + n;
            var v = dot(acc[i * NB + n], vec4(1.0));
            if (p.slice == 0u) {
                v += bias[m];
            } else {
                v += y[at];
            }
            if (p.relu != 0u && p.last != 0u) {
                v = max(v, 0.0);
            }
            y[at] = v;
        }
    }
}
