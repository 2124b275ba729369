//! Seeded randomness and train/validation splits.
//!
//! [`Rng`] is SplitMix64 (Steele, Lea and Flood 2014): one `u64` of state, fast, statistically
//! sound for shuffling and augmentation, and identical on every platform (wasm included). It is
//! not cryptographic. [`Rng::derive`] gives independent streams keyed by tuples such as
//! `(seed, epoch, sample index)`, so results do not depend on which thread does the work.
//!
//! The splits return sorted index lists into the caller's samples and are deterministic for a
//! given seed:
//! - [`stratified_split`]: per class, like scikit-learn's stratified `train_test_split` (the CRC
//!   80/20 split of NCT-CRC-HE-100K in the paper's code);
//! - [`group_split`]: whole groups on one side (LC25000, where one source image yields several
//!   augmented tiles, or patient-wise splits), stratified by each group's majority label;
//! - [`every_nth_split`]: index `i` is validation when `i % n == 0` (the paper's BACH split).

use std::collections::{BTreeMap, HashMap};

use crate::{Error, Result};

/// A small seeded pseudo-random generator (SplitMix64).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function (a strong 64-bit mixer).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator seeded with `seed`; the same seed always gives the same sequence.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// An independent generator for the stream `(seed, keys...)`, e.g. `derive(seed, &[epoch,
    /// index])`: different key tuples give unrelated sequences.
    pub fn derive(seed: u64, keys: &[u64]) -> Self {
        let mut h = mix(seed ^ 0x5851_F42D_4C95_7F2D);
        for (i, &k) in keys.iter().enumerate() {
            h = mix(h ^ mix(k.wrapping_add(GOLDEN.wrapping_mul(i as u64 + 1))));
        }
        Self { state: h }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// A uniform `f32` in `[0, 1)` (24 random bits).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// A uniform `f64` in `[0, 1)` (53 random bits).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform `f32` in `[lo, hi)` (`lo` when `hi <= lo`).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = self.next_f32();
        if hi > lo {
            (lo + (hi - lo) * u).min(hi)
        } else {
            lo
        }
    }

    /// A uniform integer in `[0, n)` without modulo bias (Lemire's method); 0 when `n == 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Shuffles `items` in place (Fisher-Yates), uniformly over all permutations.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

fn check_fraction(val_fraction: f64) -> Result<()> {
    if val_fraction.is_finite() && val_fraction > 0.0 && val_fraction < 1.0 {
        Ok(())
    } else {
        Err(Error::msg(format!(
            "validation fraction must be between 0 and 1 (exclusive), got {val_fraction}"
        )))
    }
}

/// How many of `n` items go to validation: `round(n * f)`, at least 1 and at most `n - 1` when
/// `n >= 2`, and 0 when `n < 2` (a lone sample trains).
fn val_count(n: usize, f: f64) -> usize {
    if n < 2 {
        return 0;
    }
    ((n as f64 * f).round() as usize).clamp(1, n - 1)
}

/// Splits sample indices into `(train, validation)`, class by class.
///
/// `labels[i]` is sample `i`'s class. Each class with `n >= 2` samples puts `round(n *
/// val_fraction)` of them (at least one, at most `n - 1`) into validation, chosen by a seeded
/// shuffle; a class with a single sample keeps it for training. Both lists are sorted. Errors if
/// `val_fraction` is not strictly between 0 and 1.
pub fn stratified_split(
    labels: &[usize],
    val_fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>)> {
    check_fraction(val_fraction)?;
    let mut by_class: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &c) in labels.iter().enumerate() {
        by_class.entry(c).or_default().push(i);
    }
    let mut rng = Rng::new(seed);
    let (mut train, mut val) = (Vec::with_capacity(labels.len()), Vec::new());
    for mut members in by_class.into_values() {
        rng.shuffle(&mut members);
        let k = val_count(members.len(), val_fraction);
        val.extend_from_slice(&members[..k]);
        train.extend_from_slice(&members[k..]);
    }
    train.sort_unstable();
    val.sort_unstable();
    Ok((train, val))
}

/// Splits sample indices into `(train, validation)` keeping every group whole.
///
/// `groups[i]` is sample `i`'s group (a source image, a patient); `None` makes the sample a group
/// of its own. A group's label is the most common label among its samples (the smallest on ties).
/// Per label, the label's groups are shuffled and taken into validation while that brings the
/// validation sample count closer to `round(samples * val_fraction)`; a label with two or more
/// groups gets at least one validation group and keeps at least one training group. Both lists
/// are sorted. Errors if the lengths differ or `val_fraction` is not strictly between 0 and 1.
pub fn group_split<S: AsRef<str>>(
    labels: &[usize],
    groups: &[Option<S>],
    val_fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>)> {
    check_fraction(val_fraction)?;
    if labels.len() != groups.len() {
        return Err(Error::msg(format!(
            "{} labels but {} group entries",
            labels.len(),
            groups.len()
        )));
    }
    // Groups in order of first appearance, so the result does not depend on hashing.
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        match g {
            Some(g) => {
                let next = members.len();
                let gi = *index.entry(g.as_ref()).or_insert(next);
                if gi == next {
                    members.push(Vec::new());
                }
                members[gi].push(i);
            }
            None => members.push(vec![i]),
        }
    }
    // Majority label per group, then the groups of each label.
    let mut by_label: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (gi, m) in members.iter().enumerate() {
        let mut counts: HashMap<usize, usize> = HashMap::new();
        for &i in m {
            *counts.entry(labels[i]).or_default() += 1;
        }
        let label =
            counts.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))).map_or(0, |(&l, _)| l);
        by_label.entry(label).or_default().push(gi);
    }
    let mut rng = Rng::new(seed);
    let (mut train, mut val) = (Vec::with_capacity(labels.len()), Vec::new());
    for mut gs in by_label.into_values() {
        rng.shuffle(&mut gs);
        let total: usize = gs.iter().map(|&g| members[g].len()).sum();
        let target = (total as f64 * val_fraction).round() as usize;
        let mut chosen = vec![false; gs.len()];
        let mut n_val = 0usize;
        for (k, &g) in gs.iter().enumerate() {
            let size = members[g].len();
            // Take the group if it brings the count closer to the target.
            if n_val < target && n_val + size - target.min(n_val + size) <= target - n_val {
                chosen[k] = true;
                n_val += size;
            }
        }
        if gs.len() >= 2 {
            if !chosen.iter().any(|&c| c) {
                chosen[0] = true;
            }
            if chosen.iter().all(|&c| c) {
                chosen[gs.len() - 1] = false;
            }
        }
        for (k, &g) in gs.iter().enumerate() {
            if chosen[k] {
                val.extend_from_slice(&members[g]);
            } else {
                train.extend_from_slice(&members[g]);
            }
        }
    }
    train.sort_unstable();
    val.sort_unstable();
    Ok((train, val))
}

/// Splits `0..len` into `(train, validation)` with index `i` in validation when `i % every == 0`
/// (the paper's BACH rule, `every = 20`). Errors if `every < 2`.
pub fn every_nth_split(len: usize, every: usize) -> Result<(Vec<usize>, Vec<usize>)> {
    if every < 2 {
        return Err(Error::msg(format!("every-nth split needs n >= 2, got {every}")));
    }
    Ok((0..len).partition(|i| i % every != 0))
}
