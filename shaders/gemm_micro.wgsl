// requires: gemm_params.wgsl gemm_gather.wgsl
// gemm_micro: Y = W·X + bias, optional ReLU, with W micro-structured (docs/METHOD.md §1): per
// block row only the non-pruned blocks are visited; a dense block does br·bc multiply-adds,
// a unified block sums its inputs with their signs (±x by its sign bit) per block row and
// multiplies once by the shared magnitude. The tiled path (any N; N > 8 in use).
// Bindings: 0 rows (read, vec4<u32> per block row: first entry, first unified entry, end),
//   1 entries (read, vec2<u32>: block column, then the dense tile's offset in `values` or
//   the unified block's index), 2 values (read, vec4 view of the full BR×BC tiles,
//   zero-padded at edges and to a whole vec4), 3 unified (read, u32: per unified block its magnitude's bits then WPB sign
//   words, bit r·BC + c set = negative), 4 X (read, block_cols·BC rows × N4 vec4, zero-padded
//   rows past K), 5 bias (read, M_pad f32), 6 Y (read_write, M_pad × N4 vec4),
//   7 GemmParams (uniform), 8 koff (read, the conv gather's row offsets; GATHER 0 ignores
//   it). GATHER > 0: X is a convolution's input activation and Y may hold pooled values
//   (gemm_gather.wgsl).
// Dispatch: (ceil(N4 / (NV·GEMM_WG)), M_pad / GEMM_TM) workgroups of GEMM_WG invocations,
// once per slice of the block rows' entries (gemm_params.wgsl);
// a workgroup owns GEMM_TM rows (dividing BR) of one block row, so the block row, its entry
// list, the tiles and the sign words are workgroup-uniform (one scalar load + broadcast on
// CPU drivers, no divergent branches: dense and unified entries are two separate loops).
// Each invocation owns NV vec4 columns of those rows: 4 when tiles have 4 rows or fewer, so
// that each X load still feeds as many fmas as in gemm_dense.

// Loops: modelled in src/gpu/loops.rs, which kernels-tests/loop_budget.rs checks against
// this file (lavapipe's 65,535 iterations per invocation); change both together.

override GEMM_WG: u32;
override GEMM_TM: u32; // divides BR, at most 8
override NV: u32; // vec4 columns of Y per invocation: 2, or 4 when GEMM_TM ≤ 4
override BR: u32;
override BC: u32;
override WPB: u32; // sign words per block: ceil(BR·BC / 32)

@group(0) @binding(0) var<storage, read> rows: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> entries: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read> values: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> unified: array<u32>;
@group(0) @binding(4) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<vec4<f32>>;
@group(0) @binding(7) var<uniform> p: GemmParams;
@group(0) @binding(8) var<storage, read> koff: array<u32>;

/// The conv gather's start of each of the invocation's vec4 columns (GATHER > 0).
var<private> gbase: array<u32, 4>;

/// Tile value `i` (the buffer is a vec4 view, zero-padded to whole vec4s).
fn val(i: u32) -> f32 {
    return values[i / 4u][i % 4u];
}

/// Tile values `t..t+4`: one vec4 load when BC is a multiple of 4 (then `t` is aligned).
fn w4(t: u32) -> vec4<f32> {
    if (BC % 4u == 0u) {
        return values[t / 4u];
    }
    return vec4(val(t), val(t + 1u), val(t + 2u), val(t + 3u));
}

/// The bits of 1.0: `signed4(ONE_BITS, ..)` gives ±1.
const ONE_BITS: u32 = 0x3f800000u;

/// `±a` for the 4 weights of a tile row starting at sign bit `bit` (`a_bits` = the bits of
/// a ≥ 0): each sign bit is shifted into the float's sign position and xor-ed in, 3 ops per
/// weight (converting the bits to floats and scaling them took twice as long on lavapipe).
fn signed4(a_bits: u32, rec: u32, bit: u32) -> vec4<f32> {
    var bits: vec4<u32>;
    if (BC % 4u == 0u) {
        // Rows start at multiples of 4 bits, so the 4 bits sit in one word (folded at
        // pipeline creation: BC is a constant there).
        bits = vec4(unified[rec + 1u + bit / 32u] >> (bit % 32u)) << vec4(31u, 30u, 29u, 28u);
    } else {
        for (var j = 0u; j < 4u; j++) {
            let b = bit + j;
            bits[j] = unified[rec + 1u + b / 32u] << (31u - b % 32u);
        }
    }
    return bitcast<vec4<f32>>(vec4(a_bits) ^ (bits & vec4(0x80000000u)));
}

/// Row `k` of X at the invocation's vec4 column `j0 + v`.
fn x_row(k: u32, j0: u32, v: u32) -> vec4<f32> {
    if (GATHER == 0u) {
        return x[k * p.n4 + j0 + v];
    }
    return gather_x4(k, gbase[v]);
}

/// X rows `k..k+4` at the invocation's NV vec4 columns from `j0`: element `4·r + v`.
fn load_x4(k: u32, j0: u32) -> array<vec4<f32>, 16> {
    var xs: array<vec4<f32>, 16>;
    for (var r = 0u; r < 4u; r++) {
        for (var v = 0u; v < NV; v++) { // NV is a constant at pipeline creation: unrolled
            xs[4u * r + v] = x_row(k + r, j0, v);
        }
    }
    return xs;
}

