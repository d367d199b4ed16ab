// argmax: the class of each column of a logits activation (class k, column c at
// k·in_stride + c), every value first passed through the per-class `scale·v + shift` and
// optional ReLU still pending on it. The first of equal maxima wins (as torch.argmax).
// Bindings: 0 input (read), 1 scale, 2 shift (read, one per class), 3 classes
//   (read_write, one u32 per column), 4 ArgmaxParams (uniform).
// Dispatch: ceil(cols / ARGMAX_WG) workgroups, 2-D when needed; one column per invocation.

// Loops: modelled in src/gpu/loops.rs, which kernels-tests/loop_budget.rs checks against
// this file (lavapipe's 65,535 iterations per invocation); change both together.

override ARGMAX_WG: u32;

struct ArgmaxParams {
    classes: u32,
    cols: u32,
    in_stride: u32, // values between consecutive classes of the input
    relu: u32,
}

@group(0) @binding(0) var<storage, read> input: array<f32>;
@group(0) @binding(1) var<storage, read> scale: array<f32>;
@group(0) @binding(2) var<storage, read> shift: array<f32>;
@group(0) @binding(3) var<storage, read_write> classes: array<u32>;
@group(0) @binding(4) var<uniform> p: ArgmaxParams;

fn logit(k: u32, c: u32) -> f32 {
    var v = fma(input[k * p.in_stride + c], scale[k], shift[k]);
    if (p.relu != 0u) {
        v = max(v, 0.0);
    }
    return v;
}

@compute @workgroup_size(ARGMAX_WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let c = (wid.y * nwg.x + wid.x) * ARGMAX_WG + lid;
    if (c >= p.cols) {
        return;
    }
    var best = logit(0u, c);
    var at = 0u;
    for (var k = 1u; k < p.classes; k++) { // loop budget: classes ≤ MAX_CLASSES (src/gpu/loops.rs)
        let v = logit(k, c);
        if (v > best) {
            best = v;
            at = k;
        }
    }
    classes[c] = at;
}
