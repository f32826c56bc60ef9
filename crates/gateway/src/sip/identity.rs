//! Who is calling whom: the numbers an INVITE is routed on.
//!
//! Called number: the Request-URI's user part (`sip:+918047168000@gw;user=phone`) or the
//! number of a `tel:` Request-URI; when that is absent or not a phone number (a carrier that
//! puts the gateway's address in the Request-URI), the To URI's user part.
//!
//! Caller number: P-Asserted-Identity (RFC 3325: what a trusted carrier vouches for), then
//! Remote-Party-ID (its pre-standard ancestor, still common), then From. The first that
//! holds a phone number wins; `anonymous` and SIP user names are skipped.
//!
//! The functions return the user part as sent (parameters and escapes included):
//! `RoutingSnapshot::route` normalises it to E.164 itself, with the deployment's
//! country-code rules, so numbers are interpreted in exactly one place.

use switchboard_sip::{Message, NameAddr, Uri};

/// The user part / number a URI routes on, if any.
fn user_of<'a>(uri: &Uri<'a>) -> Option<&'a str> {
    uri.user_or_number().filter(|u| !u.is_empty())
}

/// The called party's number as sent. `is_number` says whether a candidate normalises to a
/// phone number (pass `|s| snapshot.normalize(s).is_ok()`). When no candidate is a number,
/// the Request-URI's user part (or To's) is returned anyway so the rejection can name it.
pub fn called_party<'a>(msg: &Message<'a>, is_number: impl Fn(&str) -> bool) -> Option<&'a str> {
    let from_ruri = msg.request_uri().ok().as_ref().and_then(user_of);
    if let Some(user) = from_ruri.filter(|u| is_number(u)) {
        return Some(user);
    }
    let from_to = msg.to().ok().as_ref().and_then(|to| user_of(&to.uri));
    if let Some(user) = from_to.filter(|u| is_number(u)) {
        return Some(user);
    }
    from_ruri.or(from_to)
}

/// The caller's number as sent, or `None` when no identity header carries one (anonymous
/// callers are routed without cohort personalisation).
pub fn calling_party<'a>(msg: &Message<'a>, is_number: impl Fn(&str) -> bool) -> Option<&'a str> {
    let number_in = |addr: Result<NameAddr<'a>, _>| -> Option<&'a str> {
        addr.ok()
            .as_ref()
            .and_then(|a| user_of(&a.uri))
            .filter(|u| is_number(u))
    };
    msg.p_asserted_identity()
        .find_map(number_in)
        .or_else(|| msg.remote_party_id().find_map(number_in))
        .or_else(|| number_in(msg.from()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_sip::parse;

    /// Stand-in for the routing snapshot's normaliser: `+`/digits with optional separators
    /// and parameters after `;`.
    fn looks_like_number(s: &str) -> bool {
        let number = s.split(';').next().unwrap_or("");
        let digits = number
            .trim_start_matches('+')
            .replace(['-', '.', '(', ')'], "");
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    }

    fn invite(ruri: &str, extra: &str) -> Vec<u8> {
        format!(
            "INVITE {ruri} SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds\r\n\
             Max-Forwards: 70\r\n\
             To: <sip:+918047168000@gw.example.com;user=phone>\r\n\
             From: \"Alice\" <sip:alice@carrier.example.com>;tag=1928301774\r\n\
             Call-ID: a84b4c76e66710@pc33.example.com\r\n\
             CSeq: 314159 INVITE\r\n\
             {extra}\
             Content-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    fn parties(ruri: &str, extra: &str) -> (Option<String>, Option<String>) {
        let bytes = invite(ruri, extra);
        let msg = parse(&bytes).unwrap();
        (
            called_party(&msg, looks_like_number).map(str::to_owned),
            calling_party(&msg, looks_like_number).map(str::to_owned),
        )
    }

    #[test]
    fn called_number_comes_from_the_request_uri() {
        let (called, _) = parties("sip:+914000000000@gw.example.com;user=phone", "");
        assert_eq!(called.as_deref(), Some("+914000000000"));
        let (called, _) = parties("tel:+91-80-4716-8001", "");
        assert_eq!(called.as_deref(), Some("+91-80-4716-8001"));
    }

    #[test]
    fn called_number_falls_back_to_to_when_the_request_uri_has_none() {
        let (called, _) = parties("sip:gw.example.com", "");
        assert_eq!(called.as_deref(), Some("+918047168000"));
        // A user name in the Request-URI is not a number either.
        let (called, _) = parties("sip:trunk-gw@gw.example.com", "");
        assert_eq!(called.as_deref(), Some("+918047168000"));
    }

    #[test]
    fn caller_prefers_pai_then_rpid_then_from() {
        let pai =
            "P-Asserted-Identity: \"Bob\" <sip:+919812345678@carrier.example.com;user=phone>\r\n";
        let rpid = "Remote-Party-ID: <sip:+917000000001@carrier.example.com>;party=calling\r\n";
        let (_, caller) = parties("sip:+918047168000@gw", &format!("{rpid}{pai}"));
        assert_eq!(caller.as_deref(), Some("+919812345678"));
        let (_, caller) = parties("sip:+918047168000@gw", rpid);
        assert_eq!(caller.as_deref(), Some("+917000000001"));
        // From holds a user name, not a number: the caller is unknown.
        let (_, caller) = parties("sip:+918047168000@gw", "");
        assert_eq!(caller, None);
        // A tel: PAI is the usual form from mobile networks.
        let (_, caller) = parties(
            "sip:+918047168000@gw",
            "P-Asserted-Identity: <sip:anonymous@anonymous.invalid>, <tel:+919000000002>\r\n",
        );
        assert_eq!(caller.as_deref(), Some("+919000000002"));
    }
}
