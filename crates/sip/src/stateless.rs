//! Stateless replies in the style of Kamailio's `sl_send_reply`: a request refused before
//! the call layer takes it on (404, 403, 480, 503, ...) is answered without a transaction.
//!
//! For that to stay correct without state, the To tag of such a reply must be a function of
//! the request: a retransmitted INVITE then gets a byte-identical answer, and the ACK for it
//! (which carries our To tag and, per RFC 3261 §17.1.1.3, the INVITE's branch) can be
//! recognised as ours and absorbed. The tag is a keyed SipHash of Call-ID, From tag and top
//! Via branch: unpredictable to anyone without the per-process key (RFC 3261 §19.3 asks for
//! 32 random bits; we give 64), so a scanner cannot forge in-dialog requests from it.

use std::hash::Hasher as _;

use siphasher::sip::SipHasher13;

use crate::message::Message;

/// Derives To tags for replies that keep no state. Cheap to copy; one per endpoint.
#[derive(Clone, Copy)]
pub struct StatelessTagger {
    key: [u8; 16],
}

impl std::fmt::Debug for StatelessTagger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs: with it, tags become predictable.
        f.write_str("StatelessTagger")
    }
}

impl StatelessTagger {
    /// A tagger keyed from the endpoint's instance seed (random per process).
    pub fn new(instance_seed: u64) -> Self {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&splitmix64(instance_seed).to_le_bytes());
        key[8..].copy_from_slice(&splitmix64(instance_seed ^ 0x5bd1_e995_5bd1_e995).to_le_bytes());
        StatelessTagger { key }
    }

    /// The tag for a request's (Call-ID, From tag, top Via branch), as 16 hex digits.
    pub fn tag(&self, call_id: &str, from_tag: &str, branch: &str) -> String {
        let mut h = SipHasher13::new_with_key(&self.key);
        // Length-prefixed, so ("ab", "c") and ("a", "bc") hash apart.
        for part in [call_id, from_tag, branch] {
            h.write_usize(part.len());
            h.write(part.as_bytes());
        }
        format!("{:016x}", h.finish())
    }

    /// The tag for `request`, or `None` when it lacks a Call-ID, From or Via (such a
    /// request is refused by validation before it could be answered).
    pub fn tag_for(&self, request: &Message<'_>) -> Option<String> {
        let call_id = request.call_id().ok()?;
        let from = request.from().ok()?;
        let via = request.via().ok()?;
        Some(self.tag(
            call_id,
            from.tag().unwrap_or_default(),
            via.branch().unwrap_or_default(),
        ))
    }
}

/// SplitMix64: a bijective mixer, so distinct counters give distinct tokens.
pub(crate) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// What the endpoint answered or absorbed without keeping state; read with
/// [`crate::Endpoint::stats`] to export as metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatelessStats {
    /// Final responses sent with no transaction ([`crate::Endpoint::respond_stateless`],
    /// 481s, malformed requests).
    pub replies: u64,
    /// ACKs recognised, by their To tag, as acknowledging one of those replies.
    pub absorbed_acks: u64,
    /// ACKs that matched no transaction, dialog or stateless reply.
    pub stray_acks: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_depend_on_every_part_and_on_the_key() {
        let a = StatelessTagger::new(1);
        let base = a.tag("call", "from", "z9hG4bK1");
        assert_eq!(base.len(), 16);
        assert_eq!(base, a.tag("call", "from", "z9hG4bK1"));
        assert_ne!(base, a.tag("call2", "from", "z9hG4bK1"));
        assert_ne!(base, a.tag("call", "from2", "z9hG4bK1"));
        assert_ne!(base, a.tag("call", "from", "z9hG4bK2"));
        assert_ne!(a.tag("ab", "c", ""), a.tag("a", "bc", ""));
        assert_ne!(
            base,
            StatelessTagger::new(2).tag("call", "from", "z9hG4bK1")
        );
    }
}
