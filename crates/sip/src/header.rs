//! Header names: the ones a gateway reads get a variant; compact forms map to their long form.

use std::fmt;

/// A header field name, classified case-insensitively; compact forms (RFC 3261 §7.3.3 and
/// the IANA registry) map to the same variant as the long form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum HeaderName {
    Accept,
    Allow,
    AllowEvents,
    Authorization,
    CallId,
    Contact,
    ContentEncoding,
    ContentLength,
    ContentType,
    CSeq,
    Date,
    Diversion,
    Event,
    Expires,
    From,
    MaxForwards,
    PAssertedIdentity,
    PPreferredIdentity,
    Privacy,
    ProxyAuthenticate,
    ProxyAuthorization,
    ProxyRequire,
    Reason,
    RecordRoute,
    ReferTo,
    ReferredBy,
    RemotePartyId,
    Require,
    RetryAfter,
    Route,
    Server,
    SessionExpires,
    Subject,
    Supported,
    Timestamp,
    To,
    Unsupported,
    UserAgent,
    Via,
    Warning,
    WwwAuthenticate,
    /// Any other (extension) header; its raw name is on the [`crate::Header`].
    Other,
}

use HeaderName as H;

impl HeaderName {
    /// Classifies a raw header name. Matching is by length and first letter first, so the
    /// common case costs one or two short case-insensitive compares.
    pub fn from_bytes(name: &[u8]) -> HeaderName {
        let Some(&first) = name.first() else {
            return H::Other;
        };
        let first = first.to_ascii_lowercase();
        if name.len() == 1 {
            return match first {
                b'v' => H::Via,
                b'f' => H::From,
                b't' => H::To,
                b'i' => H::CallId,
                b'm' => H::Contact,
                b'l' => H::ContentLength,
                b'c' => H::ContentType,
                b'k' => H::Supported,
                b's' => H::Subject,
                b'e' => H::ContentEncoding,
                b'o' => H::Event,
                b'r' => H::ReferTo,
                b'b' => H::ReferredBy,
                b'x' => H::SessionExpires,
                b'u' => H::AllowEvents,
                _ => H::Other,
            };
        }
        let candidates: &[(&[u8], HeaderName)] = match (name.len(), first) {
            (2, b't') => &[(b"to", H::To)],
            (3, b'v') => &[(b"via", H::Via)],
            (4, b'f') => &[(b"from", H::From)],
            (4, b'c') => &[(b"cseq", H::CSeq)],
            (4, b'd') => &[(b"date", H::Date)],
            (5, b'a') => &[(b"allow", H::Allow)],
            (5, b'r') => &[(b"route", H::Route)],
            (5, b'e') => &[(b"event", H::Event)],
            (6, b'a') => &[(b"accept", H::Accept)],
            (6, b's') => &[(b"server", H::Server)],
            (6, b'r') => &[(b"reason", H::Reason)],
            (7, b'c') => &[(b"call-id", H::CallId), (b"contact", H::Contact)],
            (7, b'r') => &[(b"require", H::Require)],
            (7, b's') => &[(b"subject", H::Subject)],
            (7, b'e') => &[(b"expires", H::Expires)],
            (7, b'w') => &[(b"warning", H::Warning)],
            (7, b'p') => &[(b"privacy", H::Privacy)],
            (8, b'r') => &[(b"refer-to", H::ReferTo)],
            (9, b's') => &[(b"supported", H::Supported)],
            (9, b'd') => &[(b"diversion", H::Diversion)],
            (9, b't') => &[(b"timestamp", H::Timestamp)],
            (10, b'u') => &[(b"user-agent", H::UserAgent)],
            (11, b'u') => &[(b"unsupported", H::Unsupported)],
            (11, b'r') => &[
                (b"retry-after", H::RetryAfter),
                (b"referred-by", H::ReferredBy),
            ],
            (12, b'm') => &[(b"max-forwards", H::MaxForwards)],
            (12, b'c') => &[(b"content-type", H::ContentType)],
            (12, b'r') => &[(b"record-route", H::RecordRoute)],
            (12, b'a') => &[(b"allow-events", H::AllowEvents)],
            (13, b'p') => &[(b"proxy-require", H::ProxyRequire)],
            (13, b'a') => &[(b"authorization", H::Authorization)],
            (14, b'c') => &[(b"content-length", H::ContentLength)],
            (15, b'r') => &[(b"remote-party-id", H::RemotePartyId)],
            (15, b's') => &[(b"session-expires", H::SessionExpires)],
            (16, b'c') => &[(b"content-encoding", H::ContentEncoding)],
            (16, b'w') => &[(b"www-authenticate", H::WwwAuthenticate)],
            (18, b'p') => &[(b"proxy-authenticate", H::ProxyAuthenticate)],
            (19, b'p') => &[
                (b"p-asserted-identity", H::PAssertedIdentity),
                (b"proxy-authorization", H::ProxyAuthorization),
            ],
            (20, b'p') => &[(b"p-preferred-identity", H::PPreferredIdentity)],
            _ => &[],
        };
        // Candidates are lowercase and have the same length as `name`.
        for &(canonical, header) in candidates {
            if name
                .iter()
                .zip(canonical)
                .all(|(a, b)| a.to_ascii_lowercase() == *b)
            {
                return header;
            }
        }
        H::Other
    }

