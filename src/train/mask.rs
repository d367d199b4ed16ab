//! The fixed structure of the hard-projected layers during masked retraining (docs/METHOD.md §3):
//! gradients projected onto it, the structure re-imposed after each step, and the count of
//! blocks that break it.

use crate::block::{BlockState, LayerSpec};
use tch::{Device, Kind, Tensor};

/// The fixed structure of one layer during masked retraining, as tensors over its flat
/// weights (signs taken from `z`, the hard-projected weights or their saved signs): `free` is 1 on dense blocks, `sign` is ±1 on unified blocks (0 elsewhere),
/// `index` gives each weight its unified block's ordinal (`slots − 1`, a dump slot, for the
/// others) and `count` each unified block's size.
pub struct Mask {
    free: Tensor,
    pub sign: Tensor,
    index: Tensor,
    count: Tensor,
    slots: i64,
}

impl Mask {
    pub fn new(spec: &LayerSpec, states: &[BlockState], z: &[f32], device: Device) -> Self {
        let grid = spec.grid();
        let n = z.len();
        let unified = states.iter().filter(|s| **s == BlockState::Unified).count();
        let mut free = vec![0f32; n];
        let mut sign = vec![0f32; n];
        let mut index = vec![unified as i64; n];
        let mut count = vec![1f32; unified + 1];
        let mut u = 0;
        for (b, s) in states.iter().enumerate() {
            let ext = grid.extent(b);
            match s {
                BlockState::Dense => ext.indices(spec.view.cols).for_each(|i| free[i] = 1.0),
                BlockState::Pruned => {}
                BlockState::Unified => {
                    count[u] = ext.len() as f32;
                    for i in ext.indices(spec.view.cols) {
                        // Sign of 0 is +1 (docs/METHOD.md §2), as in the projection.
                        sign[i] = if z[i] < 0.0 { -1.0 } else { 1.0 };
                        index[i] = u as i64;
                    }
                    u += 1;
                }
            }
        }
        let t = |v: &[f32]| Tensor::from_slice(v).to_device(device);
        Self {
            free: t(&free),
            sign: t(&sign),
            index: Tensor::from_slice(&index).to_device(device),
            count: t(&count),
            slots: unified as i64 + 1,
        }
    }

    /// Per unified block, `Σ_{i∈b} s_i x_i` (flat `x`; the dump slot collects the rest).
    fn block_sum(&self, x: &Tensor) -> Tensor {
        Tensor::zeros([self.slots], (Kind::Float, x.device())).scatter_add(
            0,
            &self.index,
            &(x * &self.sign),
        )
    }

    /// The gradient of the structured parametrisation, written back as a weight gradient:
    /// dense weights keep `g_i`, pruned ones get 0, and every weight of a unified block gets
    /// `s_i · Σ_j s_j g_j` — the sign times the gradient of the block's shared magnitude.
    pub fn project_grad(&self, w: &Tensor) {
        let mut g = w.grad();
        if !g.defined() {
            return;
        }
        tch::no_grad(|| {
            let flat = g.flatten(0, -1);
            let shared = self.block_sum(&flat).index_select(0, &self.index);
            let new = &flat * &self.free + &self.sign * shared;
            g.copy_(&new.view_as(&g));
        });
    }

    /// Re-imposes the structure on the weights after a step: pruned weights 0, each unified
    /// block `s_i · max(a, 0)` with `a` the block mean of `s_i w_i`. With the projected
    /// gradient and Adam every `s_i w_i` of a block already moves identically (up to float
    /// rounding of vectorised kernels), so this only removes rounding noise and enforces
    /// `a ≥ 0` (docs/METHOD.md §1), i.e. it keeps the signs.
    pub fn reimpose(&self, w: &Tensor) {
        tch::no_grad(|| {
            let flat = w.flatten(0, -1);
            let a = (self.block_sum(&flat) / &self.count).relu();
            let new = &flat * &self.free + &self.sign * a.index_select(0, &self.index);
            w.shallow_clone().copy_(&new.view_as(w));
        });
    }
}

