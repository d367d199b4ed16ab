// pool2d: max or average pooling of an activation stored channel-major (channel ch,
// column b·H·W + y·W + x at ch·in_stride + column) into another (at ch·out_stride +
// b·OH·OW + oy·OW + ox), every input value first passed through the per-channel
// `scale·v + shift` and optional ReLU still pending on it. Padding positions are skipped by
// the max and count as zeros in the average (PyTorch's count_include_pad), whose divisor
// is always kh·kw.
// Bindings: 0 input (read), 1 scale, 2 shift (read, one per channel), 3 output
//   (read_write), 4 Pool2dParams (uniform).
// Dispatch: ceil(total / POOL_WG) workgroups, 2-D when needed; one output value per
// invocation.

// Loops: modelled in src/gpu/loops.rs, which kernels-tests/loop_budget.rs checks against
// this file (lavapipe's 65,535 iterations per invocation); change both together.

override POOL_WG: u32;

struct Pool2dParams {
    channels: u32,
    height: u32,
    width: u32,
    batch: u32,
    kh: u32,
    kw: u32,
    stride_y: u32,
    stride_x: u32,
    pad_y: u32,
    pad_x: u32,
    out_h: u32,
    out_w: u32,
    in_stride: u32,  // values between consecutive channels of the input
    out_stride: u32, // values between consecutive channels of the output
    total: u32,      // channels · batch · out_h · out_w
    average: u32,    // 1: average, else max
    relu: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> input: array<f32>;
@group(0) @binding(1) var<storage, read> scale: array<f32>;
@group(0) @binding(2) var<storage, read> shift: array<f32>;
@group(0) @binding(3) var<storage, read_write> output: array<f32>;
@group(0) @binding(4) var<uniform> p: Pool2dParams;

@compute @workgroup_size(POOL_WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * POOL_WG + lid;
    if (i >= p.total) {
        return;
    }
    let plane = p.out_h * p.out_w;
    let cols = p.batch * plane;
    let ch = i / cols;
    let c = i % cols;
    let b = c / plane;
    let oy = (c % plane) / p.out_w;
    let ox = c % p.out_w;
    let s = scale[ch];
    let t = shift[ch];
    let base = ch * p.in_stride + b * p.height * p.width;
    var best = -3.4028234663852886e38;
    var sum = 0.0;
    for (var ky = 0u; ky < p.kh; ky++) { // loop budget: kh ≤ MAX_POOL_SIDE (src/gpu/loops.rs)
        let py = oy * p.stride_y + ky;
        for (var kx = 0u; kx < p.kw; kx++) { // loop budget: kw ≤ MAX_POOL_SIDE
            let px = ox * p.stride_x + kx;
            if (py >= p.pad_y && py - p.pad_y < p.height && px >= p.pad_x && px - p.pad_x < p.width) {
                var v = fma(input[base + (py - p.pad_y) * p.width + px - p.pad_x], s, t);
                if (p.relu != 0u) {
                    v = max(v, 0.0);
                }
                best = max(best, v);
                sum += v;
            }
        }
    }
    var out = best;
    if (p.average != 0u) {
        out = sum / f32(p.kh * p.kw);
    }
    output[ch * p.out_stride + c] = out;
}
