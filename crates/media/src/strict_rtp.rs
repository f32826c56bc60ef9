//! Strict RTP: which addresses may send the caller's media, and where ours goes.
//!
//! Plain symmetric RTP ("latch to the first packet, relatch after some silence") lets anyone
//! who sprays the RTP port range take over a call's media: the attacker hears the agent and the
//! caller hears nothing (RTP Bleed). [`SourceGuard`] follows Asterisk's `strictrtp` instead:
//!
//! * Media is accepted only from an allowed IP: the SDP `c=` address, the IP the INVITE came
//!   from (callers behind NAT send from another port than they signal), or a network in the
//!   connection's `media_addresses` (carriers whose media hosts differ from their signalling
//!   hosts). Anything else is [`Verdict::Foreign`] and never moves the destination.
//! * The current destination (the SDP address until something else has been learned) is
//!   accepted at once. Any other address, even on an allowed IP, must first send
//!   [`PROBATION_PACKETS`] packets with one SSRC and consecutive sequence numbers; until then
//!   its packets are [`Verdict::Learning`] and dropped.
//! * There is no time-based relatch: a silent caller keeps its address however long it is
//!   quiet.
//!
//! The guard is pure and deterministic (no clock, no I/O): the bridge feeds it every packet
//! and asks it where to send.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// In-sequence packets a new source address must send before media is accepted from it and
/// sent to it. Four is Asterisk's `probation` default: 80 ms of audio lost when a NAT binding
/// changes, while a stray or sprayed packet stream with guessed sequence numbers practically
/// never produces four consecutive ones with one SSRC from one port.
pub const PROBATION_PACKETS: u32 = 4;

/// Where a call's media may come from besides the SDP address. Built from the INVITE and the
/// connection (trunk) the called number belongs to; the default allows only the SDP address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedSources {
    /// The IP the INVITE came from: callers behind NAT send media from there, on another port
    /// than their SDP says.
    pub signalling_ip: Option<IpAddr>,
    /// The connection's `media_addresses`: carriers whose media hosts are not the host that
    /// sends the INVITE.
    pub media_networks: Vec<IpNet>,
}

/// What to do with one caller packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// From the current destination: use it.
    Accept,
    /// Completed probation: use it; our media now goes to this address.
    Relatched,
    /// From an allowed IP but an address still on probation: drop it.
    Learning,
    /// From an IP the call does not allow: drop it.
    Foreign,
}

/// An address on probation: the run of in-sequence packets it has sent so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Candidate {
    addr: SocketAddr,
    ssrc: u32,
    last_seq: u16,
    run: u32,
}

/// One call's strict-RTP state. Create it when the bridge starts, call [`SourceGuard::check`]
/// for every RTP packet, [`SourceGuard::destination`] for every packet we send, and
/// [`SourceGuard::set_signalled`] when a re-INVITE changes the SDP address.
#[derive(Debug, Clone)]
pub struct SourceGuard {
    allowed: AllowedSources,
    /// The SDP `c=` address and port (none for a late offer not yet answered or `0.0.0.0`).
    signalled: Option<SocketAddr>,
    /// The address validated by probation; `None` means "the signalled address".
    learned: Option<SocketAddr>,
    candidate: Option<Candidate>,
}

impl SourceGuard {
    /// A guard for a call whose SDP names `signalled`, allowing `allowed` as well.
    pub fn new(allowed: AllowedSources, signalled: Option<SocketAddr>) -> SourceGuard {
        SourceGuard {
            allowed,
            signalled: signalled.map(canonical),
            learned: None,
            candidate: None,
        }
    }

    /// Where our RTP goes: the learned address, else the SDP address. Never an address that
    /// was not signalled or did not pass probation.
    pub fn destination(&self) -> Option<SocketAddr> {
        self.learned.or(self.signalled)
    }

    /// True if media may come from `ip` at all. Cheap: call it before parsing a datagram so a
    /// flood from elsewhere costs nothing more.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.signalled.is_some_and(|s| s.ip() == ip)
            || self.allowed.signalling_ip.map(|s| s.to_canonical()) == Some(ip)
            || self.allowed.media_networks.iter().any(|n| n.contains(&ip))
    }

    /// Judges one RTP packet (`ssrc`, sequence number `seq`) from `from`. Call it for every
    /// packet that parsed as the call's RTP, in arrival order; only accepted packets' media
    /// may be used.
    pub fn check(&mut self, from: SocketAddr, ssrc: u32, seq: u16) -> Verdict {
        let from = canonical(from);
        if !self.allows_ip(from.ip()) {
            return Verdict::Foreign;
        }
        if self.destination() == Some(from) {
            return Verdict::Accept;
        }
        let candidate = match self.candidate {
            Some(c) if c.addr == from && c.ssrc == ssrc && c.last_seq.wrapping_add(1) == seq => {
                Candidate {
                    last_seq: seq,
                    run: c.run + 1,
                    ..c
                }
            }
            // A new address, a new SSRC or a sequence gap starts the run over.
            _ => Candidate {
                addr: from,
                ssrc,
                last_seq: seq,
                run: 1,
            },
        };
        if candidate.run >= PROBATION_PACKETS {
            self.learned = Some(from);
            self.candidate = None;
            Verdict::Relatched
        } else {
            self.candidate = Some(candidate);
            Verdict::Learning
        }
    }

    /// A re-INVITE negotiated `signalled` as the SDP address. Call it with every negotiation;
    /// when the address really changed, our media follows it at once and whatever was learned
    /// is forgotten (the old address may no longer be allowed at all).
    pub fn set_signalled(&mut self, signalled: Option<SocketAddr>) {
        let signalled = signalled.map(canonical);
        if signalled != self.signalled {
            self.signalled = signalled;
            self.learned = None;
            self.candidate = None;
        }
    }
}

