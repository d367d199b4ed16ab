// requires: gemm_params.wgsl
// gemm_sign_table: for every group of 4 consecutive inputs of every column of X, the 16
// signed sums Σ_j ±x_j (bit j of the table index set = minus), so that gemm_micro_small
// turns a unified tile row's 4 sign bits into one table load instead of decoding them
// (the lookup-table trick of binary-coded GEMMs). Recomputed for every X, before the GEMM.
// Bindings: 0 XT (read, NB rows × K4 vec4), 1 table (read_write, vec4<f32>: 4 per
//   (row of XT, vec4 of it): entries 4q..4q+3 of that group's 16 sums), 2 GemmParams (uniform).
// Dispatch: ceil(NB·K4 / TABLE_WG) workgroups (2-D when needed), one invocation per group.

// Loops: modelled in src/gpu/loops.rs, which kernels-tests/loop_budget.rs checks against
// this file (lavapipe's 65,535 iterations per invocation); change both together.

override TABLE_WG: u32;

@group(0) @binding(0) var<storage, read> xt: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> table: array<vec4<f32>>;
@group(0) @binding(2) var<uniform> p: GemmParams;

@compute @workgroup_size(TABLE_WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let g = (wid.y * nwg.x + wid.x) * TABLE_WG + lid;
    if (g >= p.n * p.k4) {
        return;
    }
    let x = xt[g];
    // Index bits 2 and 3 pick the signs of x.z and x.w (one value per output vec4);
    // bits 0 and 1 those of x.x and x.y (the four components).
    let low = vec4(x.x + x.y, -x.x + x.y, x.x - x.y, -x.x - x.y);
    for (var q = 0u; q < 4u; q++) {
        let zw = select(x.z, -x.z, (q & 1u) != 0u) + select(x.w, -x.w, (q & 2u) != 0u);
        table[4u * g + q] = low + vec4(zw);
    }
}
