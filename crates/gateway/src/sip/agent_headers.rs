//! INVITE headers the agent receives in `start.customParameters`, as the call's connection
//! asks: `headers_to_parameters` (header name -> key) and `include_headers`
//! (`sip.h.<lower-case name>` keys for X- headers or all headers).
//!
//! Headers come from the carrier, so what passes is bounded (at most
//! [`MAX_HEADER_PARAMETERS`] keys, values cut to [`MAX_HEADER_VALUE_BYTES`]) and sanitised
//! (control characters, including the CR LF of folded lines, are removed).

use switchboard_routing::model::{Connection, IncludeHeaders};
use switchboard_sip::{Header, HeaderName, Message};

/// Most header parameters one call passes to the agent; a `start` message stays small however
/// many headers the carrier sends.
pub const MAX_HEADER_PARAMETERS: usize = 32;
/// Longest header parameter value, in bytes (cut on a character boundary). Carrier metadata
/// (customer ids, UUI, diversion reasons) fits easily.
pub const MAX_HEADER_VALUE_BYTES: usize = 256;
/// Prefix of the keys `include_headers` adds.
pub const HEADER_KEY_PREFIX: &str = "sip.h.";

/// The `(key, value)` pairs `connection` asks for from `invite`: mapped headers first (the
/// operator named them; in the map's order), then `include_headers` in message order. A header present several
/// times gives one value, its occurrences joined with `", "` (RFC 3261 §7.3.1).
pub fn header_parameters(invite: &Message<'_>, connection: &Connection) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (header, key) in &connection.headers_to_parameters {
        if out.len() == MAX_HEADER_PARAMETERS {
            return out;
        }
        let wanted = HeaderName::from_bytes(header.as_bytes());
        if let Some(value) = joined_value(invite, |h| same_header(h, wanted, header)) {
            out.push((key.clone(), value));
        }
    }
    if connection.include_headers == IncludeHeaders::None {
        return out;
    }
    for h in invite.headers() {
        if !included(connection.include_headers, &h) {
            continue;
        }
        let key = format!("{HEADER_KEY_PREFIX}{}", lower_name(&h));
        if out.iter().any(|(k, _)| *k == key) {
            continue;
        }
        if out.len() == MAX_HEADER_PARAMETERS {
            break;
        }
        if let Some(value) = joined_value(invite, |o| same_header(o, h.name, h.raw_name)) {
            out.push((key, value));
        }
    }
    out
}

/// Whether `h` is the header `name` (classified as `kind`): known headers by kind, so compact
/// forms match (`f` is `From`); extension headers by name, case-insensitively.
fn same_header(h: &Header<'_>, kind: HeaderName, name: &str) -> bool {
    if kind == HeaderName::Other {
        h.name == HeaderName::Other && h.raw_name.eq_ignore_ascii_case(name)
    } else {
        h.name == kind
    }
}

fn included(policy: IncludeHeaders, h: &Header<'_>) -> bool {
    match policy {
        IncludeHeaders::None => false,
        IncludeHeaders::XHeaders => {
            h.name == HeaderName::Other
                && h.raw_name
                    .get(..2)
                    .is_some_and(|p| p.eq_ignore_ascii_case("x-"))
        }
        // Credentials stay with the gateway whatever the policy.
        IncludeHeaders::All => !matches!(
            h.name,
            HeaderName::Authorization | HeaderName::ProxyAuthorization
        ),
    }
}

/// The header's long name in lower case (`f` -> `from`).
fn lower_name(h: &Header<'_>) -> String {
    if h.name == HeaderName::Other {
        h.raw_name.to_ascii_lowercase()
    } else {
        h.name.as_str().to_ascii_lowercase()
    }
}

/// Every occurrence `is_it` accepts, joined and sanitised; `None` when there is none or it
/// is empty once sanitised.
fn joined_value(invite: &Message<'_>, is_it: impl Fn(&Header<'_>) -> bool) -> Option<String> {
    let mut joined = String::new();
    for h in invite.headers().filter(|h| is_it(h)) {
        if !joined.is_empty() {
            joined.push_str(", ");
        }
        joined.push_str(&String::from_utf8_lossy(h.value));
        if joined.len() > MAX_HEADER_VALUE_BYTES * 4 {
            break;
        }
    }
    let clean = sanitize(&joined);
    (!clean.is_empty()).then_some(clean)
}