/// `::ffff:192.0.2.1` and `192.0.2.1` are one host (dual-stack sockets report the former).
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSRC: u32 = 0x1234_5678;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A caller that signalled 192.0.2.10:4000 in an INVITE from 198.51.100.1, on a trunk
    /// whose media also comes from 203.0.113.0/24.
    fn guard() -> SourceGuard {
        SourceGuard::new(
            AllowedSources {
                signalling_ip: Some("198.51.100.1".parse().unwrap()),
                media_networks: vec!["203.0.113.0/24".parse().unwrap()],
            },
            Some(addr("192.0.2.10:4000")),
        )
    }

    /// Sends `count` in-sequence packets from `from` starting at `seq`; returns the verdicts.
    fn run(g: &mut SourceGuard, from: &str, seq: u16, count: u16) -> Vec<Verdict> {
        (0..count)
            .map(|i| g.check(addr(from), SSRC, seq.wrapping_add(i)))
            .collect()
    }

    #[test]
    fn before_the_first_packet_media_goes_to_the_sdp_address_and_foreigners_never_latch() {
        let mut g = guard();
        assert_eq!(g.destination(), Some(addr("192.0.2.10:4000")));
        // An attacker spraying in perfect sequence from an unrelated IP gets nowhere.
        assert!(run(&mut g, "192.0.2.99:4000", 1, 50)
            .iter()
            .all(|v| *v == Verdict::Foreign));
        assert_eq!(g.destination(), Some(addr("192.0.2.10:4000")));
        // The caller's first packet from its SDP address is accepted at once.
        assert_eq!(g.check(addr("192.0.2.10:4000"), SSRC, 7), Verdict::Accept);
    }

    #[test]
    fn a_silent_caller_keeps_its_address() {
        let mut g = guard();
        assert_eq!(run(&mut g, "192.0.2.10:4000", 1, 10), [Verdict::Accept; 10]);
        // The caller goes quiet (no clock in the guard: silence changes nothing); a foreign
        // host sprays during it and the caller resumes.
        assert!(run(&mut g, "10.0.0.1:4000", 100, 200)
            .iter()
            .all(|v| *v == Verdict::Foreign));
        assert_eq!(g.destination(), Some(addr("192.0.2.10:4000")));
        assert_eq!(g.check(addr("192.0.2.10:4000"), SSRC, 11), Verdict::Accept);
    }

    #[test]
    fn a_nat_port_change_on_an_allowed_ip_needs_four_packets_in_sequence() {
        let mut g = guard();
        assert_eq!(g.check(addr("192.0.2.10:4000"), SSRC, 1), Verdict::Accept);
        // The NAT rebinds the caller to port 4100 on the same IP.
        let verdicts = run(&mut g, "192.0.2.10:4100", 2, PROBATION_PACKETS as u16 + 1);
        assert_eq!(
            verdicts,
            [
                Verdict::Learning,
                Verdict::Learning,
                Verdict::Learning,
                Verdict::Relatched,
                Verdict::Accept
            ]
        );
        assert_eq!(g.destination(), Some(addr("192.0.2.10:4100")));
        // The old port is now just another address on probation.
        assert_eq!(
            g.check(addr("192.0.2.10:4000"), SSRC, 50),
            Verdict::Learning
        );
        assert_eq!(g.destination(), Some(addr("192.0.2.10:4100")));
    }

    #[test]
    fn the_invite_source_ip_is_allowed_on_any_port_after_probation() {
        let mut g = guard();
        assert_eq!(
            run(&mut g, "198.51.100.1:30000", 65534, 4),
            [
                Verdict::Learning,
                Verdict::Learning,
                Verdict::Learning,
                Verdict::Relatched
            ],
            "sequence numbers wrap"
        );
        assert_eq!(g.destination(), Some(addr("198.51.100.1:30000")));
    }

    #[test]
    fn a_random_sequence_spray_from_an_allowed_ip_never_relatches() {
        let mut g = guard();
        let caller = addr("192.0.2.10:4000");
        // Another host behind the caller's NAT sprays with the caller's SSRC and pseudo-random
        // sequence numbers (a fixed LCG: deterministic), while the caller keeps talking.
        let sprayer = addr("192.0.2.10:5000");
        let mut seq: u16 = 12_345;
        let mut caller_seq: u16 = 1;
        for i in 0..10_000u32 {
            seq = seq.wrapping_mul(25_173).wrapping_add(13_849);
            assert_eq!(g.check(sprayer, SSRC, seq), Verdict::Learning, "packet {i}");
            if i % 3 == 0 {
                caller_seq = caller_seq.wrapping_add(1);
                assert_eq!(g.check(caller, SSRC, caller_seq), Verdict::Accept);
            }
        }
        assert_eq!(g.destination(), Some(caller));
    }

    #[test]
    fn a_gap_or_a_new_ssrc_restarts_probation() {
        let mut g = guard();
        let from = addr("192.0.2.10:4100");
        assert_eq!(g.check(from, SSRC, 1), Verdict::Learning);
        assert_eq!(g.check(from, SSRC, 2), Verdict::Learning);
        assert_eq!(g.check(from, SSRC, 4), Verdict::Learning, "gap: run of 1");
        assert_eq!(g.check(from, SSRC + 1, 5), Verdict::Learning, "new SSRC");
        assert_eq!(g.check(from, SSRC + 1, 6), Verdict::Learning);
        assert_eq!(g.check(from, SSRC + 1, 7), Verdict::Learning);
        assert_eq!(g.check(from, SSRC + 1, 8), Verdict::Relatched);
        // Interleaving another port resets the run as well.
        let mut g = guard();
        for seq in 1..20u16 {
            let port = if seq % 2 == 0 { 4100 } else { 4200 };
            let from = SocketAddr::new("192.0.2.10".parse().unwrap(), port);
            assert_eq!(g.check(from, SSRC, seq), Verdict::Learning);
        }
    }

    #[test]
    fn a_reinvite_moving_the_sdp_address_moves_our_media_and_the_allowed_ip() {
        let mut g = SourceGuard::new(AllowedSources::default(), Some(addr("192.0.2.10:4000")));
        run(&mut g, "192.0.2.10:4100", 1, 4);
        assert_eq!(g.destination(), Some(addr("192.0.2.10:4100")));
        // The same address again changes nothing (re-INVITEs for session timers).
        g.set_signalled(Some(addr("192.0.2.10:4000")));
        assert_eq!(g.destination(), Some(addr("192.0.2.10:4100")));

        g.set_signalled(Some(addr("192.0.2.20:6000")));
        assert_eq!(g.destination(), Some(addr("192.0.2.20:6000")));
        assert_eq!(g.check(addr("192.0.2.20:6000"), SSRC, 9), Verdict::Accept);
        assert_eq!(
            g.check(addr("192.0.2.10:4100"), SSRC, 5),
            Verdict::Foreign,
            "the old IP is no longer signalled"
        );
        // Hold with c=0.0.0.0: nowhere to send until media proves where the caller is.
        g.set_signalled(None);
        assert_eq!(g.destination(), None);
    }

    #[test]
    fn media_networks_admit_other_hosts_after_probation() {
        let mut g = guard();
        assert!(g.allows_ip("203.0.113.77".parse().unwrap()));
        assert!(!g.allows_ip("203.0.114.1".parse().unwrap()));
        assert_eq!(run(&mut g, "203.0.114.1:7000", 1, 8), [Verdict::Foreign; 8]);
        assert_eq!(
            run(&mut g, "203.0.113.77:7000", 1, 4).last(),
            Some(&Verdict::Relatched)
        );
        assert_eq!(g.destination(), Some(addr("203.0.113.77:7000")));
    }

    #[test]
    fn ipv4_mapped_sources_match_their_ipv4_address() {
        let mut g = guard();
        assert_eq!(
            g.check(addr("[::ffff:192.0.2.10]:4000"), SSRC, 1),
            Verdict::Accept
        );
        assert!(g.allows_ip("::ffff:203.0.113.5".parse().unwrap()));
        assert!(!g.allows_ip("::ffff:192.0.2.99".parse().unwrap()));
    }

    #[test]
    fn without_an_sdp_address_nothing_is_sent_until_probation() {
        let mut g = SourceGuard::new(
            AllowedSources {
                signalling_ip: Some("198.51.100.1".parse().unwrap()),
                media_networks: Vec::new(),
            },
            None,
        );
        assert_eq!(g.destination(), None);
        assert_eq!(
            run(&mut g, "198.51.100.1:5000", 10, 3),
            [Verdict::Learning; 3]
        );
        assert_eq!(g.destination(), None);
        assert_eq!(
            g.check(addr("198.51.100.1:5000"), SSRC, 13),
            Verdict::Relatched
        );
        assert_eq!(g.destination(), Some(addr("198.51.100.1:5000")));
    }
}
