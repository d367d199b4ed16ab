// requires: gemm_params.wgsl
// gemm_dense_small: Y = W·X + bias, optional ReLU, for small batches (N ≤ 8): the dense
// comparison point of the micro-structured small-batch path. At small N the time is the
// bytes of W, so each invocation streams one row of W as vec4s and keeps N vec4 partial sums.
// Bindings: 0 W (read, M × K4 vec4, rows zero-padded), 1 XT (read, X transposed: NB rows ×
//   K4 vec4, zero-padded), 2 bias (read, M f32), 3 Y (read_write, f32, M rows of N4·4),
//   4 GemmParams (uniform).
// Dispatch: ceil(M / SMALL_WG) workgroups (2-D when needed) of SMALL_WG invocations, one row
// each, once per slice of K (gemm_params.wgsl). X is transposed on upload so that its loads are workgroup-uniform vec4s.

// Loops: modelled in src/gpu/loops.rs, which kernels-tests/loop_budget.rs checks against
// this file (lavapipe's 65,535 iterations per invocation); change both together.

override SMALL_WG: u32;
override NB: u32; // columns of X and Y, 1..8

@group(0) @binding(0) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> xt: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: GemmParams;

@compute @workgroup_size(SMALL_WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let m = (wid.y * nwg.x + wid.x) * SMALL_WG + lid;
    if (m >= p.m) {
        return;
    }
    var acc: array<vec4<f32>, 8>;
    let ks = slice_range(0u, p.k4);
    for (var k4 = ks.x; k4 < ks.y; k4++) { // loop budget: one slice (src/gpu/loops.rs)
        let wv = w[m * p.k4 + k4];
        for (var n = 0u; n < NB; n++) {
            acc[n] = fma(wv, xt[n * p.k4 + k4], acc[n]);
        }
    }
    for (var n = 0u; n < NB; n++) {
        let at = m * p.n4 * 4u + n;
        var v = dot(acc[n], vec4(1.0));
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
