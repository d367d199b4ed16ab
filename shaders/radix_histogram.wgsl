// requires: common.wgsl select_groups.wgsl
// radix_histogram: one pass of the per-group radix select over composite (key, block) keys.
// Counts, per group, the digit `params.shift` of every candidate whose decided bits match
// the group's prefix. Candidates: all blocks (prune selection) or the blocks not pruned
// (unify selection).
// Bindings: 0-1 from select_groups.wgsl (params, groups), 2 prune keys, 3 unify keys, 4 states
// (prune states then unify states), 5 histograms (RADIX bins per group, atomic).
// Dispatch: one workgroup per SELECT_WG * SELECT_ITEMS padded blocks; a workgroup never
// straddles two groups because every layer's numbering starts at a multiple of that.

// Loops: modelled in src/gpu/loops.rs, which kernels-tests/loop_budget.rs checks against
// this file (lavapipe's 65,535 iterations per invocation); change both together.

override SELECT_WG: u32;
override SELECT_ITEMS: u32;

@group(0) @binding(2) var<storage, read> key_prune: array<u32>;
@group(0) @binding(3) var<storage, read> key_unify: array<u32>;
@group(0) @binding(4) var<storage, read> states: array<SelState>;
@group(0) @binding(5) var<storage, read_write> hist: array<atomic<u32>>;



@compute @workgroup_size(SELECT_WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let wg = linear_workgroup(wid, nwg);
    if (wg >= params.num_workgroups) {
        return;
    }

    let first = wg * SELECT_WG * SELECT_ITEMS;
    let g = find_group(first);
    let st = states[params.which * params.num_groups + g];
    let prune_st = states[g];
    // rem == 0: nothing to select, or the selection is already exact; the loop is skipped
    // but the barriers stay uniform. Loops avoid `continue`: divergent continues cost ~10x
    // on lavapipe.
    if (st.rem > 0u) {
        for (var i = 0u; i < SELECT_ITEMS; i++) {
            let b = first + i * SELECT_WG + lid;
            var key = key_prune[b];
            var ok = true;
            if (params.which == 1u) {
                ok = !is_selected(key, b, prune_st);
                key = key_unify[b];
            }
            ok = ok && (key & params.key_mask) == (st.key & params.key_mask)
                && (b & params.idx_mask) == (st.idx & params.idx_mask);
            var digit = (key >> params.shift) & (RADIX - 1u);
            if (params.on_index != 0u) {
                digit = (b >> params.shift) & (RADIX - 1u);
            }
            if (ok) {
                atomicAdd(&hist[g * RADIX + digit], 1u);
            }
        }
    }
}
