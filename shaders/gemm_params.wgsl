// The uniform block shared by the GEMM kernels (Rust twin: src/gpu/kernels/gemm_params.rs).
// Required by each gemm_*.wgsl; a kernel uses the fields its path needs.

// The main loop (vec4s of K, or entries of a block row) runs in slices, one dispatch each,
// so that no invocation runs more loop iterations than CPU drivers allow one invocation
// (src/gpu/loops.rs): slice 0 writes Y with the bias, later slices add to it, and ReLU
// applies in the last.
struct GemmParams {
    m: u32,         // rows of Y as stored (padded to the row tiling)
    k4: u32,        // vec4s per W row, or per X^T row on the small-batch paths (= K / 4)
    n4: u32,        // vec4s per X and Y row (N padded to a multiple of 8)
    n: u32,         // real columns of Y
    groups: u32,    // row groups (workgroups along M)
    relu: u32,      // 1: max(y, 0)
    slice_len: u32, // main-loop iterations per slice
    slice: u32,     // this dispatch's slice
    last: u32,      // 1 in the last slice
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    // The conv gather (gemm_gather.wgsl; zero otherwise):
    g_w: u32,      // vec4 columns (GATHER 1) or pairs of them (2, 3) per output row
    g_rows: u32,   // output rows (1) or pooled rows (2, 3) per image
    in_plane: u32, // values per channel of one input image (H·W)
    step_y: u32,   // input values between output rows (stride_y · W)
    cols4: u32,    // real vec4 columns
    out_w: u32,    // pooled values per pooled row
    y_stride: u32, // values per row of a pooled Y
    _pad3: u32,
}

// The main loop's range [lo, hi) in this slice, of a loop over [begin, end).
fn slice_range(begin: u32, end: u32) -> vec2<u32> {
    let lo = min(begin + p.slice * p.slice_len, end);
    return vec2<u32>(lo, min(lo + p.slice_len, end));
}
