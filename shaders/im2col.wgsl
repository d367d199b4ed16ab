// im2col: writes the X operand of a convolution's GEMM (rows: the weight's GEMM columns,
// src/block.rs ConvLayout; columns: output positions b·OH·OW + oy·OW + ox) from an
// activation stored channel-major (channel ch, column b·H·W + y·W + x at
// ch·in_stride + column), every value passed through the per-channel `scale·v + shift`
// and optional ReLU still pending on it (a BatchNorm after a compressed layer). Zero
// padding is applied after that transform, as PyTorch pads the transformed tensor; the
// GEMM's padding rows and columns are written as zeros. A linear layer's input is the
// same gather with a kernel the size of the whole input (PyTorch's flatten order).
// Bindings: 0 input (read), 1 scale, 2 shift (read, one per input channel),
//   3 x (read_write, the GEMM's X buffer), 4 Im2colParams (uniform).
// Dispatch: ceil(total / IM2COL_WG) workgroups, 2-D when needed; one output value per
// invocation, no loops.

override IM2COL_WG: u32;

struct Im2colParams {
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
    in_stride: u32,      // values between consecutive channels of the input
    rows: u32,           // real rows of X: channels · kh · kw
    cols: u32,           // real columns of X: batch · out_h · out_w
    out_stride: u32,     // values per stored row of X (of X^T when transposed)
    total: u32,          // values of X as stored, padding included
    transposed: u32,     // 1: X^T, value (k, c) at c · out_stride + k
    position_major: u32, // 1: row k = (y·kw + x)·channels + ci, else (ci·kh + y)·kw + x
    relu: u32,
}

@group(0) @binding(0) var<storage, read> input: array<f32>;
@group(0) @binding(1) var<storage, read> scale: array<f32>;
@group(0) @binding(2) var<storage, read> shift: array<f32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;
@group(0) @binding(4) var<uniform> p: Im2colParams;

@compute @workgroup_size(IM2COL_WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * IM2COL_WG + lid;
    if (i >= p.total) {
        return;
    }
    var k = i / p.out_stride;
    var c = i % p.out_stride;
    if (p.transposed != 0u) {
        c = i / p.out_stride;
        k = i % p.out_stride;
    }
    var v = 0.0;
    if (k < p.rows && c < p.cols) {
        var ci = k / (p.kh * p.kw);
        var pos = k % (p.kh * p.kw);
        if (p.position_major != 0u) {
            ci = k % p.channels;
            pos = k / p.channels;
        }
        let ky = pos / p.kw;
        let kx = pos % p.kw;
        let plane = p.out_h * p.out_w;
        let b = c / plane;
        let oy = (c % plane) / p.out_w;
        let ox = c % p.out_w;
        // Coordinates in the padded input.
        let py = oy * p.stride_y + ky;
        let px = ox * p.stride_x + kx;
        if (py >= p.pad_y && py - p.pad_y < p.height && px >= p.pad_x && px - p.pad_x < p.width) {
            let at = ci * p.in_stride + (b * p.height + py - p.pad_y) * p.width + px - p.pad_x;
            v = fma(input[at], scale[ci], shift[ci]);
            if (p.relu != 0u) {
                v = max(v, 0.0);
            }
        }
    }
    x[i] = v;
}
