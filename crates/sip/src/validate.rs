//! Semantic checks a UAS makes before acting on a message (RFC 3261 §8.1.1, §8.2.2, §16.3;
//! RFC 4475 §3.3).

use crate::error::SipError;
use crate::header::HeaderName;
use crate::message::Message;
use crate::uri::Uri;

/// Headers every request and response carries (RFC 3261 §8.1.1). Max-Forwards is left out:
/// RFC 2543 requests lack it and RFC 4475 §3.4.1 asks us to accept them.
const REQUIRED: [HeaderName; 5] = [
    HeaderName::To,
    HeaderName::From,
    HeaderName::CallId,
    HeaderName::CSeq,
    HeaderName::Via,
];

/// Single-valued headers checked for duplicates. Content-Length duplicates are settled by
/// the parser (equal values accepted, differing ones rejected).
const SINGLE: [HeaderName; 6] = [
    HeaderName::To,
    HeaderName::From,
    HeaderName::CallId,
    HeaderName::CSeq,
    HeaderName::MaxForwards,
    HeaderName::ContentType,
];

impl<'a> Message<'a> {
    /// Checks what a UAS needs before acting on the message: required headers present and
    /// not duplicated, every header the gateway reads parses (Via, From, To, Call-ID, CSeq,
    /// Max-Forwards, Contact, Route, Record-Route, Content-Type, Require), the CSeq method
    /// equals the request method, and the Request-URI parses, carries no `?headers` and has
    /// the `sip`, `sips` or `tel` scheme (else 416).
    ///
    /// Call it after [`crate::parse`] and before routing. For a response, any failure comes
    /// back as [`SipError::MalformedResponse`] (discard silently). `Require` is checked
    /// separately by [`Message::check_require`] because it depends on what you support.
    pub fn validate(&self) -> Result<(), SipError> {
        let result = self.validate_inner();
        if self.is_response() {
            result.map_err(SipError::in_response)
        } else {
            result
        }
    }

    fn validate_inner(&self) -> Result<(), SipError> {
        let uri = if self.is_request() {
            Some(self.request_uri()?)
        } else {
            None
        };
        for h in REQUIRED {
            if self.header(h).is_none() {
                return Err(SipError::MissingHeader { header: h.as_str() });
            }
        }
        for h in SINGLE {
            if self.count(h) > 1 {
                return Err(SipError::DuplicateHeader { header: h.as_str() });
            }
        }
        for via in self.vias() {
            via?;
        }
        self.from()?;
        self.to()?;
        self.call_id()?;
        let cseq = self.cseq()?;
        self.max_forwards()?;
        self.content_type()?;
        for c in self.contacts() {
            c?;
        }
        for h in [HeaderName::Route, HeaderName::RecordRoute] {
            for r in self.name_addrs(h) {
                r?;
            }
        }
        for t in self.require() {
            t?;
        }
        for t in self.proxy_require() {
            t?;
        }
        if let (Some(method), Some(uri)) = (self.method(), uri) {
            if cseq.method != method {
                return Err(SipError::CseqMethodMismatch {
                    method: method.to_owned(),
                    cseq_method: cseq.method.to_owned(),
                });
            }
            match uri {
                // RFC 3261 §19.1.1: headers are not allowed in a Request-URI. Rejecting them
                // (RFC 4475 §3.1.2.11 allows it) guarantees they never become real headers.
                Uri::Sip(u) if u.headers.is_some() => {
                    return Err(SipError::BadRequestUri {
                        reason: "headers are not allowed in a Request-URI",
                    })
                }
                Uri::Sip(_) | Uri::Tel(_) => {}
                Uri::Absolute(a) => {
                    return Err(SipError::UnsupportedUriScheme {
                        scheme: a.scheme.to_owned(),
                    })
                }
            }
        }
        Ok(())
    }

