//! HTTP Digest authentication for SIP (RFC 3261 §22.4, RFC 2617 / RFC 7616 with
//! `algorithm=MD5`, `qop=auth`), stateless on the server side.
//!
//! The crate has no clock and no randomness: the caller supplies the time (any
//! seconds counter shared by every gateway instance that shares the secret,
//! typically UNIX time) and a salt (random bytes from the caller's RNG). A nonce
//! encodes its issue time and salt plus a MAC (HMAC-MD5) over both under a server
//! secret, so it can be checked and expired without remembering it:
//!
//! ```text
//! nonce = hex(issued_at: u64 BE) ‖ hex(salt: u64 BE) ‖ hex(HMAC-MD5(secret, issued_at ‖ salt))
//! ```
//!
//! Flow for a trunk that requires digest:
//! 1. request without `Authorization` → respond 401 with
//!    `WWW-Authenticate: {DigestVerifier::challenge(..)}` (or 407 +
//!    `Proxy-Authenticate`);
//! 2. request with credentials → [`DigestAuthorization::parse`] the header value
//!    and [`DigestVerifier::verify`] it; [`Verification::Stale`] → challenge again
//!    with `stale=true` (the client retries without asking the user).
//!
//! Not done (stateless by design): nonce-count replay tracking. A captured
//! request can be replayed within the nonce lifetime, which only re-sends the
//! same request; keep [`DEFAULT_NONCE_LIFETIME_SECS`] short.

use md5::{Digest as _, Md5};
use subtle::ConstantTimeEq;

/// How long an issued nonce is accepted. 300 s covers a challenge round trip
/// and a re-INVITE or two while keeping the replay window short; once it passes
/// the client gets a `stale=true` challenge and retries transparently.
pub const DEFAULT_NONCE_LIFETIME_SECS: u64 = 300;

/// Length in hex characters of a nonce issued by [`DigestVerifier`].
const NONCE_HEX_LEN: usize = 16 + 16 + 32;

const HMAC_BLOCK: usize = 64;

/// Lower-case hex encoding.
fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    to_hex(&h.finalize())
}

