//! RTP port pairs from `[media] rtp_ports`.
//!
//! Each call gets an even RTP port and reserves the odd port above it for RTCP (RFC 3550
//! §11: RTP on an even port, RTCP on the next one). The pool hands out pairs in FIFO order and
//! takes released pairs back at the tail, so a port just freed is the last to be reused: stray
//! RTP still in flight for an ended call does not land in the next call.
//!
//! A pair is held by an [`RtpPorts`] guard; dropping the guard returns the pair. Because every
//! path that ends a call (reject, CANCEL, BYE, timeout, error, panic) drops the call's state,
//! ports cannot leak.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

/// How many pairs [`RtpPortAllocator::bind`] tries before giving up when ports in the range
/// are held by other processes. A few attempts ride out a neighbour holding some ports; more
/// would only delay the 503 a full range deserves.
pub const BIND_ATTEMPTS: usize = 16;

/// A problem with the configured range or with getting a socket for a pair.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PortError {
    #[error("rtp_ports {spec:?}: expected \"LOW-HIGH\" with 1 <= LOW < HIGH <= 65535")]
    BadRange { spec: String },
    #[error("RTP port range {first}-{last} holds no even/odd port pair")]
    NoPairInRange { first: u16, last: u16 },
    #[error("no free RTP port pair ({capacity} pairs configured)")]
    Exhausted { capacity: usize },
    #[error("could not bind an RTP socket on {ip} after {attempts} attempts: {source}")]
    Bind {
        ip: IpAddr,
        attempts: usize,
        source: std::io::Error,
    },
}

/// The even ports of `first..=last` whose odd partner is in the range too.
fn even_ports(first: u16, last: u16) -> impl Iterator<Item = u16> {
    let start = u32::from(first) + u32::from(first % 2);
    // `< last` so that the odd RTCP port (even + 1) is inside the range too.
    (start..u32::from(last))
        .step_by(2)
        .filter_map(|p| u16::try_from(p).ok())
}

#[derive(Debug)]
struct Pool {
    free: VecDeque<u16>,
    capacity: usize,
}

/// Hands out RTP port pairs; cheap to clone (shared pool).
#[derive(Debug, Clone)]
pub struct RtpPortAllocator {
    pool: Arc<Mutex<Pool>>,
}

/// A reserved pair: `rtp()` is even, `rtcp()` = `rtp() + 1`. Returned to the pool on drop.
#[derive(Debug)]
pub struct RtpPorts {
    rtp: u16,
    pool: Arc<Mutex<Pool>>,
}

impl RtpPorts {
    pub fn rtp(&self) -> u16 {
        self.rtp
    }

    pub fn rtcp(&self) -> u16 {
        self.rtp + 1
    }
}

impl Drop for RtpPorts {
    fn drop(&mut self) {
        // A poisoned lock only means another thread panicked mid-push/pop; the deque is
        // still consistent, so keep returning ports.
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        pool.free.push_back(self.rtp);
    }
}

impl RtpPortAllocator {
    /// A pool over the pairs of `first..=last` (`[media] rtp_ports`).
    pub fn new(first: u16, last: u16) -> Result<Self, PortError> {
        let free: VecDeque<u16> = even_ports(first, last).collect();
        let capacity = free.len();
        if capacity == 0 {
            return Err(PortError::NoPairInRange { first, last });
        }
        Ok(Self {
            pool: Arc::new(Mutex::new(Pool { free, capacity })),
        })
    }

    /// A pool over `[media] rtp_ports` as written: `"LOW-HIGH"`.
    pub fn from_spec(spec: &str) -> Result<Self, PortError> {
        let bad = || PortError::BadRange {
            spec: spec.to_owned(),
        };
        let (low, high) = spec.split_once('-').ok_or_else(bad)?;
        let low: u16 = low.trim().parse().map_err(|_| bad())?;
        let high: u16 = high.trim().parse().map_err(|_| bad())?;
        if low == 0 || low >= high {
            return Err(bad());
        }
        Self::new(low, high)
    }

    /// Reserves the least recently used pair, or `None` when every pair is in use.
    pub fn allocate(&self) -> Option<RtpPorts> {
        let rtp = self.lock().free.pop_front()?;
        Some(RtpPorts {
            rtp,
            pool: Arc::clone(&self.pool),
        })
    }

    /// Pairs currently free.
    pub fn available(&self) -> usize {
        self.lock().free.len()
    }

    /// Pairs in the configured range.
    pub fn capacity(&self) -> usize {
        self.lock().capacity
    }