    /// The canonical long form; `"Other"` for extension headers.
    pub fn as_str(self) -> &'static str {
        match self {
            H::Accept => "Accept",
            H::Allow => "Allow",
            H::AllowEvents => "Allow-Events",
            H::Authorization => "Authorization",
            H::CallId => "Call-ID",
            H::Contact => "Contact",
            H::ContentEncoding => "Content-Encoding",
            H::ContentLength => "Content-Length",
            H::ContentType => "Content-Type",
            H::CSeq => "CSeq",
            H::Date => "Date",
            H::Diversion => "Diversion",
            H::Event => "Event",
            H::Expires => "Expires",
            H::From => "From",
            H::MaxForwards => "Max-Forwards",
            H::PAssertedIdentity => "P-Asserted-Identity",
            H::PPreferredIdentity => "P-Preferred-Identity",
            H::Privacy => "Privacy",
            H::ProxyAuthenticate => "Proxy-Authenticate",
            H::ProxyAuthorization => "Proxy-Authorization",
            H::ProxyRequire => "Proxy-Require",
            H::Reason => "Reason",
            H::RecordRoute => "Record-Route",
            H::ReferTo => "Refer-To",
            H::ReferredBy => "Referred-By",
            H::RemotePartyId => "Remote-Party-ID",
            H::Require => "Require",
            H::RetryAfter => "Retry-After",
            H::Route => "Route",
            H::Server => "Server",
            H::SessionExpires => "Session-Expires",
            H::Subject => "Subject",
            H::Supported => "Supported",
            H::Timestamp => "Timestamp",
            H::To => "To",
            H::Unsupported => "Unsupported",
            H::UserAgent => "User-Agent",
            H::Via => "Via",
            H::Warning => "Warning",
            H::WwwAuthenticate => "WWW-Authenticate",
            H::Other => "Other",
        }
    }

    /// Headers that carry one value (RFC 3261 §7.3.1 and §20): a second occurrence makes a
    /// request malformed (RFC 4475 §3.3.8).
    pub fn is_single_valued(self) -> bool {
        matches!(
            self,
            H::CallId
                | H::CSeq
                | H::From
                | H::To
                | H::MaxForwards
                | H::ContentType
                | H::ContentLength
                | H::Expires
        )
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_variant_classifies_from_its_canonical_name() {
        let all = [
            H::Accept,
            H::Allow,
            H::AllowEvents,
            H::Authorization,
            H::CallId,
            H::Contact,
            H::ContentEncoding,
            H::ContentLength,
            H::ContentType,
            H::CSeq,
            H::Date,
            H::Diversion,
            H::Event,
            H::Expires,
            H::From,
            H::MaxForwards,
            H::PAssertedIdentity,
            H::PPreferredIdentity,
            H::Privacy,
            H::ProxyAuthenticate,
            H::ProxyAuthorization,
            H::ProxyRequire,
            H::Reason,
            H::RecordRoute,
            H::ReferTo,
            H::ReferredBy,
            H::RemotePartyId,
            H::Require,
            H::RetryAfter,
            H::Route,
            H::Server,
            H::SessionExpires,
            H::Subject,
            H::Supported,
            H::Timestamp,
            H::To,
            H::Unsupported,
            H::UserAgent,
            H::Via,
            H::Warning,
            H::WwwAuthenticate,
        ];
        for h in all {
            assert_eq!(HeaderName::from_bytes(h.as_str().as_bytes()), h, "{h}");
            let upper = h.as_str().to_ascii_uppercase();
            assert_eq!(HeaderName::from_bytes(upper.as_bytes()), h, "{upper}");
        }
    }

    #[test]
    fn compact_forms() {
        for (c, h) in [
            ("v", H::Via),
            ("F", H::From),
            ("t", H::To),
            ("i", H::CallId),
            ("m", H::Contact),
            ("L", H::ContentLength),
            ("c", H::ContentType),
            ("k", H::Supported),
            ("s", H::Subject),
            ("e", H::ContentEncoding),
            ("z", H::Other),
        ] {
            assert_eq!(HeaderName::from_bytes(c.as_bytes()), h);
        }
        assert_eq!(HeaderName::from_bytes(b"C%6Fntact"), H::Other);
        assert_eq!(HeaderName::from_bytes(b""), H::Other);
    }
}
