//! The crate's one error type. Every variant knows the answer it calls for.

/// What was wrong with a message, and (through [`SipError::response_status`]) how to answer.
///
/// Requests that fail get the status code `response_status()` returns; responses are never
/// answered (RFC 3261 §16.7, RFC 4475 §3.1.2.19), so parse and validation errors on a
/// response come wrapped in [`SipError::MalformedResponse`], whose status is `None`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SipError {
    /// The datagram holds nothing but line breaks (a keep-alive); nothing to answer.
    #[error("datagram holds no message (keep-alive or empty)")]
    Empty,
    /// No empty line closes the header section.
    #[error("header section is not terminated by an empty line")]
    IncompleteHeaders,
    /// The request line or status line is malformed.
    #[error("malformed start line: {reason}")]
    BadStartLine { reason: &'static str },
    /// The SIP-Version is well formed but not 2.0 (answer 505).
    #[error("unsupported SIP version {version:?}")]
    VersionNotSupported { version: String },
    /// The Request-URI does not parse.
    #[error("malformed Request-URI: {reason}")]
    BadRequestUri { reason: &'static str },
    /// The Request-URI scheme is not `sip`, `sips` or `tel` (answer 416).
    #[error("unsupported Request-URI scheme {scheme:?}")]
    UnsupportedUriScheme { scheme: String },
    /// A header line is malformed (no colon, bad name, continuation without a header).
    #[error("malformed header line {line}: {reason}")]
    BadHeaderLine { line: usize, reason: &'static str },
    /// More header fields than [`crate::MAX_HEADERS`].
    #[error("more than {limit} header fields")]
    TooManyHeaders { limit: usize },
    /// A header value does not parse into its typed form.
    #[error("malformed {header} header: {reason}")]
    BadHeader {
        header: &'static str,
        reason: &'static str,
    },
    /// A header RFC 3261 §8.1.1 requires is absent.
    #[error("missing required {header} header")]
    MissingHeader { header: &'static str },
    /// A header that takes one value appears more than once (RFC 4475 §3.3.8).
    #[error("{header} appears more than once")]
    DuplicateHeader { header: &'static str },
    /// The CSeq method differs from the request method (RFC 4475 §3.1.2.17).
    #[error("CSeq method {cseq_method:?} does not match request method {method:?}")]
    CseqMethodMismatch { method: String, cseq_method: String },
    /// Several Content-Length headers disagree (RFC 4475 §3.3.9).
    #[error("Content-Length values disagree ({first} and {second})")]
    ConflictingContentLength { first: usize, second: usize },
    /// Content-Length is larger than the octets after the header section (RFC 4475 §3.1.2.2).
    #[error("Content-Length {declared} exceeds the {available} octets after the headers")]
    ContentLengthExceedsDatagram { declared: usize, available: usize },
    /// A stream transport message lacks Content-Length (RFC 3261 §18.3: mandatory there).
    #[error("Content-Length is required on stream transports")]
    MissingContentLength,
    /// The message is larger than the configured limit (answer 513).
    #[error("message larger than {limit} octets")]
    MessageTooLarge { limit: usize },
    /// `Require` lists option tags this element does not support (answer 420 with
    /// `Unsupported: <these>`).
    #[error("unsupported extensions required: {unsupported:?}")]
    BadExtension { unsupported: Vec<String> },
    /// A response failed to parse or validate; responses are dropped silently.
    #[error("malformed response dropped: {source}")]
    MalformedResponse {
        #[source]
        source: Box<SipError>,
    },
    /// The builder was given input that would produce an invalid message (programming error,
    /// never caused by the peer).
    #[error("cannot build message: {reason}")]
    Build { reason: &'static str },
}

impl SipError {
    /// The status code to answer a request with, or `None` when the message must be
    /// discarded silently (malformed responses, keep-alives, builder misuse).
    pub fn response_status(&self) -> Option<u16> {
        match self {
            SipError::Empty | SipError::MalformedResponse { .. } | SipError::Build { .. } => None,
            SipError::VersionNotSupported { .. } => Some(505),
            SipError::UnsupportedUriScheme { .. } => Some(416),
            SipError::BadExtension { .. } => Some(420),
            SipError::MessageTooLarge { .. } => Some(513),
            SipError::IncompleteHeaders
            | SipError::BadStartLine { .. }
            | SipError::BadRequestUri { .. }
            | SipError::BadHeaderLine { .. }
            | SipError::TooManyHeaders { .. }
            | SipError::BadHeader { .. }
            | SipError::MissingHeader { .. }
            | SipError::DuplicateHeader { .. }
            | SipError::CseqMethodMismatch { .. }
            | SipError::ConflictingContentLength { .. }
            | SipError::ContentLengthExceedsDatagram { .. }
            | SipError::MissingContentLength => Some(400),
        }
    }

    /// Wraps an error found in a response so that it is discarded, not answered.
    pub(crate) fn in_response(self) -> SipError {
        match self {
            already @ SipError::MalformedResponse { .. } => already,
            SipError::Empty => SipError::Empty,
            other => SipError::MalformedResponse {
                source: Box::new(other),
            },
        }
    }

    pub(crate) fn header(header: &'static str, reason: &'static str) -> SipError {
        SipError::BadHeader { header, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(
            SipError::VersionNotSupported {
                version: "SIP/7.0".into()
            }
            .response_status(),
            Some(505)
        );
        assert_eq!(
            SipError::UnsupportedUriScheme { scheme: "x".into() }.response_status(),
            Some(416)
        );
        let wrapped = SipError::MissingHeader { header: "To" }.in_response();
        assert_eq!(wrapped.response_status(), None);
        assert_eq!(wrapped.clone().in_response(), wrapped);
        assert_eq!(
            SipError::BadExtension {
                unsupported: vec!["foo".into()]
            }
            .response_status(),
            Some(420)
        );
    }
}