    /// The option tags in `Require` that are not in `supported` (case-insensitive, as
    /// option tags compare, RFC 3261 §19.2). Empty when everything is supported.
    pub fn unsupported_requirements(&self, supported: &[&str]) -> Result<Vec<&'a str>, SipError> {
        unsupported(self.require(), supported)
    }

    /// A UAS check (RFC 3261 §8.2.2.3): `Err(BadExtension)` (answer 420 with an
    /// `Unsupported` header listing its tags) when `Require` names an option tag not in
    /// `supported`. Never applied to ACK or CANCEL, whose Require the RFC says to ignore
    /// there; the caller skips those methods.
    pub fn check_require(&self, supported: &[&str]) -> Result<(), SipError> {
        bad_extension(self.unsupported_requirements(supported)?)
    }

    /// The proxy flavour (RFC 3261 §16.3 step 5): checks `Proxy-Require` instead.
    pub fn check_proxy_require(&self, supported: &[&str]) -> Result<(), SipError> {
        bad_extension(unsupported(self.proxy_require(), supported)?)
    }
}

fn unsupported<'a>(
    tags: impl Iterator<Item = Result<&'a str, SipError>>,
    supported: &[&str],
) -> Result<Vec<&'a str>, SipError> {
    let mut missing = Vec::new();
    for tag in tags {
        let tag = tag?;
        if !supported.iter().any(|s| s.eq_ignore_ascii_case(tag)) {
            missing.push(tag);
        }
    }
    Ok(missing)
}

fn bad_extension(missing: Vec<&str>) -> Result<(), SipError> {
    if missing.is_empty() {
        Ok(())
    } else {
        Err(SipError::BadExtension {
            unsupported: missing.into_iter().map(str::to_owned).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::parse;

    const BASE: &str = "Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\n";

    fn msg(start: &str, extra: &str) -> Vec<u8> {
        format!("{start}\r\n{BASE}{extra}\r\n").into_bytes()
    }

    #[test]
    fn valid_request_passes() {
        let raw = msg("OPTIONS sip:a@b SIP/2.0", "CSeq: 1 OPTIONS\r\n");
        parse(&raw).unwrap().validate().unwrap();
    }

    #[test]
    fn request_failures_map_to_status() {
        let cases = [
            ("OPTIONS sip:a@b SIP/2.0", "CSeq: 1 INVITE\r\n", 400),
            ("OPTIONS sip:a@b SIP/2.0", "", 400),
            (
                "OPTIONS sip:a@b SIP/2.0",
                "CSeq: 1 OPTIONS\r\nCSeq: 2 OPTIONS\r\n",
                400,
            ),
            ("OPTIONS mailto:a@b SIP/2.0", "CSeq: 1 OPTIONS\r\n", 416),
            (
                "OPTIONS sip:a@b?Route=x SIP/2.0",
                "CSeq: 1 OPTIONS\r\n",
                400,
            ),
            ("OPTIONS <sip:a@b> SIP/2.0", "CSeq: 1 OPTIONS\r\n", 400),
            (
                "OPTIONS sip:a@b SIP/2.0",
                "CSeq: 1 OPTIONS\r\nMax-Forwards: 256\r\n",
                400,
            ),
        ];
        for (start, extra, status) in cases {
            let raw = msg(start, extra);
            let err = parse(&raw).unwrap().validate().unwrap_err();
            assert_eq!(
                err.response_status(),
                Some(status),
                "{start} / {extra}: {err}"
            );
        }
    }

    #[test]
    fn response_failures_are_discarded() {
        let raw = msg("SIP/2.0 200 OK", "CSeq: 99999999999 OPTIONS\r\n");
        let err = parse(&raw).unwrap().validate().unwrap_err();
        assert_eq!(err.response_status(), None);
    }

    #[test]
    fn require_check() {
        let raw = msg(
            "OPTIONS sip:a@b SIP/2.0",
            "CSeq: 1 OPTIONS\r\nRequire: 100rel, foo\r\nProxy-Require: bar\r\n",
        );
        let m = parse(&raw).unwrap();
        assert_eq!(
            m.unsupported_requirements(&["100REL"]).unwrap(),
            vec!["foo"]
        );
        let err = m.check_require(&["100rel"]).unwrap_err();
        assert_eq!(err.response_status(), Some(420));
        assert!(m.check_require(&["100rel", "foo"]).is_ok());
        assert!(m.check_proxy_require(&[]).is_err());
    }
}
