// requires: common.wgsl
// radix_resolve: after a histogram pass, each group picks the digit bucket that holds its
// rem-th remaining candidate, extends its prefix and clears its histogram for the next pass.
// When that bucket is taken whole, the selection is exact and rem becomes 0.
// A group still unresolved arms the next histogram pass's indirect dispatch; passes after
// every group is exact dispatch no workgroups.
// Bindings: 0 PassParams (uniform), 1 selection states (read_write), 2 histograms,
// 3 indirect dispatch arguments of the histogram passes.
// Dispatch: one invocation per group, RESOLVE_WG per workgroup.

// Loops: modelled in src/gpu/loops.rs, which kernels-tests/loop_budget.rs checks against
// this file (lavapipe's 65,535 iterations per invocation); change both together.

override RESOLVE_WG: u32;

@group(0) @binding(0) var<uniform> params: PassParams;
@group(0) @binding(1) var<storage, read_write> states: array<SelState>;
@group(0) @binding(2) var<storage, read_write> hist: array<u32>;
@group(0) @binding(3) var<storage, read_write> args: array<u32>;

@compute @workgroup_size(RESOLVE_WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let g = gid.x;
    if (g >= params.num_groups) {
        return;
    }
    let si = params.which * params.num_groups + g;
    var st = states[si];
    var below = 0u;
    var found = false;
    for (var d = 0u; d < RADIX; d++) {
        let c = hist[g * RADIX + d];
        hist[g * RADIX + d] = 0u;
        if (!found && st.rem > 0u && below + c >= st.rem) {
            found = true;
            st.rem -= below;
            if (params.on_index != 0u) {
                st.idx |= d << params.shift;
            } else {
                st.key |= d << params.shift;
            }
            if (c == st.rem) {
                // The whole bucket is taken: every lower bit may be anything, so set them
                // all and mark the selection exact (rem 0) to skip the remaining passes.
                let low = (1u << params.shift) - 1u;
                if (params.on_index != 0u) {
                    st.idx |= low;
                } else {
                    st.key |= low;
                    st.idx = 0xffffffffu;
                }
                st.rem = 0u;
            }
        }
        below += c;
    }
    states[si] = st;
    if (st.rem > 0u && params.next_args != 0xffffffffu) {
        // Every unresolved group stores the same values: the race is benign.
        args[params.next_args] = params.grid_x;
        args[params.next_args + 1u] = params.grid_y;
    }
}
