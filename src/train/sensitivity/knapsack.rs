//! The choice of one option per layer (a multiple-choice knapsack): the smallest total
//! predicted loss increase whose total storage fits a bit budget.
//!
//! Exact by dynamic programming over the budget, at one-bit resolution up to
//! [`DP_UNITS`] bits. A larger budget is counted in units of `⌈budget / DP_UNITS⌉` bits,
//! each option's bits rounded up, so that every answer still fits; the result is then at
//! least as good as the exact optimum of a budget smaller by one unit per layer, and a
//! greedy pass spends what the rounding left over.

/// One way to compress one layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Choice {
    /// Storage of the layer (docs/METHOD.md §1).
    pub bits: u64,
    /// Predicted loss increase; a non-finite value is never chosen.
    pub increase: f64,
}

/// Budget resolution of the dynamic programme (its table has this many columns).
pub const DP_UNITS: u64 = 1 << 16;

/// The most options one layer may have (they are indexed by `u16` in the table).
pub const MAX_CHOICES: usize = u16::MAX as usize;

const NONE: u16 = u16::MAX;

/// The index of the option picked for every layer: the smallest total increase with total
/// bits at most `budget`; `None` when even the smallest options do not fit (or a layer has
/// no option with a finite increase).
///
/// # Panics
/// If a layer has more than [`MAX_CHOICES`] options.
pub fn solve(layers: &[Vec<Choice>], budget: u64) -> Option<Vec<usize>> {
    assert!(
        layers.iter().all(|l| l.len() <= MAX_CHOICES),
        "at most {MAX_CHOICES} options per layer"
    );
    let start = table(layers, budget).or_else(|| smallest(layers, budget))?;
    Some(improve(layers, budget, start))
}

/// The dynamic programme over budget units; `None` when nothing fits at its resolution.
fn table(layers: &[Vec<Choice>], budget: u64) -> Option<Vec<usize>> {
    let unit = budget.div_ceil(DP_UNITS).max(1);
    let cap = (budget / unit) as usize;
    let units = |c: &Choice| c.bits.div_ceil(unit);
    // best[c]: the smallest increase of the layers so far within c units (non-increasing
    // in c, so the last column is the answer).
    let mut best = vec![0.0f64; cap + 1];
    let mut picks: Vec<Vec<u16>> = Vec::with_capacity(layers.len());
    for layer in layers {
        let mut next = vec![f64::INFINITY; cap + 1];
        let mut pick = vec![NONE; cap + 1];
        for (j, ch) in layer.iter().enumerate() {
            let w = units(ch);
            if !ch.increase.is_finite() || w > cap as u64 {
                continue;
            }
            let w = w as usize;
            for c in w..=cap {
                let v = best[c - w] + ch.increase;
                if v < next[c] {
                    next[c] = v;
                    pick[c] = j as u16;
                }
            }
        }
        best = next;
        picks.push(pick);
    }
    if !best[cap].is_finite() {
        return None;
    }
    let mut c = cap;
    let mut out = vec![0; layers.len()];
    for (l, pick) in picks.iter().enumerate().rev() {
        let j = usize::from(pick[c]);
        out[l] = j;
        c -= units(&layers[l][j]) as usize;
    }
    Some(out)
}

/// The fewest-bits option of every layer, if together they fit: the start when the
/// table's rounding left no room for it.
fn smallest(layers: &[Vec<Choice>], budget: u64) -> Option<Vec<usize>> {
    let picks = layers
        .iter()
        .map(|l| {
            (0..l.len())
                .filter(|&j| l[j].increase.is_finite())
                .min_by_key(|&j| l[j].bits)
        })
        .collect::<Option<Vec<_>>>()?;
    (total_bits(layers, &picks) <= budget).then_some(picks)
}

/// Total bits of a pick.
pub fn total_bits(layers: &[Vec<Choice>], picks: &[usize]) -> u64 {
    layers.iter().zip(picks).map(|(l, &j)| l[j].bits).sum()
}

/// Total predicted increase of a pick.
pub fn total_increase(layers: &[Vec<Choice>], picks: &[usize]) -> f64 {
    layers.iter().zip(picks).map(|(l, &j)| l[j].increase).sum()
}