/// Blocks of `w` (flat, GEMM order) that break their state: a pruned block with a non-zero,
/// or a unified block whose weights do not share one magnitude or lost the sign pattern
/// `signs` (±1 per weight; 0 where the block is not unified).
pub fn structure_violations(
    spec: &LayerSpec,
    states: &[BlockState],
    w: &[f32],
    signs: &[f32],
) -> usize {
    let grid = spec.grid();
    states
        .iter()
        .enumerate()
        .filter(|(b, s)| {
            let ext = grid.extent(*b);
            let mut idx = ext.indices(spec.view.cols);
            match s {
                BlockState::Dense => false,
                BlockState::Pruned => idx.any(|i| w[i] != 0.0),
                BlockState::Unified => {
                    let first = ext
                        .indices(spec.view.cols)
                        .next()
                        .map_or(0.0, |i| w[i].abs());
                    idx.any(|i| w[i].abs() != first || (w[i] != 0.0 && w[i] * signs[i] < 0.0))
                }
            }
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::BlockShape;
    use crate::compressed::CompressedMatrix;
    use crate::train::tensors::{host, set_values};
    use tch::nn::{self, Module, OptimizerConfig};

    /// The projected gradient with Adam trains each unified block's shared magnitude: its
    /// weights keep one |w| and their signs without any re-imposition, pruned weights stay 0.
    #[test]
    fn projected_gradients_train_one_magnitude_per_block() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let lin = nn::linear(vs.root(), 8, 4, Default::default());
        let spec = LayerSpec::new("l", &[4, 8], BlockShape::new(2, 4).unwrap()).unwrap();
        let states = [
            BlockState::Dense,
            BlockState::Unified,
            BlockState::Pruned,
            BlockState::Unified,
        ];
        // A structured start: unified blocks ±0.3 / ±0.1, the pruned block 0.
        let mut w = host(&lin.ws).unwrap();
        let grid = spec.grid();
        for (b, a) in [(1, 0.3f32), (3, 0.1)] {
            for (k, i) in grid.extent(b).indices(8).enumerate() {
                w[i] = if k % 3 == 0 { -a } else { a };
            }
        }
        grid.extent(2).indices(8).for_each(|i| w[i] = 0.0);
        set_values(&lin.ws, &w).unwrap();
        let mask = Mask::new(&spec, &states, &w, Device::Cpu);
        let signs = host(&mask.sign).unwrap();
        let x = Tensor::randn([16, 8], (Kind::Float, Device::Cpu));
        let y = Tensor::randn([16, 4], (Kind::Float, Device::Cpu));

        // The shared magnitude's gradient is Σ s_i g_i.
        let loss = (lin.forward(&x) - &y).square().mean(Kind::Float);
        loss.backward();
        let g = host(&lin.ws.grad()).unwrap();
        mask.project_grad(&lin.ws);
        let pg = host(&lin.ws.grad()).unwrap();
        let want: f32 = grid.extent(1).indices(8).map(|i| signs[i] * g[i]).sum();
        for i in grid.extent(1).indices(8) {
            assert!((pg[i] - signs[i] * want).abs() < 1e-6);
        }
        let _ = lin.ws.grad().zero_();

        let mut opt = nn::Adam::default().build(&vs, 1e-2).unwrap();
        for _ in 0..50 {
            let loss = (lin.forward(&x) - &y).square().mean(Kind::Float);
            opt.zero_grad();
            loss.backward();
            mask.project_grad(&lin.ws);
            opt.step();
        }
        let after = host(&lin.ws).unwrap();
        assert_ne!(after, w, "the weights trained");
        for b in [1, 3] {
            let idx: Vec<usize> = grid.extent(b).indices(8).collect();
            let a = after[idx[0]] * signs[idx[0]];
            // (Without the a ≥ 0 clamp of `reimpose`, a may cross zero: all signs flip.)
            let a0 = w[idx[0]].abs();
            assert!((a - a0).abs() > 1e-3, "block {b} did not move: {a0} -> {a}");
            for &i in &idx {
                let d = (after[i] * signs[i] - a).abs();
                assert!(d <= 1e-6 * a.abs(), "block {b}: {} vs {a}", after[i]);
            }
        }
        assert!(grid.extent(2).indices(8).all(|i| after[i] == 0.0));
        mask.reimpose(&lin.ws);
        let fixed = host(&lin.ws).unwrap();
        assert_eq!(structure_violations(&spec, &states, &fixed, &signs), 0);
        CompressedMatrix::from_dense(spec.view, spec.block, &fixed, &states).unwrap();
        let mut broken = fixed.clone();
        broken[grid.extent(2).indices(8).next().unwrap()] = 1e-3;
        broken[grid.extent(1).indices(8).nth(1).unwrap()] += 0.5;
        assert_eq!(structure_violations(&spec, &states, &broken, &signs), 2);
    }
}
