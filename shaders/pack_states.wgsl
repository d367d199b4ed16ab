// requires: common.wgsl select_groups.wgsl
// pack_states: the block-state map, 2 bits per block (0 dense, 1 unified, 2 pruned), 16
// blocks per word, decided from the finished prune and unify selections.
// Also finishes the magnitudes: a = mean |v| stays for unified blocks, 0 for the others.
// Bindings: 0-1 from select_groups.wgsl (params: num_groups, num_workgroups; groups),
// 2 prune keys, 3 unify keys, 4 selection states, 5 the state map, 6 magnitudes.
// Dispatch: one invocation per word, PACK_WG per workgroup (PACK_WG * 16 blocks per
// workgroup, which must divide the layer padding so that a workgroup has one group).

// Loops: modelled in src/gpu/loops.rs, which kernels-tests/loop_budget.rs checks against
// this file (lavapipe's 65,535 iterations per invocation); change both together.

override PACK_WG: u32;

@group(0) @binding(2) var<storage, read> key_prune: array<u32>;
@group(0) @binding(3) var<storage, read> key_unify: array<u32>;
@group(0) @binding(4) var<storage, read> states: array<SelState>;
@group(0) @binding(5) var<storage, read_write> state_map: array<u32>;
@group(0) @binding(6) var<storage, read_write> magnitude: array<f32>;

@compute @workgroup_size(PACK_WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let wg = linear_workgroup(wid, nwg);
    if (wg >= params.num_workgroups) {
        return;
    }
    let word = wg * PACK_WG + lid;
    let g = find_group(wg * PACK_WG * 16u);
    let prune_st = states[g];
    let unify_st = states[params.num_groups + g];
    var bits = 0u;
    for (var i = 0u; i < 16u; i++) {
        let b = word * 16u + i;
        var code = 0u;
        if (is_selected(key_prune[b], b, prune_st)) {
            code = 2u;
        } else if (is_selected(key_unify[b], b, unify_st)) {
            code = 1u;
        }
        bits |= code << (2u * i);
        if (code != 1u) {
            magnitude[b] = 0.0;
        }
    }
    state_map[word] = bits;
}
