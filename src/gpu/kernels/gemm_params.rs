//! Rust twin of `GemmParams` (shaders/gemm_params.wgsl), the uniform of every GEMM kernel.

/// WGSL `GemmParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GemmParams {
    pub m: u32,
    pub k4: u32,
    pub n4: u32,
    pub n: u32,
    pub groups: u32,
    pub relu: u32,
    pub slice_len: u32,
    pub slice: u32,
    pub last: u32,
    pub _pad0: u32,
    pub _pad1: u32,
    pub _pad2: u32,
    /// The conv gather (shaders/gemm_gather.wgsl), zero without it: vec4 columns (or
    /// pairs of them, pooled) per output row, and output (pooled) rows per image.
    pub g_w: u32,
    pub g_rows: u32,
    /// Values per channel of one input image.
    pub in_plane: u32,
    /// Input values between output rows.
    pub step_y: u32,
    /// Real vec4 columns.
    pub cols4: u32,
    /// Pooled values per pooled row, and per row of a pooled Y.
    pub out_w: u32,
    pub y_stride: u32,
    pub _pad3: u32,
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_twin_matches_its_wgsl_struct() {
        crate::twin_layout!(
            super::GemmParams,
            "GemmParams",
            m,
            k4,
            n4,
            n,
            groups,
            relu,
            slice_len,
            slice,
            last,
            _pad0,
            _pad1,
            _pad2,
            g_w,
            g_rows,
            in_plane,
            step_y,
            cols4,
            out_w,
            y_stride,
            _pad3
        );
    }
}
