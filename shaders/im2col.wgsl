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
// Dispatch: (ceil(stored columns / IM2COL_WG), ceil(stored rows / IM2COL_ROWS)) workgroups;
// each invocation writes one stored column of X over IM2COL_ROWS rows, stepping the
// (channel, ky, kx) of its rows instead of dividing for each (integer division is what a
// CPU driver spends most on here), the padding rows and columns included.

// Loops: modelled in src/gpu/loops.rs, which kernels-tests/loop_budget.rs checks against
// this file (lavapipe's 65,535 iterations per invocation); change both together.

override IM2COL_WG: u32;
override IM2COL_ROWS: u32;

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
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    // Stored rows and columns of X (of X^T: rows along the stored row).
    var krows = p.total / p.out_stride;
    var ccols = p.out_stride;
    if (p.transposed != 0u) {
        krows = p.out_stride;
        ccols = p.total / p.out_stride;
    }
    let c = wid.x * IM2COL_WG + lid;
    if (c >= ccols) {
        return;
    }
    let k0 = wid.y * IM2COL_ROWS;
    let k1 = min(k0 + IM2COL_ROWS, krows);
    let plane = p.out_h * p.out_w;
    let b = c / plane;
    let oy = (c % plane) / p.out_w;
    let ox = c % p.out_w;
    let real_col = c < p.cols;
    let base = b * p.height;
    // The (ci, ky, kx) of row k0, then stepped row by row.
    let khw = p.kh * p.kw;
    var ci = k0 / khw;
    var pos = k0 % khw;
    if (p.position_major != 0u) {
        ci = k0 % p.channels;
        pos = k0 / p.channels;
    }
    var ky = pos / p.kw;
    var kx = pos % p.kw;
    for (var k = k0; k < k1; k++) { // loop budget: IM2COL_ROWS (src/gpu/loops.rs)
        var v = 0.0;
        if (real_col && k < p.rows) {
            // Coordinates in the padded input.
            let py = oy * p.stride_y + ky;
            let px = ox * p.stride_x + kx;
            if (py >= p.pad_y && py - p.pad_y < p.height && px >= p.pad_x && px - p.pad_x < p.width) {
                let at = ci * p.in_stride + (base + py - p.pad_y) * p.width + px - p.pad_x;
                v = fma(input[at], scale[ci], shift[ci]);
                if (p.relu != 0u) {
                    v = max(v, 0.0);
                }
            }
        }
        if (p.transposed != 0u) {
            x[c * p.out_stride + k] = v;
        } else {
            x[k * p.out_stride + c] = v;
        }
        if (p.position_major != 0u) {
            ci += 1u;
            if (ci == p.channels) {
                ci = 0u;
                kx += 1u;
                if (kx == p.kw) {
                    kx = 0u;
                    ky += 1u;
                }
            }
        } else {
            kx += 1u;
            if (kx == p.kw) {
                kx = 0u;
                ky += 1u;
                if (ky == p.kh) {
                    ky = 0u;
                    ci += 1u;
                }
            }
        }
    }
}
