// requires: common.wgsl chunk_pieces.wgsl
// apply_projection: Z = Π(W + U) block by block and the fused dual update U ← U + W − Z,
// for one chunk. The state map and the magnitudes come from pack_states.
// Bindings: 0-2 from chunk_pieces.wgsl (chunk, layers, pieces), 3 W (read), 4 U (in
// place), 5 Z, 6 the state map, 7 magnitudes (a for unified blocks, 0 otherwise).
// Dispatch: APPLY_WG * APPLY_ITEMS block slots per workgroup (pieces rounded up to whole
// workgroups, ChunkParams.num_threads slots in all), 2-D when needed. One invocation per
// block, not per element: per-element index arithmetic costs CPU drivers (lavapipe) more
// than the loads it serves.

// Loops: modelled in src/gpu/loops.rs, which kernels-tests/loop_budget.rs checks against
// this file (lavapipe's 65,535 iterations per invocation); change both together.

override APPLY_WG: u32;
// Blocks per invocation, strided by the workgroup size.
override APPLY_ITEMS: u32;

@group(0) @binding(3) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> u: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> z: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> state_map: array<u32>;
@group(0) @binding(7) var<storage, read> magnitude: array<f32>;

@compute @workgroup_size(APPLY_WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let t0 = linear_workgroup(wid, nwg) * APPLY_WG * APPLY_ITEMS;
    if (t0 >= chunk.num_threads) {
        return;
    }
    let piece = pieces[find_piece(t0)];
    let layer = layers[piece.layer];
    let first = piece.block_begin + (t0 - piece.thread_begin) + lid;
    for (var i = 0u; i < APPLY_ITEMS; i++) {
        let b = first + i * APPLY_WG;
        if (b < piece.block_end && b - layer.block_start < layer.num_blocks) {
            one_block(b, piece, layer);
        }
    }
}

fn one_block(b: u32, piece: Piece, layer: Layer) {
    let lb = b - layer.block_start;
    let state = (state_map[b >> 4u] >> (2u * (b & 15u))) & 3u;
    let a = magnitude[b];
    let brow = lb / layer.block_cols;
    let bcol = lb - brow * layer.block_cols;
    let h = min(layer.br, layer.rows - brow * layer.br);
    let wd = min(layer.bc, layer.cols - bcol * layer.bc);
    let base = piece.elem_offset + (brow - piece.block_row0) * layer.br * layer.cols
        + bcol * layer.bc;
    if (layer.vec4_rows != 0u) {
        for (var r = 0u; r < h; r++) {
            let rb = (base + r * layer.cols) >> 2u;
            for (var c = 0u; c < wd / 4u; c++) {
                let v = w[rb + c] + u[rb + c];
                var zv = vec4<f32>(0.0);
                if (state == 1u) {
                    zv = select(vec4<f32>(a), vec4<f32>(-a), v < vec4<f32>(0.0));
                } else if (state == 0u) {
                    zv = v;
                }
                z[rb + c] = zv;
                u[rb + c] = v - zv;
            }
        }
    } else {
        for (var r = 0u; r < h; r++) {
            let rb = base + r * layer.cols;
            for (var c = 0u; c < wd; c++) {
                let i = rb + c;
                let v = w[i >> 2u][i & 3u] + u[i >> 2u][i & 3u];
                var zv = 0.0;
                if (state == 1u) {
                    zv = select(a, -a, v < 0.0);
                } else if (state == 0u) {
                    zv = v;
                }
                z[i >> 2u][i & 3u] = zv;
                u[i >> 2u][i & 3u] = v - zv;
            }
        }
    }
}
