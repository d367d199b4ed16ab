// requires: gemm_params.wgsl
// gemm_dense_tiled: Y = W·X + bias, optional ReLU, with a dense W; the GPU-style variant of
// gemm_dense (any N). A workgroup owns a BM × BN tile of Y; per K tile of BK it stages the
// BM × BK slab of W (transposed) and the BK × BN slab of X in workgroup memory, so that each
// value read from memory feeds TM (or TN) multiply-adds, then each invocation accumulates
// its TM × TN register tile from workgroup memory.
// Bindings: 0 W (read, M_pad × K4 vec4, M padded to BM and K to BK with zeros),
//   1 X (read, K4·4 rows × N4 vec4, zero-padded; N4·4 a multiple of BN), 2 bias (read,
//   M_pad f32, zeros when none), 3 Y (read_write, M_pad × N4 vec4), 4 GemmParams (uniform).
// Dispatch: (N4·4 / BN, M_pad / BM) workgroups of TILE_WG = (BM / TM)·(BN / TN)
// invocations, once per slice of the K tiles (gemm_params.wgsl). No invocation returns
// early: every one reaches every barrier (the host pads M, K and N to whole tiles).
// Tile configurations: src/gpu/kernels/gemm_dense_tiled.rs (which checks that the staging
// loads divide evenly among the invocations).

// Loops: modelled in src/gpu/loops.rs, which kernels-tests/loop_budget.rs checks against
// this file (lavapipe's 65,535 iterations per invocation); change both together.

override TILE_WG: u32;
override BM: u32; // rows of the output tile, at most MAX_BM
override BN: u32; // columns of the output tile, a multiple of TN, at most MAX_BN
override TM: u32; // rows per invocation
override TN: u32; // columns per invocation, 4 or 8

const BK: u32 = 16u; // K per staged tile (4 vec4s of a W row)
const MAX_BM: u32 = 128u;
const MAX_BN: u32 = 128u;

// W tile transposed (k-major: element k·BM + row), so an invocation's TM weights of one k
// sit side by side; X tile row-major in vec4s (element k·BN/4 + vec4 column).
var<workgroup> wt: array<f32, BK * MAX_BM>;
var<workgroup> xt: array<vec4<f32>, BK * MAX_BN / 4u>;

@group(0) @binding(0) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<vec4<f32>>;
@group(0) @binding(4) var<uniform> p: GemmParams;

@compute @workgroup_size(TILE_WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let bk4 = BK / 4u;
    let bn4 = BN / 4u;
    let tn4 = TN / 4u;
    let tx = lid % (BN / TN);
    let ty = lid / (BN / TN);
    let m_base = wid.y * BM;
    let j_base = wid.x * bn4;
    let w_loads = BM * bk4 / TILE_WG;
    let x_loads = BK * bn4 / TILE_WG;
    var acc: array<vec4<f32>, 16>; // TM × TN/4
    let kts = slice_range(0u, p.k4 / bk4);
    for (var kt = kts.x; kt < kts.y; kt++) { // loop budget: one slice (src/gpu/loops.rs)
        for (var l = 0u; l < w_loads; l++) {
            let i = l * TILE_WG + lid;
            let r = i / bk4;
            let q = i % bk4;
            let v = w[(m_base + r) * p.k4 + kt * bk4 + q];
            wt[(4u * q) * BM + r] = v.x;
            wt[(4u * q + 1u) * BM + r] = v.y;
            wt[(4u * q + 2u) * BM + r] = v.z;
            wt[(4u * q + 3u) * BM + r] = v.w;
        }
        for (var l = 0u; l < x_loads; l++) {
            let i = l * TILE_WG + lid;
            xt[i] = x[(kt * BK + i / bn4) * p.n4 + j_base + i % bn4];
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var b: array<vec4<f32>, 2>;
            for (var j = 0u; j < tn4; j++) {
                b[j] = xt[kk * bn4 + tx * tn4 + j];
            }
            for (var i = 0u; i < TM; i++) {
                let a = vec4(wt[kk * BM + ty * TM + i]);
                for (var j = 0u; j < tn4; j++) {
                    acc[i * tn4 + j] = fma(a, b[j], acc[i * tn4 + j]);
                }
            }
        }
        // The next K tile overwrites what the slower invocations may still be reading.
        workgroupBarrier();
    }
    for (var i = 0u; i < TM; i++) {
        let m = m_base + ty * TM + i;
        for (var j = 0u; j < tn4; j++) {
            let at = m * p.n4 + j_base + tx * tn4 + j;
            var v = acc[i * tn4 + j];
            if (p.slice == 0u) {
                v += vec4(bias[m]);
            } else {
                v += y[at];
            }
            if (p.relu != 0u && p.last != 0u) {
                v = max(v, vec4(0.0));
            }
            y[at] = v;
        }
    }
}
