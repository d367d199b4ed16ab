//! Twin of radix_resolve.wgsl: after a histogram pass each group takes the digit bucket
//! holding its `rem`-th remaining candidate, extends its prefix, and is exact (rem 0)
//! once that bucket is taken whole; the histogram is cleared for the next pass, whose
//! dispatch is armed while a group is still unresolved.

use crate::cpu::radix_histogram::{RadixPass, SelState, state_index};
use crate::gpu::kernels::RADIX;

/// Applies one resolve to `states` (the whole state buffer, `num_groups` groups per
/// selection) given the pass's histogram. Returns whether the pass arms the next one
/// (some group still unresolved and a pass to arm).
pub fn radix_resolve(
    pass: &RadixPass,
    states: &mut [SelState],
    hist: &[u32],
    num_groups: usize,
) -> bool {
    let radix = RADIX as usize;
    let mut arms = false;
    for g in 0..num_groups {
        let st = &mut states[state_index(pass.selection, g, num_groups)];
        let mut below = 0u32;
        for d in 0..RADIX {
            let c = hist[g * radix + d as usize];
            if st.rem > 0 && below + c >= st.rem {
                st.rem -= below;
                if pass.on_index {
                    st.idx |= d << pass.shift;
                } else {
                    st.key |= d << pass.shift;
                }
                if c == st.rem {
                    // The whole bucket: every lower bit may be anything.
                    let low = (1u32 << pass.shift) - 1;
                    if pass.on_index {
                        st.idx |= low;
                    } else {
                        st.key |= low;
                        st.idx = u32::MAX;
                    }
                    st.rem = 0;
                }
                break;
            }
            below += c;
        }
        arms |= st.rem > 0;
    }
    arms && pass.arms.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::pack_states::state_of;
    use crate::cpu::projection::{Group, select_smallest};
    use crate::cpu::radix_histogram::{Selection, radix_histogram, start_states};
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    /// The passes of one selection as the GPU orders them: four 8-bit key digits from the
    /// top, then the block-number digits.
    fn passes(selection: Selection, idx_digits: u32) -> Vec<RadixPass> {
        let high = |below: u32| {
            if below >= 32 {
                0
            } else {
                !((1u32 << below) - 1)
            }
        };
        let keys = (0..4u32).map(|d| (false, 24 - 8 * d));
        let idx = (0..idx_digits).map(|d| (true, 8 * (idx_digits - 1 - d)));
        keys.chain(idx)
            .map(|(on_index, shift)| RadixPass {
                selection,
                on_index,
                shift,
                key_mask: if on_index { u32::MAX } else { high(shift + 8) },
                idx_mask: if on_index { high(shift + 8) } else { 0 },
                arms: Some(0),
            })
            .collect()
    }

    fn select(
        pass_list: &[RadixPass],
        groups: &[Group],
        kp: &[u32],
        ku: &[u32],
        st: &mut [SelState],
    ) {
        for p in pass_list {
            let hist = radix_histogram(p, groups, kp, ku, st);
            radix_resolve(p, st, &hist, groups.len());
        }
    }

    /// The histogram and resolve twins together choose the `k` smallest (key, block)
    /// composites of each group, as sorting does, with many ties in the keys.
    #[test]
    fn the_radix_twins_select_the_smallest_composites() {
        let mut rng = SmallRng::seed_from_u64(11);
        for _ in 0..50 {
            let sizes: Vec<usize> = (0..rng.random_range(1..4))
                .map(|_| rng.random_range(1..700))
                .collect();
            let mut groups = Vec::new();
            let mut begin = 0;
            for &n in &sizes {
                let prune = rng.random_range(0..=n);
                let unify = rng.random_range(0..=n - prune);
                groups.push(Group {
                    begin,
                    end: begin + n,
                    prune,
                    unify,
                });
                begin += n;
            }
            let key = |rng: &mut SmallRng| match rng.random_range(0..3) {
                0 => rng.random_range(0..4u32),
                1 => rng.random_range(0..4u32) << 22 | 0x1234,
                _ => rng.random::<u32>() >> 1,
            };
            let kp: Vec<u32> = (0..begin).map(|_| key(&mut rng)).collect();
            let ku: Vec<u32> = (0..begin).map(|_| key(&mut rng)).collect();
            let mut st = start_states(&groups);
            select(&passes(Selection::Prune, 2), &groups, &kp, &ku, &mut st);
            select(&passes(Selection::Unify, 2), &groups, &kp, &ku, &mut st);
            let n = groups.len();
            for (g, gr) in groups.iter().enumerate() {
                let r = gr.begin..gr.end;
                let f = |k: &[u32]| k[r.clone()].iter().map(|&x| x as f64).collect::<Vec<_>>();
                let pruned = select_smallest(&f(&kp), &vec![false; r.len()], gr.prune);
                let unified = select_smallest(&f(&ku), &pruned, gr.unify);
                for (i, b) in r.clone().enumerate() {
                    let s = state_of(b, kp[b], ku[b], &st[g], &st[n + g]);
                    let want = match (pruned[i], unified[i]) {
                        (true, _) => crate::block::BlockState::Pruned,
                        (_, true) => crate::block::BlockState::Unified,
                        _ => crate::block::BlockState::Dense,
                    };
                    assert_eq!(s, want, "group {g} block {b}");
                }
            }
        }
    }
}
