//! Transaction identifiers (RFC 3261 §17.1.3 and §17.2.3).
//!
//! A server transaction is identified by the top Via's branch, its sent-by and
//! the request method, where an ACK (for a non-2xx) and a CANCEL's target map to
//! the INVITE. Branches without the RFC 3261 magic cookie come from RFC 2543
//! peers and are matched on the fallback tuple of §17.2.3's last paragraphs:
//! Request-URI, From tag, Call-ID, CSeq number, top Via (the To tag is checked
//! separately by the owner where it matters).

use crate::via::MAGIC_COOKIE;

/// `true` when `branch` carries the RFC 3261 magic cookie, i.e. it is globally
/// unique and §17.2.3's simple matching applies.
pub fn is_rfc3261_branch(branch: &str) -> bool {
    branch.starts_with(MAGIC_COOKIE) && branch.len() > MAGIC_COOKIE.len()
}

/// The sent-by of a Via (host and optional port), normalised for comparison:
/// hosts compare case-insensitively (RFC 3261 §19.1.4), IPv6 brackets removed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SentBy {
    /// Lower-cased host, without IPv6 brackets.
    pub host: String,
    /// The explicit port, if any.
    pub port: Option<u16>,
}

impl SentBy {
    /// Builds a normalised sent-by.
    pub fn new(host: &str, port: Option<u16>) -> SentBy {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        SentBy {
            host: host.to_ascii_lowercase(),
            port,
        }
    }
}

/// Identifies a server transaction (§17.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TransactionKey {
    /// Branch with the magic cookie: branch + sent-by + method.
    Rfc3261 {
        /// The branch parameter, verbatim.
        branch: String,
        /// The top Via's sent-by.
        sent_by: SentBy,
        /// The method that created the transaction (ACK recorded as INVITE).
        method: String,
    },
    /// RFC 2543 fallback for branches without the cookie.
    Rfc2543 {
        /// Request-URI, verbatim.
        request_uri: String,
        /// From tag, if any (RFC 2543 did not require one).
        from_tag: Option<String>,
        /// Call-ID.
        call_id: String,
        /// CSeq sequence number.
        cseq: u32,
        /// The whole top Via value, verbatim (whitespace-trimmed).
        top_via: String,
        /// The method that created the transaction (ACK recorded as INVITE).
        method: String,
    },
}

/// The method under which a request is matched: an ACK belongs to the INVITE
/// transaction it acknowledges.
fn matching_method(method: &str) -> String {
    if method == "ACK" {
        "INVITE".to_owned()
    } else {
        method.to_owned()
    }
}

impl TransactionKey {
    /// Key for a request whose branch carries the magic cookie.
    pub fn rfc3261(branch: &str, sent_by: SentBy, method: &str) -> TransactionKey {
        TransactionKey::Rfc3261 {
            branch: branch.to_owned(),
            sent_by,
            method: matching_method(method),
        }
    }

    /// Key for a request from an RFC 2543 element (no magic cookie).
    pub fn rfc2543(
        request_uri: &str,
        from_tag: Option<&str>,
        call_id: &str,
        cseq: u32,
        top_via: &str,
        method: &str,
    ) -> TransactionKey {
        TransactionKey::Rfc2543 {
            request_uri: request_uri.trim().to_owned(),
            from_tag: from_tag.map(str::to_owned),
            call_id: call_id.to_owned(),
            cseq,
            top_via: top_via.trim().to_owned(),
            method: matching_method(method),
        }
    }

    /// The method recorded in the key.
    pub fn method(&self) -> &str {
        match self {
            TransactionKey::Rfc3261 { method, .. } | TransactionKey::Rfc2543 { method, .. } => {
                method
            }
        }
    }

    /// The same key with another method: a CANCEL's key turned into the key of
    /// the INVITE it cancels (§9.2: matched like the INVITE, method aside).
    pub fn with_method(&self, new_method: &str) -> TransactionKey {
        let mut key = self.clone();
        match &mut key {
            TransactionKey::Rfc3261 { method, .. } | TransactionKey::Rfc2543 { method, .. } => {
                *method = new_method.to_owned();
            }
        }
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_detection() {
        assert!(is_rfc3261_branch("z9hG4bK776asdhds"));
        assert!(!is_rfc3261_branch("z9hG4bK"));
        assert!(!is_rfc3261_branch("776asdhds"));
        assert!(!is_rfc3261_branch("Z9HG4BK776"));
    }

    #[test]
    fn ack_matches_the_invite_key_and_cancel_does_not() {
        let sb = SentBy::new("PC33.Atlanta.com", Some(5060));
        let invite = TransactionKey::rfc3261("z9hG4bK1", sb.clone(), "INVITE");
        let ack = TransactionKey::rfc3261("z9hG4bK1", sb.clone(), "ACK");
        let cancel = TransactionKey::rfc3261("z9hG4bK1", sb.clone(), "CANCEL");
        assert_eq!(invite, ack);
        assert_ne!(invite, cancel);
        assert_eq!(cancel.with_method("INVITE"), invite);
    }

    #[test]
    fn sent_by_is_normalised() {
        assert_eq!(
            SentBy::new("[2001:DB8::1]", None),
            SentBy::new("2001:db8::1", None)
        );
        assert_ne!(
            SentBy::new("a.example", Some(5060)),
            SentBy::new("a.example", Some(5061))
        );
    }

    #[test]
    fn rfc2543_keys_ignore_surrounding_whitespace() {
        let a = TransactionKey::rfc2543(
            "sip:j@example.com",
            None,
            "c1",
            1,
            "SIP/2.0/UDP 192.0.2.1 ",
            "INVITE",
        );
        let b = TransactionKey::rfc2543(
            " sip:j@example.com",
            None,
            "c1",
            1,
            "SIP/2.0/UDP 192.0.2.1",
            "ACK",
        );
        assert_eq!(a, b);
    }
}