/// Control characters removed, surrounding space trimmed, at most [`MAX_HEADER_VALUE_BYTES`].
fn sanitize(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len().min(MAX_HEADER_VALUE_BYTES));
    for c in raw.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_HEADER_VALUE_BYTES {
            break;
        }
        out.push(c);
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite(extra: &str) -> Vec<u8> {
        format!(
            "INVITE sip:+15550002222@gw SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.1;branch=z9hG4bK1\r\n\
             f: <sip:+15550001111@carrier>;tag=1\r\nTo: <sip:+15550002222@gw>\r\nCall-ID: c1\r\n\
             CSeq: 1 INVITE\r\nAuthorization: Digest username=\"t\"\r\n{extra}Content-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    fn connection(map: &[(&str, &str)], include: IncludeHeaders) -> Connection {
        Connection {
            connection_id: "c".into(),
            allowed_addresses: Vec::new(),
            media_addresses: Vec::new(),
            digest: None,
            provider: None,
            max_calls_per_second: None,
            media_encryption: Default::default(),
            headers_to_parameters: map
                .iter()
                .map(|(h, k)| ((*h).to_owned(), (*k).to_owned()))
                .collect(),
            include_headers: include,
            transfer: Default::default(),
        }
    }

    fn params(extra: &str, c: &Connection) -> Vec<(String, String)> {
        let bytes = invite(extra);
        header_parameters(&switchboard_sip::parse(&bytes).unwrap(), c)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn mapped_headers_match_case_insensitively_and_compact_forms() {
        let c = connection(
            &[
                ("x-customer-id", "customer_id"),
                ("From", "from_header"),
                ("X-Absent", "absent"),
            ],
            IncludeHeaders::None,
        );
        assert_eq!(
            params("X-Customer-Id: 42\r\nX-Other: no\r\n", &c),
            pairs(&[
                ("from_header", "<sip:+15550001111@carrier>;tag=1"),
                ("customer_id", "42")
            ])
        );
    }

    #[test]
    fn include_policies_pick_x_headers_or_all_but_credentials() {
        let extra = "X-Customer-Id: 42\r\nx-customer-id: 43\r\nUser-Agent: pbx\r\n";
        let x = params(extra, &connection(&[], IncludeHeaders::XHeaders));
        assert_eq!(x, pairs(&[("sip.h.x-customer-id", "42, 43")]));
        let all = params(extra, &connection(&[], IncludeHeaders::All));
        let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "sip.h.via",
                "sip.h.from",
                "sip.h.to",
                "sip.h.call-id",
                "sip.h.cseq",
                "sip.h.x-customer-id",
                "sip.h.user-agent",
                "sip.h.content-length"
            ]
        );
        assert!(params(extra, &connection(&[], IncludeHeaders::None)).is_empty());
    }

    #[test]
    fn count_and_value_size_are_bounded_and_control_characters_removed() {
        let many: String = (0..100).map(|i| format!("X-H{i}: v{i}\r\n")).collect();
        let got = params(
            &many,
            &connection(&[("X-H99", "last")], IncludeHeaders::All),
        );
        assert_eq!(got.len(), MAX_HEADER_PARAMETERS);
        assert_eq!(
            got[0],
            ("last".to_owned(), "v99".to_owned()),
            "mapped first"
        );

        let long = format!("X-Long: {}\r\n", "é".repeat(400));
        let got = params(
            &long,
            &connection(&[("X-Long", "long")], IncludeHeaders::None),
        );
        assert_eq!(got[0].1.len(), MAX_HEADER_VALUE_BYTES);
        assert!(got[0].1.chars().all(|c| c == 'é'));

        // A folded line and an escaped NUL/DEL: no CR, LF, tab or other control survives.
        let hostile = "X-Evil: a\r\n\tb\x7f c\x01\r\n";
        let got = params(
            hostile,
            &connection(&[("X-Evil", "evil")], IncludeHeaders::None),
        );
        assert_eq!(got, pairs(&[("evil", "ab c")]));
        assert!(sanitize("\u{0}\r\n\u{1b}").is_empty());
    }
}