/// HMAC-MD5 (RFC 2104).
fn hmac_md5(key: &[u8], message: &[u8]) -> [u8; 16] {
    let mut block = [0u8; HMAC_BLOCK];
    if key.len() > HMAC_BLOCK {
        block[..16].copy_from_slice(&Md5::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Md5::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let inner = inner.finalize();
    let mut outer = Md5::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

/// Computes the `response` value a client sends (RFC 2617 §3.2.2.1):
/// `MD5(HA1:nonce[:nc:cnonce:qop]:HA2)` with `HA1 = MD5(username:realm:password)`
/// and `HA2 = MD5(method:uri)`. `qop` is `Some((nc, cnonce))` for `qop=auth`,
/// `None` for the RFC 2069 form.
#[allow(clippy::too_many_arguments)]
pub fn digest_response(
    username: &str,
    realm: &str,
    password: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    qop_auth: Option<(&str, &str)>,
) -> String {
    let ha1 = md5_hex(&[
        username.as_bytes(),
        b":",
        realm.as_bytes(),
        b":",
        password.as_bytes(),
    ]);
    let ha2 = md5_hex(&[method.as_bytes(), b":", uri.as_bytes()]);
    match qop_auth {
        Some((nc, cnonce)) => md5_hex(&[
            ha1.as_bytes(),
            b":",
            nonce.as_bytes(),
            b":",
            nc.as_bytes(),
            b":",
            cnonce.as_bytes(),
            b":auth:",
            ha2.as_bytes(),
        ]),
        None => md5_hex(&[ha1.as_bytes(), b":", nonce.as_bytes(), b":", ha2.as_bytes()]),
    }
}

/// The parameters of an `Authorization` / `Proxy-Authorization` header with the
/// `Digest` scheme.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DigestAuthorization {
    /// `username`.
    pub username: String,
    /// `realm`.
    pub realm: String,
    /// `nonce`, as issued by the server.
    pub nonce: String,
    /// `uri` the client hashed (should be the Request-URI).
    pub uri: String,
    /// `response`, 32 hex digits.
    pub response: String,
    /// `algorithm`, if given (only MD5 is supported).
    pub algorithm: Option<String>,
    /// `qop`, if given (only `auth` is supported).
    pub qop: Option<String>,
    /// `nc` (nonce count), required with `qop`.
    pub nc: Option<String>,
    /// `cnonce`, required with `qop`.
    pub cnonce: Option<String>,
    /// `opaque`, echoed from the challenge.
    pub opaque: Option<String>,
}

impl DigestAuthorization {
    /// Parses a header value such as `Digest username="bob", realm="x", ...`.
    /// Returns `None` for another scheme or a value missing a required
    /// parameter (username, realm, nonce, uri, response). Unknown parameters are
    /// ignored (RFC 2617 §3.2.2).
    pub fn parse(value: &str) -> Option<DigestAuthorization> {
        let value = value.trim_start();
        let (scheme, rest) = value.split_at(value.find(|c: char| c.is_ascii_whitespace())?);
        if !scheme.eq_ignore_ascii_case("Digest") {
            return None;
        }
        let mut auth = DigestAuthorization::default();
        let (mut username, mut realm, mut nonce, mut uri, mut response) =
            (None, None, None, None, None);
        for (name, value) in AuthParams::new(rest) {
            let slot = match name.to_ascii_lowercase().as_str() {
                "username" => &mut username,
                "realm" => &mut realm,
                "nonce" => &mut nonce,
                "uri" => &mut uri,
                "response" => &mut response,
                "algorithm" => &mut auth.algorithm,
                "qop" => &mut auth.qop,
                "nc" => &mut auth.nc,
                "cnonce" => &mut auth.cnonce,
                "opaque" => &mut auth.opaque,
                _ => continue,
            };
            *slot = Some(value);
        }
        auth.username = username?;
        auth.realm = realm?;
        auth.nonce = nonce?;
        auth.uri = uri?;
        auth.response = response?;
        Some(auth)
    }
}

/// Iterator over `name=value` pairs of a challenge/credentials list, where
/// value is a token or a quoted-string (escapes resolved). Stops at the first
/// malformed pair.
struct AuthParams<'a> {
    rest: &'a str,
}

impl<'a> AuthParams<'a> {
    fn new(rest: &'a str) -> Self {
        AuthParams { rest }
    }
}

impl Iterator for AuthParams<'_> {
    type Item = (String, String);

    fn next(&mut self) -> Option<(String, String)> {
        let rest = self
            .rest
            .trim_start_matches(|c: char| c == ',' || c.is_ascii_whitespace());
        if rest.is_empty() {
            return None;
        }
        let eq = rest.find('=')?;
        let name = rest[..eq].trim().to_owned();
        if name.is_empty() || name.contains(|c: char| c.is_ascii_whitespace() || c == ',') {
            self.rest = "";
            return None;
        }
        let after = rest[eq + 1..].trim_start();
        if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, escaped)) => value.push(escaped),
                        None => break,
                    },
                    '"' => {
                        self.rest = &quoted[i + 1..];
                        return Some((name, value));
                    }
                    other => value.push(other),
                }
            }
            // Unterminated quoted string.
            self.rest = "";
            None
        } else {
            let end = after.find(',').unwrap_or(after.len());
            let value = after[..end].trim().to_owned();
            self.rest = &after[end..];
            Some((name, value))
        }
    }
}

/// Why a [`DigestVerifier::verify`] call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// The realm is not ours.
    WrongRealm,
    /// Not a nonce we issued (bad MAC or format): challenge afresh.
    UnknownNonce,
    /// An algorithm other than MD5, or a qop other than `auth`, or `qop`
    /// without `nc`/`cnonce`.
    Unsupported,
    /// `uri` differs from the Request-URI.
    UriMismatch,
    /// No password for this username.
    UnknownUser,
    /// The response hash does not match: wrong password.
    BadResponse,
}

