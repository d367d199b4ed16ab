// The conv gather of gemm_dense and gemm_micro (Rust side: src/gpu/conv_gather.rs): with
// GATHER > 0 the kernel's X binding is a convolution's input activation itself and X (what
// im2col would write) is read from it in place, so the network host skips the im2col pass
// and its round trip through memory. Requires gemm_params.wgsl; the kernel declares `x`
// (array<vec4<f32>>), `koff` (array<u32>) and `y`.
//
// A vec4 column of X and Y is 4 output positions along x of one output row: the row's
// values lie at koff[k] + gather_base(j) + 0..3 in the input, koff[k] (per row, uniform
// across the workgroup) the row's (channel, ky, kx) offset. The host takes convolutions of
// stride 1 along x over inputs whose width is a multiple of 4, so that every column's
// start is a multiple of 4 and the 4 values are two aligned vec4 loads and one uniform
// shift (4 scalar gathers measured 3-4× slower on lavapipe). Rows past K have koff NO_ROW
// and read as zeros (unified blocks at the edge sum all their columns).
//
// GATHER 1: Y as the GEMM writes it. GATHER 2 (max) and 3 (average): a 2×2 pooling of
// stride 2 fused into the epilogue; vec4 columns come in pairs, output rows 2·py and
// 2·py + 1 of the same 4 positions, which an invocation owns together (its vec4 columns
// are an even number), and Y holds the pooled activation (p.y_stride values per row).

override GATHER: u32 = 0u;

const NO_ROW: u32 = 0xffffffffu;

/// Where vec4 column `j` starts in the input; padding columns read from the start.
fn gather_base(j: u32) -> u32 {
    if (j >= p.cols4) {
        return 0u;
    }
    var g = j;
    if (GATHER >= 2u) {
        g = j >> 1u;
    }
    let per = p.g_rows * p.g_w;
    let r = g % per;
    var oy = r / p.g_w;
    if (GATHER >= 2u) {
        oy = 2u * oy + (j & 1u);
    }
    return (g / per) * p.in_plane + oy * p.step_y + 4u * (r % p.g_w);
}

/// Row `k` of X at the vec4 column starting at `base` (a multiple of 4).
fn gather_x4(k: u32, base: u32) -> vec4<f32> {
    let raw = koff[k];
    let none = raw == NO_ROW;
    let o = select(raw, 0u, none);
    let q = (o >> 2u) + (base >> 2u);
    let lo = x[q];
    let hi = x[q + 1u];
    let s = o & 3u;
    let one = vec4(lo.yzw, hi.x);
    let two = vec4(lo.zw, hi.xy);
    let three = vec4(lo.w, hi.xyz);
    let v = select(select(select(three, two, s == 2u), one, s == 1u), lo, s == 0u);
    return select(v, vec4(0.0), none);
}

fn y_scalar(q: u32, v: f32) {
    y[q >> 2u][q & 3u] = v;
}

/// The pooled values of vec4 columns `j` (output row 2·py) and `j + 1` (2·py + 1) of Y
/// row `m`, bias and ReLU applied: two 2×2 windows. The pooled kernels run in one slice
/// (the host declines more), so the sums are complete.
fn store_pooled(m: u32, j: u32, top: vec4<f32>, bottom: vec4<f32>) {
    if (j >= p.cols4) {
        return;
    }
    var a: f32;
    var b: f32;
    if (GATHER == 2u) {
        let t = max(top, bottom);
        a = max(t.x, t.y);
        b = max(t.z, t.w);
    } else {
        // PyTorch's order (row by row), divided by 4 (exact: a power of 2).
        a = (((top.x + top.y) + bottom.x) + bottom.y) * 0.25;
        b = (((top.z + top.w) + bottom.z) + bottom.w) * 0.25;
    }
    let g = j >> 1u;
    let px = 2u * (g % p.g_w);
    let at = m * p.y_stride + (g / p.g_w) * p.out_w + px;
    y_scalar(at, a);
    if (px + 1u < p.out_w) {
        y_scalar(at + 1u, b);
    }
}
