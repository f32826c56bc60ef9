//! Percentage traffic splits (seed 003), compiled to cumulative basis points.
//!
//! A call's bucket is `xxh3(Call-ID, SPLIT_HASH_SEED) % 10_000`: the same Call-ID lands in the
//! same bucket in every process, on every gateway instance, forever (a retransmitted or
//! re-routed INVITE is routed the same way). Branch `i` owns buckets
//! `[upper[i-1], upper[i])`; a branch's share is its percentage in basis points.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::error::RoutingError;
use crate::model::TrafficSplit;

/// Buckets per split: basis points, so a split is exact to 0.01 %.
pub const SPLIT_BUCKETS: u32 = 10_000;

/// Fixed xxh3 seed for the Call-ID hash. Never change it: every gateway in a fleet, and every
/// restart, must agree on which version a Call-ID goes to.
pub const SPLIT_HASH_SEED: u64 = 0x7377_6974_6368_6264; // "switchbd"

/// Percentages may total 100 ± this: `33.33 + 33.33 + 33.34` and `3 × 33.333333` are both fine.
const SPLIT_TOTAL_TOLERANCE: f64 = 0.01;

/// The 64-bit hash a split decision is drawn from.
pub fn call_hash(call_id: &str) -> u64 {
    xxh3_64_with_seed(call_id.as_bytes(), SPLIT_HASH_SEED)
}

/// The bucket (0..10_000) a Call-ID falls into.
pub fn split_bucket(call_id: &str) -> u16 {
    (call_hash(call_id) % u64::from(SPLIT_BUCKETS)) as u16
}

/// One version's slice of the buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Branch {
    pub(crate) version: u32,
    /// Share in basis points.
    pub(crate) share: u16,
    /// Exclusive upper bound of the branch's buckets (cumulative shares).
    pub(crate) upper: u16,
}

/// A validated split: branches in version order, shares totalling exactly 10 000.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CompiledSplit {
    pub(crate) branches: Box<[Branch]>,
}

impl CompiledSplit {
    /// Validates percentages (each 0..=100, total 100 within [`SPLIT_TOTAL_TOLERANCE`]) and
    /// rounds them to basis points with the largest-remainder method, so the shares total
    /// exactly [`SPLIT_BUCKETS`] and no bucket is unowned.
    pub(crate) fn compile(split: &TrafficSplit) -> Result<Self, RoutingError> {
        let app_id = || split.app_id.clone();
        if split.percentages.is_empty() {
            return Err(RoutingError::EmptySplit { app_id: app_id() });
        }
        let mut total = 0.0;
        for (&version, &percentage) in &split.percentages {
            if !(0.0..=100.0).contains(&percentage) {
                return Err(RoutingError::SplitPercentageOutOfRange {
                    app_id: app_id(),
                    version,
                    percentage,
                });
            }
            total += percentage;
        }
        if (total - 100.0).abs() > SPLIT_TOTAL_TOLERANCE {
            return Err(RoutingError::SplitTotalNot100 {
                app_id: app_id(),
                total,
            });
        }
        // Scale to exactly 10 000 (absorbing the tolerance), floor, then hand the remaining
        // basis points to the largest fractional parts (ties: lower version first).
        let scaled: Vec<(u32, f64)> = split
            .percentages
            .iter()
            .map(|(&v, &p)| (v, p / total * f64::from(SPLIT_BUCKETS)))
            .collect();
        let mut shares: Vec<(u32, u32, f64)> = scaled
            .iter()
            .map(|&(v, s)| (v, s.floor() as u32, s - s.floor()))
            .collect();
        let assigned: u32 = shares.iter().map(|s| s.1).sum();
        let mut order: Vec<usize> = (0..shares.len()).collect();
        order.sort_by(|&a, &b| shares[b].2.total_cmp(&shares[a].2).then(a.cmp(&b)));
        for &i in order
            .iter()
            .take(SPLIT_BUCKETS.saturating_sub(assigned) as usize)
        {
            shares[i].1 += 1;
        }
        let mut upper = 0u16;
        let branches = shares
            .iter()
            .map(|&(version, share, _)| {
                let share = share as u16;
                upper += share;
                Branch {
                    version,
                    share,
                    upper,
                }
            })
            .collect();
        Ok(Self { branches })
    }

    /// The branch owning `bucket` (< 10 000).
    pub(crate) fn branch_for(&self, bucket: u16) -> Option<&Branch> {
        self.branches.iter().find(|b| bucket < b.upper)
    }
}