    /// Reserves a pair and binds a UDP socket for its RTP port on `ip`. Ports another process
    /// holds are skipped (and go back to the pool's tail); call this before answering so a
    /// full range turns into a 503, not a broken call.
    pub fn bind(&self, ip: IpAddr) -> Result<(RtpPorts, std::net::UdpSocket), PortError> {
        let mut last_error = None;
        for _ in 0..BIND_ATTEMPTS {
            let Some(ports) = self.allocate() else { break };
            match std::net::UdpSocket::bind(SocketAddr::new(ip, ports.rtp())) {
                Ok(socket) => return Ok((ports, socket)),
                Err(e) => last_error = Some(e),
            }
        }
        match last_error {
            Some(source) => Err(PortError::Bind {
                ip,
                attempts: BIND_ATTEMPTS,
                source,
            }),
            None => Err(PortError::Exhausted {
                capacity: self.capacity(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn pool(first: u16, last: u16) -> RtpPortAllocator {
        RtpPortAllocator::new(first, last).unwrap()
    }

    #[test]
    fn pairs_stay_inside_the_range() {
        assert_eq!(pool(20000, 29999).capacity(), 5000);
        assert_eq!(pool(20000, 20001).capacity(), 1);
        // An odd first port starts at the next even port.
        assert_eq!(pool(20001, 20004).capacity(), 1);
        assert_eq!(pool(65534, 65535).capacity(), 1);
        assert!(RtpPortAllocator::new(20001, 20002).is_err());
        assert!(RtpPortAllocator::new(20000, 20000).is_err());
        assert!(RtpPortAllocator::new(65535, 65535).is_err());
    }

    #[test]
    fn ranges_parse_from_the_config_spelling() {
        assert_eq!(
            RtpPortAllocator::from_spec("20000-29999")
                .unwrap()
                .capacity(),
            5000
        );
        assert_eq!(
            RtpPortAllocator::from_spec(" 40000 - 40003 ")
                .unwrap()
                .capacity(),
            2
        );
        for bad in [
            "",
            "20000",
            "a-b",
            "30000-20000",
            "0-10",
            "20001-20002",
            "20000-70000",
        ] {
            assert!(
                RtpPortAllocator::from_spec(bad).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn hands_out_even_ports_until_exhausted_and_takes_them_back_on_drop() {
        let alloc = pool(40000, 40005);
        assert_eq!(alloc.capacity(), 3);
        let a = alloc.allocate().unwrap();
        let b = alloc.allocate().unwrap();
        let c = alloc.allocate().unwrap();
        assert_eq!([a.rtp(), b.rtp(), c.rtp()], [40000, 40002, 40004]);
        assert_eq!(c.rtcp(), 40005);
        assert!(alloc.allocate().is_none());
        assert_eq!(alloc.available(), 0);
        drop(b);
        assert_eq!(alloc.available(), 1);
        assert_eq!(alloc.allocate().unwrap().rtp(), 40002);
        // The temporary above was dropped at the end of its statement: the pair is free again.
        assert_eq!(alloc.available(), 1);
    }

    #[test]
    fn released_ports_are_reused_last() {
        let alloc = pool(40100, 40105);
        let first = alloc.allocate().unwrap();
        let released = first.rtp();
        drop(first);
        let next: Vec<u16> = (0..3)
            .map(|_| alloc.allocate().unwrap())
            .map(|p| {
                let port = p.rtp();
                std::mem::forget(p);
                port
            })
            .collect();
        assert_eq!(next, vec![40102, 40104, released]);
    }

    #[test]
    fn guards_moved_across_threads_are_all_returned() {
        let alloc = pool(40200, 40299);
        let capacity = alloc.capacity();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let alloc = alloc.clone();
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        let held: Vec<_> = (0..5).filter_map(|_| alloc.allocate()).collect();
                        assert!(held.iter().all(|p| p.rtp() % 2 == 0));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(alloc.available(), capacity);
    }

    #[test]
    fn bind_skips_ports_held_elsewhere_and_reports_exhaustion() {
        // Find two adjacent free pairs by binding on port 0 is not possible, so use a high
        // range and tolerate that something else may hold one of its ports.
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let alloc = pool(41000, 41003);
        let blocker = std::net::UdpSocket::bind((ip, 41000)).ok();
        let (ports, socket) = alloc.bind(ip).unwrap();
        assert_eq!(socket.local_addr().unwrap().port(), ports.rtp());
        if blocker.is_some() {
            assert_eq!(
                ports.rtp(),
                41002,
                "the pair whose port is taken must be skipped"
            );
        }
        drop(blocker);
        let _keep = (ports, socket);
        // Both pairs now either held by us or tried; with one pair held, the other is free
        // again, and a third bind while both are held must fail with Exhausted.
        let second = alloc.bind(ip).unwrap();
        match alloc.bind(ip) {
            Err(PortError::Exhausted { capacity: 2 }) => {}
            other => panic!("expected exhaustion, got {other:?}"),
        }
        drop(second);
        assert_eq!(alloc.available(), 1);
    }
}
