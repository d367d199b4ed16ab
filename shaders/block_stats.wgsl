// block_stats: per-block errors of METHOD.md §2 over V = W + U, and the packed signs of V,
// for one chunk.
// Bindings: 0-2 from chunk_pieces.wgsl (chunk, layers, pieces), 3 W, 4 U (read), 5 prune keys,
// 6 unify keys, 7 mean |v| per block, 8 first bad (non-finite) index per layer (atomic min),
// 9 sign words (words_per_block per block; bit i set when the block's i-th weight, in
// row-major order inside the block, is negative).
// Dispatch: one invocation per padded block served by the chunk (pieces rounded up to whole
// workgroups), STATS_WG * STATS_ITEMS blocks per workgroup, laid out 2-D when needed.

override STATS_WG: u32;
// Blocks per invocation: fewer, longer-lived invocations amortise per-workgroup costs.
override STATS_ITEMS: u32;

@group(0) @binding(3) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> u: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> key_prune: array<u32>;
@group(0) @binding(6) var<storage, read_write> key_unify: array<u32>;
@group(0) @binding(7) var<storage, read_write> mean_abs: array<f32>;
@group(0) @binding(8) var<storage, read_write> first_bad: array<atomic<u32>>;
@group(0) @binding(9) var<storage, read_write> signs: array<u32>;

@compute @workgroup_size(STATS_WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let per_wg = STATS_WG * STATS_ITEMS;
    let t0 = linear_workgroup(wid, nwg) * per_wg;
    if (t0 >= chunk.num_threads) {
        return;
    }
    let piece = pieces[find_piece(t0)];
    let layer = layers[piece.layer];
    let first = piece.block_begin + (t0 - piece.thread_begin) + lid;
    for (var i = 0u; i < STATS_ITEMS; i++) {
        let b = first + i * STATS_WG;
        if (b < piece.block_end) {
            one_block(b, piece, layer);
        }
    }
}

fn one_block(b: u32, piece: Piece, layer: Layer) {
    let lb = b - layer.block_start;
    if (lb >= layer.num_blocks) {
        key_prune[b] = KEY_EXCLUDED;
        key_unify[b] = KEY_EXCLUDED;
        mean_abs[b] = 0.0;
        return;
    }
    let brow = lb / layer.block_cols;
    let bcol = lb - brow * layer.block_cols;
    let row0 = brow * layer.br;
    let col0 = bcol * layer.bc;
    let h = min(layer.br, layer.rows - row0);
    let wd = min(layer.bc, layer.cols - col0);
    let base = piece.elem_offset + (brow - piece.block_row0) * layer.br * layer.cols + col0;

    // Shifted sums keep e_u = Σ(x-K)² - (Σ(x-K))²/n accurate for near-uniform blocks; per-row
    // (and per-lane) partial sums keep the rounding error growing with rows + cols, not
    // rows · cols. W and U are read as vec4s where block rows allow it: on CPU drivers
    // (lavapipe) scalar per-invocation loads cost several times more per byte.
    let shift = abs(w[base >> 2u][base & 3u] + u[base >> 2u][base & 3u]);
    var s1 = 0.0;
    var s2 = 0.0;
    var sq = 0.0;
    var bad = 0xffffffffu;
    let sign_base = layer.sign_offset + lb * layer.words_per_block;
    var word = 0u;
    var bit = 0u;
    var widx = 0u;
    if (layer.vec4_rows != 0u) {
        let sh = vec4<f32>(shift);
        for (var r = 0u; r < h; r++) {
            var r1 = vec4<f32>(0.0);
            var r2 = vec4<f32>(0.0);
            var rq = vec4<f32>(0.0);
            let rb = (base + r * layer.cols) >> 2u;
            for (var c = 0u; c < wd / 4u; c++) {
                let v = w[rb + c] + u[rb + c];
                let fin = (bitcast<vec4<u32>>(v) & vec4<u32>(0x7f800000u)) != vec4<u32>(0x7f800000u);
                if (!all(fin)) {
                    for (var k = 0u; k < 4u; k++) {
                        if (!fin[k]) {
                            bad = min(bad, (row0 + r) * layer.cols + col0 + 4u * c + k);
                        }
                    }
                }
                let x = abs(v);
                let d = x - sh;
                r1 += d;
                r2 += d * d;
                rq += x * x;
                // `bit` stays a multiple of 4, so 4 sign bits never straddle a word.
                let nb = select(vec4<u32>(0u), vec4<u32>(1u, 2u, 4u, 8u), v < vec4<f32>(0.0));
                word |= (nb.x | nb.y | nb.z | nb.w) << bit;
                bit += 4u;
                if (bit == 32u) {
                    signs[sign_base + widx] = word;
                    widx += 1u;
                    word = 0u;
                    bit = 0u;
                }
            }
            s1 += (r1.x + r1.y) + (r1.z + r1.w);
            s2 += (r2.x + r2.y) + (r2.z + r2.w);
            sq += (rq.x + rq.y) + (rq.z + rq.w);
        }
    } else {
        for (var r = 0u; r < h; r++) {
            var r1 = 0.0;
            var r2 = 0.0;
            var rq = 0.0;
            let rb = base + r * layer.cols;
            for (var c = 0u; c < wd; c++) {
                let i = rb + c;
                let v = w[i >> 2u][i & 3u] + u[i >> 2u][i & 3u];
                if (!is_finite_f32(v)) {
                    bad = min(bad, (row0 + r) * layer.cols + col0 + c);
                }
                let x = abs(v);
                let d = x - shift;
                r1 += d;
                r2 += d * d;
                rq += x * x;
                word |= select(0u, 1u, v < 0.0) << bit;
                bit += 1u;
                if (bit == 32u) {
                    signs[sign_base + widx] = word;
                    widx += 1u;
                    word = 0u;
                    bit = 0u;
                }
            }
            s1 += r1;
            s2 += r2;
            sq += rq;
        }
    }
    if (bit != 0u) {
        signs[sign_base + widx] = word;
        widx += 1u;
    }
    for (; widx < layer.words_per_block; widx++) {
        signs[sign_base + widx] = 0u;
    }
    if (bad != 0xffffffffu) {
        atomicMin(&first_bad[piece.layer], bad);
    }
    let n = f32(h * wd);
    var e_u = max(s2 - s1 * s1 / n, 0.0);
    var e_p = sq;
    if (layer.normalise != 0u) {
        e_u = e_u / n;
        e_p = e_p / n;
    }
    key_prune[b] = order_key(e_p);
    key_unify[b] = order_key(e_u);
    mean_abs[b] = shift + s1 / n;
}
