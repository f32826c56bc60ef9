//! Trunk authentication: is this INVITE from the carrier that owns the called number?
//!
//! 1. The source IP must be in the `allowed_addresses` of the connection the called number
//!    is configured under (`RoutingSnapshot::trunk_for_number`). A connection with digest
//!    credentials and an empty allowlist admits any source that authenticates (a carrier
//!    without fixed signalling addresses); an empty allowlist without credentials admits none.
//! 2. When the number is unknown, a source that no connection admits gets 403, not 404, so
//!    strangers cannot probe which numbers exist; admitted sources get the routing answer.
//! 3. When the connection has digest credentials, the INVITE must carry an `Authorization`
//!    the stateless [`DigestVerifier`] accepts (nonce valid for `[sip] nonce_ttl_secs`, MACed
//!    with a per-process random secret). No or expired credentials: 401 with a (stale)
//!    challenge; a wrong password or user: 403, so a misconfigured carrier does not loop.

use std::net::IpAddr;

use switchboard_routing::model::Connection;
use switchboard_sip::auth::{DigestAuthorization, DigestVerifier, Rejection, Verification};

/// Realm in our challenges: one protection space for the whole gateway.
pub const REALM: &str = "switchboard";

/// Bytes of the per-process nonce secret: 256 bits, far beyond what HMAC-MD5 needs.
const SECRET_BYTES: usize = 32;

/// What to do with an INVITE after trunk checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrunkVerdict {
    /// Route it.
    Admit,
    /// 403 Forbidden; the text goes into the Warning/Reason headers.
    Forbidden(String),
    /// 403 Forbidden for a wrong digest user or password: counts toward a ban of the source.
    WrongCredentials(String),
    /// 401 with this `WWW-Authenticate` value.
    Challenge {
        www_authenticate: String,
        stale: bool,
    },
}

/// Trunk authentication state: the digest verifier with this process's secret.
#[derive(Debug, Clone)]
pub struct TrunkAuth {
    verifier: DigestVerifier,
}

impl TrunkAuth {
    /// A verifier with a fresh random secret. Nonces do not survive a restart (a carrier
    /// then gets one extra 401, which it answers transparently).
    pub fn new(nonce_ttl_secs: u64) -> Self {
        let secret: [u8; SECRET_BYTES] = rand::random();
        Self::with_secret(secret.to_vec(), nonce_ttl_secs)
    }

    /// A verifier with a given nonce secret (tests, and gateways that share nonces).
    pub fn with_secret(secret: Vec<u8>, nonce_ttl_secs: u64) -> Self {
        Self {
            verifier: DigestVerifier::new(REALM, secret).with_nonce_lifetime(nonce_ttl_secs),
        }
    }

