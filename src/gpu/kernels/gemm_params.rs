//! Rust twin of `GemmParams` (shaders/gemm_params.wgsl), the uniform of every GEMM kernel.

/// WGSL `GemmParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
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
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_twin_has_the_size_of_its_wgsl_struct() {
        assert_eq!(
            crate::gpu::kernels::reflection::struct_size("GemmParams"),
            Some(size_of::<super::GemmParams>() as u32)
        );
    }
}
