//! SRTP (RFC 3711) for one call, keyed by SDES ([`SrtpParams`]): the far end's key unprotects
//! what it sends, ours protects what we send. The transforms are webrtc-srtp's; this module
//! only maps suites and sorts failures into the reasons the bridge counts.

use bytes::Bytes;
use webrtc_srtp::context::Context;
use webrtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use webrtc_srtp::protection_profile::ProtectionProfile;

use crate::sdp::{CryptoSuite, SrtpKey, SrtpParams};
use crate::MediaError;

/// Packets behind the newest one that may still arrive (RFC 3711 §3.3.2 asks for at least
/// 64; libsrtp uses 128, which covers a jittery carrier's reordering).
pub const REPLAY_WINDOW: usize = 128;

/// RTCP header and sender SSRC, the SRTCP index and the 80-bit SRTCP tag (both suites): a
/// shorter "SRTCP" packet is dropped before webrtc-srtp reads past its end.
const MIN_SRTCP_LEN: usize = 8 + 4 + 10;

/// Why an inbound packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrtpDrop {
    /// Its index was already seen or is behind the replay window.
    Replayed,
    /// The authentication tag did not verify (wrong key, tampered, or not SRTP at all).
    Unauthenticated,
}

/// What an inbound datagram turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unprotected {
    /// A verified RTP packet, now in the clear.
    Rtp(Bytes),
    /// A verified SRTCP packet (RTCP multiplexed on the RTP port, RFC 5761): nothing to bridge.
    Rtcp,
}

/// Both directions of one SRTP stream.
pub struct SrtpStream {
    inbound: Context,
    outbound: Context,
}

impl std::fmt::Debug for SrtpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SrtpStream(..)")
    }
}

impl SrtpStream {
    /// Contexts for negotiated `params`; replay protection on for what we receive.
    pub fn new(params: &SrtpParams) -> Result<SrtpStream, MediaError> {
        let profile = profile(params.suite);
        let context = |key: &SrtpKey, replay: bool| {
            let (rtp, rtcp) = if replay {
                (
                    Some(srtp_replay_protection(REPLAY_WINDOW)),
                    Some(srtcp_replay_protection(REPLAY_WINDOW)),
                )
            } else {
                (None, None)
            };
            Context::new(key.master_key(), key.master_salt(), profile, rtp, rtcp).map_err(|e| {
                MediaError::Srtp {
                    reason: e.to_string(),
                }
            })
        };
        Ok(SrtpStream {
            inbound: context(&params.remote, true)?,
            outbound: context(&params.local, false)?,
        })
    }

    /// Verifies and decrypts one datagram from the far end. RTCP is told apart from RTP by
    /// its packet type (RFC 5761 §4: second byte 192-223).
    pub fn unprotect(&mut self, datagram: &[u8]) -> Result<Unprotected, SrtpDrop> {
        if is_rtcp(datagram) {
            if datagram.len() < MIN_SRTCP_LEN {
                return Err(SrtpDrop::Unauthenticated);
            }
            return self
                .inbound
                .decrypt_rtcp(datagram)
                .map(|_| Unprotected::Rtcp)
                .map_err(classify);
        }
        self.inbound
            .decrypt_rtp(datagram)
            .map(Unprotected::Rtp)
            .map_err(classify)
    }

    /// Encrypts one RTP packet of ours and appends its authentication tag.
    pub fn protect(&mut self, packet: &[u8]) -> Result<Bytes, MediaError> {
        self.outbound
            .encrypt_rtp(packet)
            .map_err(|e| MediaError::Srtp {
                reason: e.to_string(),
            })
    }
}

fn profile(suite: CryptoSuite) -> ProtectionProfile {
    match suite {
        CryptoSuite::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
        CryptoSuite::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
    }
}

fn is_rtcp(datagram: &[u8]) -> bool {
    datagram.len() >= 2 && datagram[0] >> 6 == 2 && (192..=223).contains(&datagram[1])
}

fn classify(error: webrtc_srtp::Error) -> SrtpDrop {
    match error {
        webrtc_srtp::Error::SrtpSsrcDuplicated(..)
        | webrtc_srtp::Error::SrtcpSsrcDuplicated(..) => SrtpDrop::Replayed,
        _ => SrtpDrop::Unauthenticated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(suite: CryptoSuite) -> (SrtpParams, SrtpParams) {
        let (a, b) = (SrtpKey::random(), SrtpKey::random());
        let ours = SrtpParams {
            suite,
            tag: 1,
            remote: a.clone(),
            local: b.clone(),
        };
        let theirs = SrtpParams {
            suite,
            tag: 1,
            remote: b,
            local: a,
        };
        (ours, theirs)
    }

    fn rtp(seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 160, 0x12, 0x34, 0x56, 0x78];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn both_suites_round_trip_and_hide_the_payload() {
        for (suite, tag_len) in [
            (CryptoSuite::AesCm128HmacSha1_80, 10),
            (CryptoSuite::AesCm128HmacSha1_32, 4),
        ] {
            let (ours, theirs) = params(suite);
            let (mut us, mut them) = (
                SrtpStream::new(&ours).unwrap(),
                SrtpStream::new(&theirs).unwrap(),
            );
            let clear = rtp(1, &[0x55; 160]);
            let wire = them.protect(&clear).unwrap();
            assert_eq!(wire.len(), clear.len() + tag_len);
            assert!(!wire.windows(16).any(|w| w == [0x55; 16]), "{suite}");
            assert_eq!(us.unprotect(&wire), Ok(Unprotected::Rtp(clear.into())));
            let back = us.protect(&rtp(9, &[7; 160])).unwrap();
            assert!(
                matches!(them.unprotect(&back), Ok(Unprotected::Rtp(p)) if p[12..] == [7; 160])
            );
        }
    }

    #[test]
    fn replays_tampering_and_wrong_keys_are_told_apart() {
        let (ours, theirs) = params(CryptoSuite::AesCm128HmacSha1_80);
        let mut us = SrtpStream::new(&ours).unwrap();
        let mut them = SrtpStream::new(&theirs).unwrap();
        let first = them.protect(&rtp(100, &[1; 160])).unwrap();
        assert!(us.unprotect(&first).is_ok());
        assert_eq!(us.unprotect(&first), Err(SrtpDrop::Replayed));
        let mut tampered = them.protect(&rtp(101, &[1; 160])).unwrap().to_vec();
        tampered[20] ^= 1;
        assert_eq!(us.unprotect(&tampered), Err(SrtpDrop::Unauthenticated));
        // A tampered packet does not burn its index: the genuine one still gets through.
        tampered[20] ^= 1;
        assert!(us.unprotect(&tampered).is_ok());
        // Plain RTP (an attacker without the key) never authenticates.
        assert_eq!(
            us.unprotect(&rtp(102, &[0; 170])),
            Err(SrtpDrop::Unauthenticated)
        );
        // Short junk and RTCP-looking junk are dropped, not a panic.
        for junk in [
            &[][..],
            &[0x80][..],
            &[0x80, 200, 0, 1][..],
            &[0xff; 40][..],
        ] {
            assert!(us.unprotect(junk).is_err(), "{junk:?}");
        }
    }
}
