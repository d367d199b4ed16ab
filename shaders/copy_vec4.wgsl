// copy_vec4: dst = src, one vec4 per invocation; the bandwidth yardstick that kernels are
// reported against (bytes read + written per second on the same adapter, same run).
// Bindings: 0 src (read), 1 dst (read_write), 2 CopyParams (uniform).
// Dispatch: ceil(len / COPY_WG) workgroups, 2-D when needed.

override COPY_WG: u32;

struct CopyParams {
    len: u32,   // vec4 elements
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;
@group(0) @binding(2) var<uniform> params: CopyParams;

@compute @workgroup_size(COPY_WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * COPY_WG + lid;
    if (i < params.len) {
        dst[i] = src[i];
    }
}
