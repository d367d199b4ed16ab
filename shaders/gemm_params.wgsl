// The uniform block shared by the GEMM kernels (Rust twin: GemmParams in src/gpu/gemm.rs).
// Prepended to each gemm_*.wgsl; a kernel uses the fields its path needs.

struct GemmParams {
    m: u32,      // rows of Y as stored (padded to the row tiling)
    k4: u32,     // vec4s per W row, or per X^T row on the small-batch paths (= K / 4)
    n4: u32,     // vec4s per X and Y row (N padded to a multiple of 8)
    n: u32,      // real columns of Y
    groups: u32, // row groups (workgroups along M)
    relu: u32,   // 1: max(y, 0)
    _pad0: u32,
    _pad1: u32,
}
