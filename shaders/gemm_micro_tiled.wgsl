// requires: gemm_params.wgsl
// gemm_micro_tiled: Y = W·X + bias, optional ReLU, with W micro-structured (docs/METHOD.md
// §1); the GPU-style variant of gemm_micro (any N). A workgroup owns one block row (all its
// BR rows) × BN columns of Y and walks the block row's dense entries, then its unified ones
// (the layout of gemm_micro). Per entry, KC tile columns at a time, it stages the KC × BN
// slab of X and the BR × KC weights in workgroup memory: a dense tile's values, or a unified
// tile's signs as ±1 (summed into signed sums, then multiplied once by the magnitude). Each
// invocation accumulates an RT × TN register tile: rows RT·ty.. of the block row (rows past
// BR are computed and never stored), columns TN·tx.. of the workgroup's columns.
// Bindings: 0 rows (read, vec4<u32> per block row: first entry, first unified entry, end),
//   1 entries (read, vec2<u32>: block column, then the dense tile's offset in `values` or
//   the unified block's index), 2 values (read, f32, the full BR×BC tiles, zero-padded at
//   edges), 3 unified (read, u32: per unified block its magnitude's bits then WPB sign
//   words, bit r·BC + c set = negative), 4 X (read, block_cols·BC rows × N4 vec4,
//   zero-padded; N4·4 a multiple of BN), 5 bias (read, M_pad f32), 6 Y (read_write, M_pad ×
//   N4 vec4), 7 GemmParams (uniform).
// Dispatch: (N4·4 / BN, block rows) workgroups of TILE_WG = ceil(BR / RT)·(BN / TN)
// invocations, once per slice of the block rows' entries (gemm_params.wgsl). The entry
// lists are the workgroup's own, so every invocation runs the same trip counts and reaches
// every barrier; none returns early.

// Loops: modelled in src/gpu/loops.rs, which kernels-tests/loop_budget.rs checks against
// this file (lavapipe's 65,535 iterations per invocation); change both together.

override TILE_WG: u32;
override BN: u32; // columns of Y per workgroup, a multiple of TN, at most MAX_BN
override RT: u32; // rows per invocation, at most 8
override TN: u32; // columns per invocation, 4 or 8
override KC: u32; // tile columns staged at once, at most MAX_KC
override BR: u32;
override BC: u32;
override WPB: u32; // sign words per block: ceil(BR·BC / 32)

const MAX_BN: u32 = 256u;
const MAX_KC: u32 = 8u;
const MAX_ROWS: u32 = 40u; // 32 block rows, plus the padding of the last row group

// X slab row-major in vec4s (element c·BN/4 + vec4 column); weights row-major (r·KC + c),
// sized for the padded rows that the last row group reads.
var<workgroup> xs: array<vec4<f32>, MAX_KC * MAX_BN / 4u>;
var<workgroup> ws: array<f32, MAX_ROWS * MAX_KC>;

@group(0) @binding(0) var<storage, read> rows: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> entries: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read> values: array<f32>;
@group(0) @binding(3) var<storage, read> unified: array<u32>;
@group(0) @binding(4) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<vec4<f32>>;
@group(0) @binding(7) var<uniform> p: GemmParams;

/// Stages rows xr + c0 .. xr + c0 + KC of X (zeros past the block's BC columns, which may
/// lie past the end of X) for the workgroup's columns from `j_base`.
fn stage_x(xr: u32, c0: u32, j_base: u32, lid: u32) {
    let bn4 = BN / 4u;
    let loads = (KC * bn4 + TILE_WG - 1u) / TILE_WG;
    for (var l = 0u; l < loads; l++) {
        let i = l * TILE_WG + lid;
        let c = c0 + i / bn4;
        if (i < KC * bn4) {
            var v = vec4(0.0);
            if (c < BC) {
                v = x[(xr + c) * p.n4 + j_base + i % bn4];
            }
            xs[i] = v;
        }
    }
}

