// apply_projection: Z = Π(W + U) block by block, the fused dual update U ← U + W − Z, the
// unified magnitudes and the packed sign bits of unified blocks, for one chunk.
// Bindings: 0 ChunkParams (uniform), 1 layers, 2 pieces, 3 W (read), 4 U (read_write, in
// place), 5 Z, 6 the state map, 7 magnitudes (in: mean |v|; out: a for unified, else 0),
// 8 sign words (words_per_block per block; bit i = sign of the block's i-th weight).
// Dispatch: one invocation per padded block served by the chunk, APPLY_WG per workgroup.

override APPLY_WG: u32;

@group(0) @binding(0) var<uniform> chunk: ChunkParams;
@group(0) @binding(1) var<storage, read> layers: array<Layer>;
@group(0) @binding(2) var<storage, read> pieces: array<Piece>;
@group(0) @binding(3) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> u: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> z: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> state_map: array<u32>;
@group(0) @binding(7) var<storage, read_write> magnitude: array<f32>;
@group(0) @binding(8) var<storage, read_write> signs: array<u32>;

fn find_piece(b: u32) -> u32 {
    var lo = chunk.piece_begin;
    var hi = chunk.piece_end - 1u;
    while (lo < hi) {
        let mid = (lo + hi + 1u) / 2u;
        if (pieces[mid].block_begin <= b) {
            lo = mid;
        } else {
            hi = mid - 1u;
        }
    }
    return lo;
}

@compute @workgroup_size(APPLY_WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let t = linear_workgroup(wid, nwg) * APPLY_WG + lid;
    if (t >= chunk.num_threads) {
        return;
    }
    let b = chunk.block_begin + t;
    let piece = pieces[find_piece(b)];
    let layer = layers[piece.layer];
    let lb = b - layer.block_start;
    if (lb >= layer.num_blocks) {
        magnitude[b] = 0.0;
        return;
    }
    let state = (state_map[b / 16u] >> (2u * (b % 16u))) & 3u;
    let unified = state == 1u;
    var a = 0.0;
    if (unified) {
        a = magnitude[b];
    }
    magnitude[b] = a;

    let brow = lb / layer.block_cols;
    let bcol = lb - brow * layer.block_cols;
    let h = min(layer.br, layer.rows - brow * layer.br);
    let wd = min(layer.bc, layer.cols - bcol * layer.bc);
    let base = piece.elem_offset + (brow - piece.block_row0) * layer.br * layer.cols
        + bcol * layer.bc;
    let sign_base = layer.sign_offset + lb * layer.words_per_block;

    var word = 0u;
    var bit = 0u;
    var widx = 0u;
    if (layer.vec4_rows != 0u) {
        // Whole vec4s; `bit` stays a multiple of 4, so 4 sign bits never straddle a word.
        for (var r = 0u; r < h; r++) {
            let rb = (base + r * layer.cols) >> 2u;
            for (var c = 0u; c < wd / 4u; c++) {
                let v = w[rb + c] + u[rb + c];
                let neg = v < vec4<f32>(0.0);
                var zv = vec4<f32>(0.0);
                if (state == 0u) {
                    zv = v;
                } else if (unified) {
                    zv = select(vec4<f32>(a), vec4<f32>(-a), neg);
                    let nb = select(vec4<u32>(0u), vec4<u32>(1u, 2u, 4u, 8u), neg);
                    word |= (nb.x | nb.y | nb.z | nb.w) << bit;
                }
                z[rb + c] = zv;
                u[rb + c] = v - zv;
                bit += 4u;
                if (bit == 32u) {
                    signs[sign_base + widx] = word;
                    widx += 1u;
                    word = 0u;
                    bit = 0u;
                }
            }
        }
    } else {
        for (var r = 0u; r < h; r++) {
            let rb = base + r * layer.cols;
            for (var c = 0u; c < wd; c++) {
                let i = rb + c;
                let v = w[i >> 2u][i & 3u] + u[i >> 2u][i & 3u];
                var zv = 0.0;
                if (state == 0u) {
                    zv = v;
                } else if (unified) {
                    zv = select(a, -a, v < 0.0);
                    word |= select(0u, 1u, v < 0.0) << bit;
                }
                z[i >> 2u][i & 3u] = zv;
                u[i >> 2u][i & 3u] = v - zv;
                bit += 1u;
                if (bit == 32u) {
                    signs[sign_base + widx] = word;
                    widx += 1u;
                    word = 0u;
                    bit = 0u;
                }
            }
        }
    }
    if (bit != 0u) {
        signs[sign_base + widx] = word;
        widx += 1u;
    }
    for (; widx < layer.words_per_block; widx++) {
        signs[sign_base + widx] = 0u;
    }
}
