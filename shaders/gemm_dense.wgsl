// requires: gemm_params.wgsl gemm_gather.wgsl
// gemm_dense: Y = W·X + bias, optional ReLU; the dense, register-blocked baseline that every
// micro-structured speedup is measured against (the tiled path, for any N; N > 8 in use).
// Bindings: 0 W (read, M_pad × K4 vec4, rows zero-padded to a multiple of 4 columns),
//   1 X (read, K4·4 rows × N4 vec4, zero-padded), 2 bias (read, M_pad f32, zeros when none),
//   3 Y (read_write, M_pad × N4 vec4; one value per vec4 column when pooling), 4 GemmParams
//   (uniform), 5 koff (read, the conv gather's row offsets; GATHER 0 ignores it).
// GATHER > 0: X is a convolution's input activation (gemm_gather.wgsl).
// Dispatch: (ceil(N4 / (2·GEMM_WG)), M_pad / GEMM_TM) workgroups of GEMM_WG invocations,
// once per slice of K (gemm_params.wgsl).
// Each invocation owns GEMM_TM rows × 8 columns (2 vec4) of Y. The rows come from the
// workgroup id alone, so every W load is workgroup-uniform: CPU drivers (lavapipe) turn
// it into one scalar load and a broadcast, while the lanes of a workgroup stream
// neighbouring vec4s of X. No shared memory: barriers cost more than they save there.

// Loops: modelled in src/gpu/loops.rs, which kernels-tests/loop_budget.rs checks against
// this file (lavapipe's 65,535 iterations per invocation); change both together.

override GEMM_WG: u32;
override GEMM_TM: u32; // rows per workgroup, at most 8 (the accumulator holds 8 × 2 vec4)

@group(0) @binding(0) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<vec4<f32>>;
@group(0) @binding(4) var<uniform> p: GemmParams;
@group(0) @binding(5) var<storage, read> koff: array<u32>;

@compute @workgroup_size(GEMM_WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j0 = (wid.x * GEMM_WG + lid) * 2u;
    if (j0 >= p.n4) {
        return;
    }
    let m0 = wid.y * GEMM_TM;
    var acc: array<vec4<f32>, 16>;
    let ks = slice_range(0u, p.k4);
    // The conv gather's two vec4 columns (unused without it).
    let g0 = gather_base(j0);
    let g1 = gather_base(j0 + 1u);
    for (var k4 = ks.x; k4 < ks.y; k4++) { // loop budget: one slice (src/gpu/loops.rs)
        // Four rows of X, 8 columns each.
        var a0: vec4<f32>;
        var b0: vec4<f32>;
        var a1: vec4<f32>;
        var b1: vec4<f32>;
        var a2: vec4<f32>;
        var b2: vec4<f32>;
        var a3: vec4<f32>;
        var b3: vec4<f32>;
        if (GATHER == 0u) {
            let xb = k4 * 4u * p.n4 + j0;
            a0 = x[xb];
            b0 = x[xb + 1u];
            a1 = x[xb + p.n4];
            b1 = x[xb + p.n4 + 1u];
            a2 = x[xb + 2u * p.n4];
            b2 = x[xb + 2u * p.n4 + 1u];
            a3 = x[xb + 3u * p.n4];
            b3 = x[xb + 3u * p.n4 + 1u];
        } else {
            let k = 4u * k4;
            a0 = gather_x4(k, g0);
            b0 = gather_x4(k, g1);
            a1 = gather_x4(k + 1u, g0);
            b1 = gather_x4(k + 1u, g1);
            a2 = gather_x4(k + 2u, g0);
            b2 = gather_x4(k + 2u, g1);
            a3 = gather_x4(k + 3u, g0);
            b3 = gather_x4(k + 3u, g1);
        }
        for (var i = 0u; i < GEMM_TM; i++) {
            let wv = w[(m0 + i) * p.k4 + k4]; // uniform across the workgroup
            var s0 = acc[2u * i];
            var s1 = acc[2u * i + 1u];
            s0 = fma(vec4(wv.x), a0, s0);
            s1 = fma(vec4(wv.x), b0, s1);
            s0 = fma(vec4(wv.y), a1, s0);
            s1 = fma(vec4(wv.y), b1, s1);
            s0 = fma(vec4(wv.z), a2, s0);
            s1 = fma(vec4(wv.z), b2, s1);
            s0 = fma(vec4(wv.w), a3, s0);
            s1 = fma(vec4(wv.w), b3, s1);
            acc[2u * i] = s0;
            acc[2u * i + 1u] = s1;
        }
    }
    for (var i = 0u; i < GEMM_TM; i++) {
        let m = m0 + i;
        let at = m * p.n4 + j0;
        var v0 = acc[2u * i];
        var v1 = acc[2u * i + 1u];
        if (p.slice == 0u) {
            let b = vec4(bias[m]);
            v0 += b;
            v1 += b;
        } else {
            v0 += y[at];
            v1 += y[at + 1u];
        }
        if (p.relu != 0u && p.last != 0u) {
            v0 = max(v0, vec4(0.0));
            v1 = max(v1, vec4(0.0));
        }
        if (GATHER >= 2u) {
            store_pooled(m, j0, v0, v1);
        } else {
            y[at] = v0;
            y[at + 1u] = v1;
        }
    }
}
