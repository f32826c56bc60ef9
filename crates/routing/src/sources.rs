//! The union of every connection's source allowlist, as sorted, merged address ranges.
//!
//! Built whenever a connection changes (rare); asked on every datagram from an unknown peer
//! (often), so the lookup is a binary search over disjoint ranges: O(log ranges), no hashing.

use std::net::IpAddr;

use ipnet::IpNet;

/// Disjoint, sorted, inclusive ranges per address family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SourceFilter {
    v4: Box<[(u32, u32)]>,
    v6: Box<[(u128, u128)]>,
}

impl SourceFilter {
    pub(crate) fn new<'a>(nets: impl Iterator<Item = &'a IpNet>) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match net {
                IpNet::V4(net) => v4.push((u32::from(net.network()), u32::from(net.broadcast()))),
                IpNet::V6(net) => v6.push((u128::from(net.network()), u128::from(net.broadcast()))),
            }
        }
        Self {
            v4: merge(v4),
            v6: merge(v6),
        }
    }

    /// Is `ip` inside any allowlisted network? IPv4-mapped IPv6 addresses (what a dual-stack
    /// socket reports for IPv4 peers) are checked as IPv4.
    pub(crate) fn admits(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => contains(&self.v4, u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => contains(&self.v4, u32::from(v4)),
                None => contains(&self.v6, u128::from(v6)),
            },
        }
    }

    #[cfg(test)]
    pub(crate) fn range_count(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

fn merge<T: Ord + Copy + num_like::Successor>(mut ranges: Vec<(T, T)>) -> Box<[(T, T)]> {
    ranges.sort_unstable();
    let mut merged: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            // Overlapping or adjacent (10.0.0.0/25 + 10.0.0.128/25) ranges become one.
            Some(last) if start <= last.1.successor_saturating() => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged.into_boxed_slice()
}

fn contains<T: Ord + Copy>(ranges: &[(T, T)], addr: T) -> bool {
    let after = ranges.partition_point(|&(start, _)| start <= addr);
    after > 0 && ranges[after - 1].1 >= addr
}

mod num_like {
    pub(crate) trait Successor {
        fn successor_saturating(self) -> Self;
    }
    impl Successor for u32 {
        fn successor_saturating(self) -> Self {
            self.saturating_add(1)
        }
    }
    impl Successor for u128 {
        fn successor_saturating(self) -> Self {
            self.saturating_add(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(nets: &[&str]) -> SourceFilter {
        let nets: Vec<IpNet> = nets.iter().map(|n| n.parse().unwrap()).collect();
        SourceFilter::new(nets.iter())
    }

    #[test]
    fn admits_inside_and_refuses_outside() {
        let f = filter(&[
            "10.0.0.0/25",
            "10.0.0.128/25",
            "192.0.2.7/32",
            "2001:db8::/32",
            "10.0.0.0/8",
        ]);
        assert_eq!(f.range_count(), 3, "adjacent and nested networks merge");
        for ip in [
            "10.0.0.1",
            "10.255.255.255",
            "192.0.2.7",
            "2001:db8::1",
            "::ffff:10.1.2.3",
        ] {
            assert!(f.admits(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "11.0.0.0",
            "9.255.255.255",
            "192.0.2.8",
            "192.0.2.6",
            "2001:db9::1",
            "::1",
        ] {
            assert!(!f.admits(ip.parse().unwrap()), "{ip}");
        }
        assert!(!SourceFilter::default().admits("10.0.0.1".parse().unwrap()));
        let all = filter(&["0.0.0.0/0"]);
        assert!(all.admits("255.255.255.255".parse().unwrap()));
    }
}