/// acc[NV·i + v] += Σ_r w[r] · xs[4·r + v]: one tile row's 4 weights against 4 rows of X.
fn mac_row(acc: ptr<function, array<vec4<f32>, 16>>, i: u32, w: vec4<f32>,
           xs: ptr<function, array<vec4<f32>, 16>>) {
    for (var v = 0u; v < NV; v++) {
        var s = (*acc)[NV * i + v];
        s = fma(vec4(w.x), (*xs)[v], s);
        s = fma(vec4(w.y), (*xs)[4u + v], s);
        s = fma(vec4(w.z), (*xs)[8u + v], s);
        s = fma(vec4(w.w), (*xs)[12u + v], s);
        (*acc)[NV * i + v] = s;
    }
}

@compute @workgroup_size(GEMM_WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j0 = (wid.x * GEMM_WG + lid) * NV;
    if (j0 >= p.n4) {
        return;
    }
    let subs = BR / GEMM_TM;
    let brow = wid.y / subs;
    let r0 = (wid.y % subs) * GEMM_TM; // first row inside the tile
    let m0 = wid.y * GEMM_TM;
    let ri = rows[brow];
    if (GATHER != 0u) {
        for (var v = 0u; v < NV; v++) {
            gbase[v] = gather_base(j0 + v);
        }
    }
    var acc: array<vec4<f32>, 16>;
    let c4n = BC / 4u;
    // The next entry is loaded one iteration ahead, so that the tile and X addresses do
    // not wait on a load (a few % on lavapipe; `entries` ends with one spare element).
    let ds = slice_range(ri.x, ri.y);
    var next = entries[ds.x];
    for (var e = ds.x; e < ds.y; e++) { // loop budget: one slice (src/gpu/loops.rs)
        let ent = next;
        next = entries[e + 1u];
        let xr = ent.x * BC;
        let tile = ent.y + r0 * BC;
        // Four tile columns at a time: the body of gemm_dense (4 rows of X, then per tile
        // row 4 uniform weights and 4·NV fmas), so an all-dense matrix runs near its speed.
        for (var c4 = 0u; c4 < c4n; c4++) {
            var xs = load_x4(xr + 4u * c4, j0);
            for (var i = 0u; i < GEMM_TM; i++) {
                let wv = w4(tile + i * BC + 4u * c4);
                mac_row(&acc, i, wv, &xs);
            }
        }
        for (var c = 4u * c4n; c < BC; c++) { // BC not a multiple of 4
            for (var i = 0u; i < GEMM_TM; i++) {
                let wv = vec4(val(tile + i * BC + c));
                for (var v = 0u; v < NV; v++) {
                    acc[NV * i + v] = fma(wv, x_row(xr + c, j0, v), acc[NV * i + v]);
                }
            }
        }
    }
    let us = slice_range(ri.y, ri.z);
    next = entries[us.x];
    for (var e = us.x; e < us.y; e++) { // loop budget: one slice
        let ent = next;
        next = entries[e + 1u];
        let xr = ent.x * BC;
        let rec = ent.y * (WPB + 1u);
        // Signed sums of the inputs per tile row (±1 · x in an fma adds select(+x, -x, bit)
        // exactly, in one op), then one multiply by the magnitude per row and column.
        var sg: array<vec4<f32>, 16>;
        for (var c4 = 0u; c4 < c4n; c4++) {
            var xs = load_x4(xr + 4u * c4, j0);
            for (var i = 0u; i < GEMM_TM; i++) {
                let wv = signed4(ONE_BITS, rec, (r0 + i) * BC + 4u * c4);
                mac_row(&sg, i, wv, &xs);
            }
        }
        for (var c = 4u * c4n; c < BC; c++) { // BC not a multiple of 4
            for (var i = 0u; i < GEMM_TM; i++) {
                let bit = (r0 + i) * BC + c;
                let neg = (unified[rec + 1u + bit / 32u] >> (bit % 32u)) & 1u;
                let g = vec4(select(1.0, -1.0, neg == 1u));
                for (var v = 0u; v < NV; v++) {
                    sg[NV * i + v] = fma(g, x_row(xr + c, j0, v), sg[NV * i + v]);
                }
            }
        }
        let a = vec4(bitcast<f32>(unified[rec]));
        for (var t = 0u; t < GEMM_TM * NV; t++) {
            acc[t] = fma(a, sg[t], acc[t]);
        }
    }
    for (var i = 0u; i < GEMM_TM; i++) {
        let m = m0 + i;
        for (var v = 0u; v < NV; v++) {
            let at = m * p.n4 + j0 + v;
            var o = acc[NV * i + v];
            if (p.slice == 0u) {
                o += vec4(bias[m]);
            } else {
                o += y[at];
            }
            if (p.relu != 0u && p.last != 0u) {
                o = max(o, vec4(0.0));
            }
            acc[NV * i + v] = o;
            if (GATHER < 2u) {
                y[at] = o;
            }
        }
        if (GATHER >= 2u) {
            for (var v = 0u; v < NV; v += 2u) {
                store_pooled(m, j0 + v, acc[NV * i + v], acc[NV * i + v + 1u]);
            }
        }
    }
}