/// Stages the BR × KC weights of tile columns c0.. of an entry: `dense`, the tile at
/// offset `at` of `values`; else ±1 from the sign words of the record at `at` of
/// `unified`. Zeros past BC.
fn stage_w(dense: bool, at: u32, c0: u32, lid: u32) {
    let loads = (BR * KC + TILE_WG - 1u) / TILE_WG;
    for (var l = 0u; l < loads; l++) {
        let i = l * TILE_WG + lid;
        let r = i / KC;
        let c = c0 + i % KC;
        if (i < BR * KC) {
            var v = 0.0;
            if (c < BC) {
                if (dense) {
                    v = values[at + r * BC + c];
                } else {
                    let bit = r * BC + c;
                    let neg = (unified[at + 1u + bit / 32u] >> (bit % 32u)) & 1u;
                    v = select(1.0, -1.0, neg == 1u);
                }
            }
            ws[i] = v;
        }
    }
}

/// acc[i·TN/4 + j] += Σ_c ws[row i, c] · xs[c, column j] over the staged KC columns.
fn mac_staged(acc: ptr<function, array<vec4<f32>, 16>>, tx: u32, ty: u32) {
    let bn4 = BN / 4u;
    let tn4 = TN / 4u;
    for (var c = 0u; c < KC; c++) {
        var b: array<vec4<f32>, 2>;
        for (var j = 0u; j < tn4; j++) {
            b[j] = xs[c * bn4 + tx * tn4 + j];
        }
        for (var i = 0u; i < RT; i++) {
            let a = vec4(ws[(ty * RT + i) * KC + c]);
            for (var j = 0u; j < tn4; j++) {
                (*acc)[i * tn4 + j] = fma(a, b[j], (*acc)[i * tn4 + j]);
            }
        }
    }
}

@compute @workgroup_size(TILE_WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tn4 = TN / 4u;
    let tx = lid % (BN / TN);
    let ty = lid / (BN / TN);
    let brow = wid.y;
    let j_base = wid.x * (BN / 4u);
    let ri = rows[brow];
    let chunks = (BC + KC - 1u) / KC;
    var acc: array<vec4<f32>, 16>; // RT × TN/4
    let ds = slice_range(ri.x, ri.y);
    for (var e = ds.x; e < ds.y; e++) { // loop budget: one slice (src/gpu/loops.rs)
        let ent = entries[e];
        for (var ch = 0u; ch < chunks; ch++) {
            stage_x(ent.x * BC, ch * KC, j_base, lid);
            stage_w(true, ent.y, ch * KC, lid);
            workgroupBarrier();
            mac_staged(&acc, tx, ty);
            // The next chunk overwrites what slower invocations may still be reading.
            workgroupBarrier();
        }
    }
    let us = slice_range(ri.y, ri.z);
    for (var e = us.x; e < us.y; e++) { // loop budget: one slice
        let ent = entries[e];
        var sg: array<vec4<f32>, 16>;
        for (var ch = 0u; ch < chunks; ch++) {
            stage_x(ent.x * BC, ch * KC, j_base, lid);
            stage_w(false, ent.y * (WPB + 1u), ch * KC, lid);
            workgroupBarrier();
            mac_staged(&sg, tx, ty);
            workgroupBarrier();
        }
        let a = vec4(bitcast<f32>(unified[ent.y * (WPB + 1u)]));
        for (var t = 0u; t < RT * tn4; t++) {
            acc[t] = fma(a, sg[t], acc[t]);
        }
    }
    for (var i = 0u; i < RT; i++) {
        let r = ty * RT + i;
        let m = brow * BR + r;
        for (var j = 0u; j < tn4; j++) {
            let at = m * p.n4 + j_base + tx * tn4 + j;
            // Rows past the block row are padding of the last row group.
            if (r < BR) {
                var o = acc[i * tn4 + j];
                if (p.slice == 0u) {
                    o += vec4(bias[m]);
                } else {
                    o += y[at];
                }
                if (p.relu != 0u && p.last != 0u) {
                    o = max(o, vec4(0.0));
                }
                y[at] = o;
            }
        }
    }
}