/// Outcome of [`DigestVerifier::verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Credentials are valid and the nonce is fresh.
    Valid,
    /// Credentials are valid but the nonce expired: challenge again with
    /// `stale=true` (RFC 2617 §3.2.1).
    Stale,
    /// Credentials are not acceptable: challenge again (or 403 after a few tries).
    Rejected(Rejection),
}

/// Issues challenges and verifies credentials for one realm, statelessly.
#[derive(Clone)]
pub struct DigestVerifier {
    realm: String,
    secret: Vec<u8>,
    nonce_lifetime_secs: u64,
}

impl std::fmt::Debug for DigestVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestVerifier")
            .field("realm", &self.realm)
            .field("secret", &"<redacted>")
            .field("nonce_lifetime_secs", &self.nonce_lifetime_secs)
            .finish()
    }
}

impl DigestVerifier {
    /// A verifier for `realm` whose nonces are MACed with `secret` (at least 16
    /// random bytes, shared by every instance that must accept the nonces) and
    /// live [`DEFAULT_NONCE_LIFETIME_SECS`].
    pub fn new(realm: impl Into<String>, secret: impl Into<Vec<u8>>) -> Self {
        DigestVerifier {
            realm: realm.into(),
            secret: secret.into(),
            nonce_lifetime_secs: DEFAULT_NONCE_LIFETIME_SECS,
        }
    }

    /// Overrides the nonce lifetime.
    pub fn with_nonce_lifetime(mut self, secs: u64) -> Self {
        self.nonce_lifetime_secs = secs;
        self
    }

    /// The realm.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    fn nonce_mac(&self, issued_at: u64, salt: u64) -> [u8; 16] {
        let mut message = [0u8; 16];
        message[..8].copy_from_slice(&issued_at.to_be_bytes());
        message[8..].copy_from_slice(&salt.to_be_bytes());
        hmac_md5(&self.secret, &message)
    }

    /// A fresh nonce issued at `now_secs`; `salt` should come from the caller's
    /// RNG so that two challenges in the same second differ.
    pub fn issue_nonce(&self, now_secs: u64, salt: u64) -> String {
        let mut nonce = String::with_capacity(NONCE_HEX_LEN);
        nonce.push_str(&to_hex(&now_secs.to_be_bytes()));
        nonce.push_str(&to_hex(&salt.to_be_bytes()));
        nonce.push_str(&to_hex(&self.nonce_mac(now_secs, salt)));
        nonce
    }

    /// The issue time of a nonce we minted, or `None` if it is forged/garbled.
    fn nonce_issued_at(&self, nonce: &str) -> Option<u64> {
        if nonce.len() != NONCE_HEX_LEN || !nonce.is_ascii() {
            return None;
        }
        let issued_at = u64::from_str_radix(&nonce[..16], 16).ok()?;
        let salt = u64::from_str_radix(&nonce[16..32], 16).ok()?;
        let expected = to_hex(&self.nonce_mac(issued_at, salt));
        let mac = nonce[32..].to_ascii_lowercase();
        bool::from(expected.as_bytes().ct_eq(mac.as_bytes())).then_some(issued_at)
    }

    /// The value for a `WWW-Authenticate` (401) or `Proxy-Authenticate` (407)
    /// header: `Digest realm="…", nonce="…", algorithm=MD5, qop="auth"` plus
    /// `stale=true` when answering a [`Verification::Stale`].
    pub fn challenge(&self, now_secs: u64, salt: u64, stale: bool) -> String {
        let mut value = format!(
            "Digest realm=\"{}\", nonce=\"{}\", algorithm=MD5, qop=\"auth\"",
            escape_quoted(&self.realm),
            self.issue_nonce(now_secs, salt)
        );
        if stale {
            value.push_str(", stale=true");
        }
        value
    }

    /// Verifies credentials for a request with `method` and `request_uri`
    /// (as it appears on the request line). `password_for(username)` returns
    /// the configured password, or `None` for an unknown user.
    ///
    /// Call it when a request carries `Authorization` (or
    /// `Proxy-Authorization`) with the Digest scheme.
    pub fn verify<P: AsRef<str>>(
        &self,
        now_secs: u64,
        method: &str,
        request_uri: &str,
        credentials: &DigestAuthorization,
        password_for: impl FnOnce(&str) -> Option<P>,
    ) -> Verification {
        use Verification::Rejected;
        if credentials.realm != self.realm {
            return Rejected(Rejection::WrongRealm);
        }
        if credentials
            .algorithm
            .as_deref()
            .is_some_and(|a| !a.eq_ignore_ascii_case("MD5"))
        {
            return Rejected(Rejection::Unsupported);
        }
        let qop_auth = match credentials.qop.as_deref() {
            None => None,
            Some(q) if q.eq_ignore_ascii_case("auth") => {
                match (credentials.nc.as_deref(), credentials.cnonce.as_deref()) {
                    (Some(nc), Some(cnonce)) => Some((nc, cnonce)),
                    _ => return Rejected(Rejection::Unsupported),
                }
            }
            Some(_) => return Rejected(Rejection::Unsupported),
        };
        let Some(issued_at) = self.nonce_issued_at(&credentials.nonce) else {
            return Rejected(Rejection::UnknownNonce);
        };
        if credentials.uri.trim() != request_uri.trim() {
            return Rejected(Rejection::UriMismatch);
        }
        let Some(password) = password_for(&credentials.username) else {
            return Rejected(Rejection::UnknownUser);
        };
        let expected = digest_response(
            &credentials.username,
            &self.realm,
            password.as_ref(),
            method,
            &credentials.uri,
            &credentials.nonce,
            qop_auth,
        );
        let given = credentials.response.to_ascii_lowercase();
        if !bool::from(expected.as_bytes().ct_eq(given.as_bytes())) {
            return Rejected(Rejection::BadResponse);
        }
        // A nonce from the future (clock skew between instances) is fine;
        // only age counts.
        if now_secs.saturating_sub(issued_at) > self.nonce_lifetime_secs {
            Verification::Stale
        } else {
            Verification::Valid
        }
    }
}