/// Repeatedly makes the one-layer change that lowers the increase most while the total
/// still fits, until none does.
fn improve(layers: &[Vec<Choice>], budget: u64, mut picks: Vec<usize>) -> Vec<usize> {
    let mut bits = total_bits(layers, &picks);
    loop {
        let mut best: Option<(f64, usize, usize)> = None;
        for (l, layer) in layers.iter().enumerate() {
            let cur = layer[picks[l]];
            for (j, ch) in layer.iter().enumerate() {
                let gain = cur.increase - ch.increase;
                let fits = bits - cur.bits + ch.bits <= budget;
                if gain > 0.0 && ch.increase.is_finite() && fits && best.is_none_or(|b| gain > b.0)
                {
                    best = Some((gain, l, j));
                }
            }
        }
        let Some((_, l, j)) = best else {
            return picks;
        };
        bits = bits - layers[l][picks[l]].bits + layers[l][j].bits;
        picks[l] = j;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    /// The optimum by trying every combination.
    fn brute_force(layers: &[Vec<Choice>], budget: u64) -> Option<f64> {
        let mut best: Option<f64> = None;
        let mut idx = vec![0usize; layers.len()];
        loop {
            if total_bits(layers, &idx) <= budget {
                let c = total_increase(layers, &idx);
                if c.is_finite() && best.is_none_or(|b| c < b) {
                    best = Some(c);
                }
            }
            let mut l = 0;
            loop {
                if l == layers.len() {
                    return best;
                }
                idx[l] += 1;
                if idx[l] < layers[l].len() {
                    break;
                }
                idx[l] = 0;
                l += 1;
            }
        }
    }

    fn instance(rng: &mut SmallRng, max_bits: u64) -> Vec<Vec<Choice>> {
        (0..rng.random_range(1..=4))
            .map(|_| {
                (0..rng.random_range(1..=5))
                    .map(|_| Choice {
                        bits: rng.random_range(1..=max_bits),
                        // Some increases are negative: compression can lower a loss.
                        increase: rng.random_range(-0.2..3.0),
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn small_budgets_are_solved_exactly() {
        let mut rng = SmallRng::seed_from_u64(7);
        let (mut solved, mut unsolvable) = (0, 0);
        for _ in 0..3000 {
            let layers = instance(&mut rng, 60);
            let budget = rng.random_range(0..=200);
            let got = solve(&layers, budget);
            match (brute_force(&layers, budget), got) {
                (None, None) => unsolvable += 1,
                (Some(opt), Some(p)) => {
                    assert!(total_bits(&layers, &p) <= budget, "{layers:?} {budget}");
                    let c = total_increase(&layers, &p);
                    assert!((c - opt).abs() < 1e-9, "{c} vs {opt}: {layers:?} {budget}");
                    solved += 1;
                }
                (opt, got) => panic!("optimum {opt:?}, got {got:?}: {layers:?} {budget}"),
            }
        }
        assert!(solved > 1000 && unsolvable > 100, "{solved} {unsolvable}");
    }

    /// Past the table's resolution the answer fits and beats the optimum of a budget
    /// smaller by one unit per layer.
    #[test]
    fn large_budgets_fit_and_lose_at_most_a_unit_per_layer() {
        let mut rng = SmallRng::seed_from_u64(11);
        for _ in 0..300 {
            let layers = instance(&mut rng, 40 * DP_UNITS);
            let budget = rng.random_range(DP_UNITS..=100 * DP_UNITS);
            let unit = budget.div_ceil(DP_UNITS);
            let Some(p) = solve(&layers, budget) else {
                assert!(
                    brute_force(&layers, budget).is_none(),
                    "{layers:?} {budget}"
                );
                continue;
            };
            assert!(total_bits(&layers, &p) <= budget);
            let slack = budget.saturating_sub(unit * layers.len() as u64);
            if let Some(opt) = brute_force(&layers, slack) {
                assert!(total_increase(&layers, &p) <= opt + 1e-9);
            }
        }
    }

    #[test]
    fn non_finite_increases_are_never_chosen() {
        let c = |bits, increase| Choice { bits, increase };
        let layers = vec![vec![
            c(10, 0.0),
            c(1, f64::NAN),
            c(2, f64::INFINITY),
            c(5, 1.0),
        ]];
        assert_eq!(solve(&layers, 5), Some(vec![3]));
        assert_eq!(solve(&layers, 4), None);
        assert_eq!(solve(&[vec![c(1, f64::NAN)]], 100), None);
    }
}
