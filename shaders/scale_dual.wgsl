// scale_dual: u ← u · factor over one chunk of the scaled dual U: the rescale of U = y/ρ
// when ρ changes between ADMM rounds (Boyd et al. 2011, §3.4.1), done where U lives.
// One f32 multiply per weight, rounded as the host's `x *= f` is (IEEE, correctly
// rounded; an adapter may flush a subnormal, as WGSL allows).
// Bindings: 0 U (in place), 1 ScaleParams (uniform).
// Dispatch: ceil(len / (SCALE_WG * SCALE_ITEMS)) workgroups, 2-D when needed; each
// invocation scales SCALE_ITEMS consecutive weights, written out rather than looped (CPU
// drivers pay per workgroup far more than per weight).

// Loops: none (src/gpu/loops.rs models it as loop-free; kernels-tests/loop_budget.rs checks).

override SCALE_WG: u32;
// Weights per invocation: the four calls of `one` in main.
const SCALE_ITEMS: u32 = 4u;

struct ScaleParams {
    len: u32,   // f32 elements of the chunk
    factor: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read_write> u: array<f32>;
@group(0) @binding(1) var<uniform> params: ScaleParams;

@compute @workgroup_size(SCALE_WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = ((wid.y * nwg.x + wid.x) * SCALE_WG + lid) * SCALE_ITEMS;
    one(i);
    one(i + 1u);
    one(i + 2u);
    one(i + 3u);
}

fn one(i: u32) {
    if (i < params.len) {
        u[i] = u[i] * params.factor;
    }
}