fn escape_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 2617 §3.5's worked example.
    const RFC2617_AUTHORIZATION: &str = r#"Digest username="Mufasa",
                 realm="testrealm@host.com",
                 nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
                 uri="/dir/index.html",
                 qop=auth,
                 nc=00000001,
                 cnonce="0a4f113b",
                 response="6629fae49393a05397450978507c4ef1",
                 opaque="5ccc069c403ebaf9f0171e9517f40e41""#;

    #[test]
    fn rfc2617_worked_example() {
        let auth = DigestAuthorization::parse(RFC2617_AUTHORIZATION).unwrap();
        assert_eq!(auth.username, "Mufasa");
        assert_eq!(auth.qop.as_deref(), Some("auth"));
        assert_eq!(auth.nc.as_deref(), Some("00000001"));
        assert_eq!(
            auth.opaque.as_deref(),
            Some("5ccc069c403ebaf9f0171e9517f40e41")
        );
        let response = digest_response(
            &auth.username,
            &auth.realm,
            "Circle Of Life",
            "GET",
            &auth.uri,
            &auth.nonce,
            Some(("00000001", "0a4f113b")),
        );
        assert_eq!(response, auth.response);
    }

    #[test]
    fn hmac_md5_matches_rfc2202_test_case_2() {
        let mac = hmac_md5(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(to_hex(&mac), "750c783e6ab0b503eaa86e310a5db738");
    }

    fn credentials(
        verifier: &DigestVerifier,
        nonce: &str,
        password: &str,
        uri: &str,
    ) -> DigestAuthorization {
        let response = digest_response(
            "trunk1",
            verifier.realm(),
            password,
            "INVITE",
            uri,
            nonce,
            Some(("00000001", "abc")),
        );
        let header = format!(
            "Digest username=\"trunk1\", realm=\"{}\", nonce=\"{nonce}\", uri=\"{uri}\", \
             response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"abc\"",
            verifier.realm()
        );
        DigestAuthorization::parse(&header).unwrap()
    }

    #[test]
    fn issued_nonce_verifies_then_goes_stale() {
        let v = DigestVerifier::new("switchboard", b"0123456789abcdef".to_vec());
        let challenge = v.challenge(1_000, 42, false);
        assert!(challenge.starts_with("Digest realm=\"switchboard\", nonce=\""));
        assert!(!challenge.contains("stale"));
        let nonce = v.issue_nonce(1_000, 42);
        assert!(challenge.contains(&nonce));
        let uri = "sip:+918047168000@gw.example";
        let creds = credentials(&v, &nonce, "s3cret", uri);
        let pw = |u: &str| (u == "trunk1").then_some("s3cret");
        assert_eq!(
            v.verify(1_010, "INVITE", uri, &creds, pw),
            Verification::Valid
        );
        assert_eq!(
            v.verify(
                1_000 + DEFAULT_NONCE_LIFETIME_SECS + 1,
                "INVITE",
                uri,
                &creds,
                pw
            ),
            Verification::Stale
        );
        assert!(v.challenge(2_000, 1, true).ends_with(", stale=true"));
    }

    #[test]
    fn wrong_password_forged_nonce_and_mismatches_are_rejected() {
        let v = DigestVerifier::new("switchboard", b"0123456789abcdef".to_vec());
        let uri = "sip:100@gw";
        let nonce = v.issue_nonce(5, 7);
        let pw = |_: &str| Some("right");

        let wrong = credentials(&v, &nonce, "wrong", uri);
        assert_eq!(
            v.verify(5, "INVITE", uri, &wrong, pw),
            Verification::Rejected(Rejection::BadResponse)
        );

        let other = DigestVerifier::new("switchboard", b"another secret!!".to_vec());
        let forged = credentials(&v, &other.issue_nonce(5, 7), "right", uri);
        assert_eq!(
            v.verify(5, "INVITE", uri, &forged, pw),
            Verification::Rejected(Rejection::UnknownNonce)
        );

        let good = credentials(&v, &nonce, "right", uri);
        assert_eq!(
            v.verify(5, "INVITE", "sip:other@gw", &good, pw),
            Verification::Rejected(Rejection::UriMismatch)
        );
        assert_eq!(
            v.verify(5, "INVITE", uri, &good, |_| None::<&str>),
            Verification::Rejected(Rejection::UnknownUser)
        );
        assert_eq!(
            v.verify(5, "BYE", uri, &good, pw),
            Verification::Rejected(Rejection::BadResponse),
            "method is part of the hash"
        );
        let mut foreign = good.clone();
        foreign.realm = "elsewhere".into();
        assert_eq!(
            v.verify(5, "INVITE", uri, &foreign, pw),
            Verification::Rejected(Rejection::WrongRealm)
        );
        let mut sha = good;
        sha.algorithm = Some("SHA-256".into());
        assert_eq!(
            v.verify(5, "INVITE", uri, &sha, pw),
            Verification::Rejected(Rejection::Unsupported)
        );
    }

    #[test]
    fn rfc2069_style_without_qop_is_accepted() {
        let v = DigestVerifier::new("r", b"0123456789abcdef".to_vec());
        let nonce = v.issue_nonce(1, 2);
        let response = digest_response("u", "r", "p", "BYE", "sip:a@b", &nonce, None);
        let header = format!(
            "Digest username=\"u\",realm=\"r\",nonce=\"{nonce}\",uri=\"sip:a@b\",response=\"{response}\""
        );
        let creds = DigestAuthorization::parse(&header).unwrap();
        assert_eq!(
            v.verify(1, "BYE", "sip:a@b", &creds, |_| Some("p")),
            Verification::Valid
        );
    }

    #[test]
    fn parser_rejects_garbage_without_panicking() {
        for input in [
            "",
            "Digest",
            "Basic dXNlcjpwYXNz",
            "Digest username=\"unterminated",
            "Digest username=\"u\", realm=\"r\"",
            "Digest =\"x\"",
            "Digest username=\"ü\\",
            "Digest ,,,,",
        ] {
            assert_eq!(DigestAuthorization::parse(input), None, "{input:?}");
        }
        let escaped = DigestAuthorization::parse(
            r#"digest username="a\"b", realm="r", nonce="n", uri="u", response="x""#,
        )
        .unwrap();
        assert_eq!(escaped.username, "a\"b");
    }
}
