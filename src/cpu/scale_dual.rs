//! Twin of scale_dual.wgsl: the scaled dual `U` multiplied by the factor `ρ_old / ρ_new`,
//! one f32 multiply per weight, so the GPU's values are the twin's bit for bit (up to a
//! subnormal flushed by an adapter that flushes them, as WGSL allows).

/// `u ← f·u` in f32.
pub fn scale_dual(u: &mut [f32], f: f32) {
    u.iter_mut().for_each(|x| *x *= f);
}
