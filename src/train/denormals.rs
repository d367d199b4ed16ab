//! Flush-to-zero for the CPU: ADMM's penalty pulls weights towards zero, and denormal
//! arithmetic slowed CPU epochs 2-4x on this machine (ENVIRONMENT.md). tch has no binding
//! for `torch.set_flush_denormal`, so the FTZ and DAZ bits of MXCSR are set on the calling
//! thread; call it on the main thread before libtorch starts its workers (they inherit it).

/// Sets FTZ and DAZ on this thread (x86-64); returns whether it could.
pub fn flush_denormals() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let mut csr: u32 = 0;
        // SAFETY: stmxcsr/ldmxcsr only read and write this thread's SSE control register;
        // setting FTZ (bit 15) and DAZ (bit 6) changes rounding of denormals, nothing else.
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack));
            csr |= (1 << 15) | (1 << 6);
            std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack));
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn denormals_flush_after_the_call() {
        std::thread::spawn(|| {
            assert!(super::flush_denormals());
            let tiny = std::hint::black_box(f32::MIN_POSITIVE);
            // With FTZ the product underflows to 0 instead of a denormal.
            assert_eq!(tiny * std::hint::black_box(0.5f32), 0.0);
        })
        .join()
        .unwrap();
    }
}