/// The branches of a split whose runtimes are ready, re-cumulated, so a not-ready branch's share
/// is redistributed over the ready ones in proportion to their shares.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ReadyBranches {
    /// `upper` here is cumulative over ready branches only.
    pub(crate) branches: Box<[Branch]>,
    pub(crate) total: u16,
}

impl ReadyBranches {
    pub(crate) fn new(split: &CompiledSplit, is_ready: impl Fn(u32) -> bool) -> Self {
        let mut total = 0u16;
        let branches = split
            .branches
            .iter()
            .filter(|b| b.share > 0 && is_ready(b.version))
            .map(|b| {
                total += b.share;
                Branch { upper: total, ..*b }
            })
            .collect();
        Self { branches, total }
    }

    /// Redraws from the hash bits the bucket did not use, so the redistribution is as
    /// deterministic as the first draw and independent of it.
    pub(crate) fn redraw(&self, hash: u64) -> Option<&Branch> {
        if self.total == 0 {
            return None;
        }
        let draw = ((hash / u64::from(SPLIT_BUCKETS)) % u64::from(self.total)) as u16;
        self.branches.iter().find(|b| draw < b.upper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn split(pairs: &[(u32, f64)]) -> TrafficSplit {
        TrafficSplit {
            app_id: "agent".into(),
            percentages: pairs.iter().copied().collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn shares_total_exactly_ten_thousand() {
        let s = CompiledSplit::compile(&split(&[(1, 33.333333), (2, 33.333333), (3, 33.333333)]))
            .unwrap();
        let shares: Vec<u16> = s.branches.iter().map(|b| b.share).collect();
        assert_eq!(shares, vec![3334, 3333, 3333]);
        assert_eq!(s.branches.last().map(|b| b.upper), Some(10_000));
        let s = CompiledSplit::compile(&split(&[(3, 70.0), (4, 30.0)])).unwrap();
        assert_eq!(s.branch_for(6999).map(|b| b.version), Some(3));
        assert_eq!(s.branch_for(7000).map(|b| b.version), Some(4));
        assert_eq!(s.branch_for(9999).map(|b| b.version), Some(4));
    }

    #[test]
    fn invalid_splits_are_rejected() {
        assert!(matches!(
            CompiledSplit::compile(&split(&[])),
            Err(RoutingError::EmptySplit { .. })
        ));
        assert!(matches!(
            CompiledSplit::compile(&split(&[(1, 50.0), (2, 40.0)])),
            Err(RoutingError::SplitTotalNot100 { .. })
        ));
        assert!(matches!(
            CompiledSplit::compile(&split(&[(1, 150.0), (2, -50.0)])),
            Err(RoutingError::SplitPercentageOutOfRange { version: 1, .. })
        ));
        assert!(matches!(
            CompiledSplit::compile(&split(&[(1, f64::NAN), (2, 100.0)])),
            Err(RoutingError::SplitPercentageOutOfRange { .. })
        ));
    }

    #[test]
    fn bucket_is_stable_across_processes() {
        // Pinned values: if these change, every deployed split reshuffles.
        assert_eq!(
            split_bucket("a84b4c76e66710@pc33.atlanta.com"),
            split_bucket("a84b4c76e66710@pc33.atlanta.com")
        );
        let pinned: Vec<u16> = [
            "call-1",
            "call-2",
            "3848276298220188511@atlanta.example.com",
        ]
        .iter()
        .map(|id| split_bucket(id))
        .collect();
        assert_eq!(pinned, PINNED_BUCKETS.to_vec());
    }

    /// Recorded from this implementation; a change here is a breaking change for every fleet.
    const PINNED_BUCKETS: [u16; 3] = [7017, 1237, 3455];

    #[test]
    fn redistribution_keeps_ready_proportions() {
        let s = CompiledSplit::compile(&split(&[(1, 50.0), (2, 25.0), (3, 25.0)])).unwrap();
        let ready = ReadyBranches::new(&s, |v| v != 1);
        assert_eq!(ready.total, 5000);
        let mut counts = [0u32; 4];
        for i in 0..10_000u32 {
            let hash = call_hash(&format!("redraw-{i}"));
            let version = ready.redraw(hash).map(|b| b.version).unwrap();
            counts[version as usize] += 1;
        }
        assert_eq!(counts[1], 0);
        assert!((4800..=5200).contains(&counts[2]), "{counts:?}");
        assert!(ReadyBranches::new(&s, |_| false).redraw(42).is_none());
    }
}