    /// Decides for one INVITE. `connection` is the trunk owning the called number (if the
    /// number is known), `admitted_anywhere` whether any connection's allowlist holds
    /// `source`; `authorization` the `Authorization` header value, if any. `now_secs` is UNIX
    /// time, `salt` a random number for a fresh nonce.
    #[allow(clippy::too_many_arguments)]
    pub fn check(
        &self,
        now_secs: u64,
        salt: u64,
        source: IpAddr,
        connection: Option<&Connection>,
        admitted_anywhere: bool,
        method: &str,
        request_uri: &str,
        authorization: Option<&str>,
    ) -> TrunkVerdict {
        let source = source.to_canonical();
        let Some(connection) = connection else {
            return if admitted_anywhere {
                TrunkVerdict::Admit
            } else {
                TrunkVerdict::Forbidden(format!("source {source} is not in any trunk's allowlist"))
            };
        };
        let allowed = if connection.allowed_addresses.is_empty() {
            connection.digest.is_some()
        } else {
            connection
                .allowed_addresses
                .iter()
                .any(|net| net.contains(&source))
        };
        if !allowed {
            return TrunkVerdict::Forbidden(format!(
                "source {source} is not in the allowlist of connection {}",
                connection.connection_id
            ));
        }
        let Some(credentials) = &connection.digest else {
            return TrunkVerdict::Admit;
        };
        let challenge = |stale: bool| TrunkVerdict::Challenge {
            www_authenticate: self.verifier.challenge(now_secs, salt, stale),
            stale,
        };
        let Some(authorization) = authorization.and_then(DigestAuthorization::parse) else {
            return challenge(false);
        };
        let verdict = self
            .verifier
            .verify(now_secs, method, request_uri, &authorization, |user| {
                (user == credentials.username).then_some(credentials.password.as_str())
            });
        match verdict {
            Verification::Valid => TrunkVerdict::Admit,
            Verification::Stale => challenge(true),
            Verification::Rejected(Rejection::BadResponse | Rejection::UnknownUser) => {
                TrunkVerdict::WrongCredentials(format!(
                    "digest authentication failed for user {:?} on connection {}",
                    authorization.username, connection.connection_id
                ))
            }
            Verification::Rejected(_) => challenge(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_routing::model::DigestCredentials;
    use switchboard_sip::auth::digest_response;

    const URI: &str = "sip:+918047168000@gw.example.com";
    const NOW: u64 = 1_800_000_000;

    fn conn(allowed: &[&str], digest: bool) -> Connection {
        Connection {
            connection_id: "conn-1".into(),
            allowed_addresses: allowed.iter().map(|a| a.parse().unwrap()).collect(),
            media_addresses: Vec::new(),
            digest: digest.then(|| DigestCredentials {
                username: "trunk".into(),
                password: "s3cret".into(),
            }),
            provider: None,
            max_calls_per_second: None,
            media_encryption: Default::default(),
            headers_to_parameters: Default::default(),
            include_headers: Default::default(),
            transfer: Default::default(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Answers a challenge the way a carrier would.
    fn answer(challenge: &str, password: &str, cnonce: &str) -> String {
        let nonce = challenge
            .split("nonce=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let response = digest_response(
            "trunk",
            REALM,
            password,
            "INVITE",
            URI,
            nonce,
            Some(("00000001", cnonce)),
        );
        format!(
            "Digest username=\"trunk\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{URI}\", \
             response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"{cnonce}\""
        )
    }

    #[test]
    fn allowlist_decides_and_unknown_numbers_do_not_leak_to_strangers() {
        let auth = TrunkAuth::new(300);
        let c = conn(&["192.0.2.0/24"], false);
        let check = |src: &str, c: Option<&Connection>, anywhere: bool| {
            auth.check(NOW, 1, ip(src), c, anywhere, "INVITE", URI, None)
        };
        assert_eq!(check("192.0.2.7", Some(&c), true), TrunkVerdict::Admit);
        assert!(matches!(
            check("198.51.100.1", Some(&c), false),
            TrunkVerdict::Forbidden(_)
        ));
        // v4-mapped IPv6 source (dual-stack socket) counts as the IPv4 address.
        assert_eq!(
            check("::ffff:192.0.2.7", Some(&c), true),
            TrunkVerdict::Admit
        );
        // Unknown number: admitted sources go on to routing (404), strangers get 403.
        assert_eq!(check("192.0.2.7", None, true), TrunkVerdict::Admit);
        assert!(matches!(
            check("198.51.100.1", None, false),
            TrunkVerdict::Forbidden(_)
        ));
        // An empty allowlist without credentials admits nobody.
        assert!(matches!(
            check("192.0.2.7", Some(&conn(&[], false)), true),
            TrunkVerdict::Forbidden(_)
        ));
    }

    #[test]
    fn digest_challenge_then_accept_and_wrong_password_is_forbidden() {
        let auth = TrunkAuth::new(300);
        let c = conn(&["192.0.2.0/24"], true);
        let src = ip("192.0.2.7");
        let TrunkVerdict::Challenge {
            www_authenticate,
            stale: false,
        } = auth.check(NOW, 42, src, Some(&c), true, "INVITE", URI, None)
        else {
            panic!("expected a challenge");
        };
        assert!(
            www_authenticate.contains("realm=\"switchboard\""),
            "{www_authenticate}"
        );
        let good = answer(&www_authenticate, "s3cret", "abc");
        assert_eq!(
            auth.check(NOW + 5, 43, src, Some(&c), true, "INVITE", URI, Some(&good)),
            TrunkVerdict::Admit
        );
        let bad = answer(&www_authenticate, "guess", "abc");
        assert!(matches!(
            auth.check(NOW + 5, 43, src, Some(&c), true, "INVITE", URI, Some(&bad)),
            TrunkVerdict::WrongCredentials(_)
        ));
        // The allowlist still applies to authenticated requests.
        assert!(matches!(
            auth.check(
                NOW + 5,
                43,
                ip("198.51.100.1"),
                Some(&c),
                false,
                "INVITE",
                URI,
                Some(&good)
            ),
            TrunkVerdict::Forbidden(_)
        ));
    }

    #[test]
    fn expired_nonce_gets_a_stale_challenge_and_foreign_nonces_a_fresh_one() {
        let auth = TrunkAuth::new(60);
        let c = conn(&[], true);
        let src = ip("203.0.113.9");
        let TrunkVerdict::Challenge {
            www_authenticate, ..
        } = auth.check(NOW, 7, src, Some(&c), false, "INVITE", URI, None)
        else {
            panic!("expected a challenge");
        };
        let creds = answer(&www_authenticate, "s3cret", "x");
        assert!(matches!(
            auth.check(
                NOW + 61,
                8,
                src,
                Some(&c),
                false,
                "INVITE",
                URI,
                Some(&creds)
            ),
            TrunkVerdict::Challenge { stale: true, .. }
        ));
        // A nonce minted by another process (different secret) is unknown: fresh challenge.
        let other = TrunkAuth::new(60);
        assert!(matches!(
            other.check(
                NOW + 1,
                9,
                src,
                Some(&c),
                false,
                "INVITE",
                URI,
                Some(&creds)
            ),
            TrunkVerdict::Challenge { stale: false, .. }
        ));
    }
}
