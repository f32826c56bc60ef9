//! SDES key exchange for SRTP (RFC 4568): the `a=crypto` attribute, the suites we take, the
//! per-connection policy and our fresh keys. The keys protect media through
//! [`crate::srtp::SrtpStream`]; nothing here encrypts.

use std::fmt;

use base64::Engine as _;
use rand::Rng as _;

use crate::MediaError;

/// Master key (16 bytes) followed by master salt (14 bytes), as `inline:` carries them for
/// both AES_CM_128 suites.
pub const MASTER_KEY_AND_SALT_LEN: usize = 30;
/// Length of the master key part of [`SrtpKey`].
pub const MASTER_KEY_LEN: usize = 16;
/// Largest `a=crypto` tag (RFC 4568 §9.1: 1*9DIGIT).
const MAX_TAG: u32 = 999_999_999;

/// The SRTP crypto suites we answer (RFC 4568 §6.2). Both are AES counter mode with a 128-bit
/// key and HMAC-SHA1; they differ only in the RTP authentication tag length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CryptoSuite {
    /// 80-bit tag: what every SDES carrier offers first.
    AesCm128HmacSha1_80,
    /// 32-bit tag: saves 6 bytes per packet; offered by some low-bandwidth trunks.
    AesCm128HmacSha1_32,
}

impl CryptoSuite {
    /// Every suite we take, in our order of preference.
    pub const ALL: [CryptoSuite; 2] = [
        CryptoSuite::AesCm128HmacSha1_80,
        CryptoSuite::AesCm128HmacSha1_32,
    ];

    /// The name as written in `a=crypto`.
    pub fn name(self) -> &'static str {
        match self {
            CryptoSuite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            CryptoSuite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    fn from_name(name: &str) -> Option<CryptoSuite> {
        CryptoSuite::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }

    /// The names of [`CryptoSuite::ALL`], comma separated (for Warning headers and logs).
    pub fn supported_names() -> String {
        CryptoSuite::ALL.map(CryptoSuite::name).join(", ")
    }
}

impl fmt::Display for CryptoSuite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One side's SRTP master key and salt. `Debug` never prints the bytes: keys end up in
/// call structs that get logged.
#[derive(Clone, PartialEq, Eq)]
pub struct SrtpKey([u8; MASTER_KEY_AND_SALT_LEN]);

impl SrtpKey {
    /// A fresh key from the thread-local CSPRNG (ChaCha, seeded from the OS), as RFC 4568
    /// §6.1 requires of every answer.
    pub fn random() -> SrtpKey {
        let mut bytes = [0u8; MASTER_KEY_AND_SALT_LEN];
        rand::rng().fill(&mut bytes);
        SrtpKey(bytes)
    }

    pub fn from_bytes(bytes: [u8; MASTER_KEY_AND_SALT_LEN]) -> SrtpKey {
        SrtpKey(bytes)
    }

    pub fn master_key(&self) -> &[u8] {
        &self.0[..MASTER_KEY_LEN]
    }

    pub fn master_salt(&self) -> &[u8] {
        &self.0[MASTER_KEY_LEN..]
    }

    /// The `inline:` value: base64 of key ‖ salt.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }
}

impl fmt::Debug for SrtpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SrtpKey(..)")
    }
}

/// The keys of an SRTP stream agreed by SDES: `remote` decrypts what the far end sends,
/// `local` (ours, from the answer) encrypts what we send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrtpParams {
    pub suite: CryptoSuite,
    /// The `a=crypto` tag of the chosen line (echoed in the answer).
    pub tag: u32,
    pub remote: SrtpKey,
    pub local: SrtpKey,
}

/// Per-connection media encryption policy (`media_encryption` on a connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MediaEncryption {
    /// Plain RTP only: an `RTP/SAVP` offer gets 488.
    Disable,
    /// Answer what is offered: SRTP for `RTP/SAVP`, plain for `RTP/AVP`. The default, so a
    /// trunk works whichever it speaks.
    #[default]
    Allow,
    /// SRTP only: a plain offer gets 488, and a late offer is made as `RTP/SAVP`.
    Require,
}

impl MediaEncryption {
    pub fn allows_plain(self) -> bool {
        self != MediaEncryption::Require
    }

    pub fn allows_srtp(self) -> bool {
        self != MediaEncryption::Disable
    }
}

/// A parsed `a=crypto:<tag> <suite> <key-params> [<session-params>]` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CryptoAttribute {
    pub tag: u32,
    /// The suite name as written (kept for unknown suites, to say what was offered).
    pub suite_name: String,
    /// The suite and key when we can use this line: a suite we take, one inline key without
    /// MKI, and no session parameter that changes the transform.
    pub usable: Option<(CryptoSuite, SrtpKey)>,
}

impl CryptoAttribute {
    /// Parses the value after `a=crypto:`. Syntax errors are [`MediaError::BadSdp`] (400);
    /// an unknown suite or a feature we lack (MKI, KDR, unencrypted SRTP) is a valid line we
    /// skip (`usable: None`), as RFC 4568 §7.1.1 asks of an answerer.
    pub fn parse(value: &str, line: usize) -> Result<CryptoAttribute, MediaError> {
        let bad = |why: &str| MediaError::bad_sdp(line, format!("a=crypto: {why}"));
        let mut fields = value.split_ascii_whitespace();
        let (Some(tag), Some(suite_name), Some(key_params)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(bad("needs <tag> <crypto-suite> <key-params>"));
        };
        let tag = tag
            .parse::<u32>()
            .ok()
            .filter(|t| tag.len() <= 9 && *t <= MAX_TAG && tag.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| bad("the tag must be 1 to 9 digits"))?;
        let session_params: Vec<&str> = fields.collect();
        let suite = CryptoSuite::from_name(suite_name);
        let mut usable = None;
        if let Some(suite) = suite {
            let key = parse_key_params(key_params).map_err(|why| bad(&why))?;
            let transform_changed = session_params.iter().any(|p| {
                p.starts_with("UNENCRYPTED_SRTP")
                    || p.starts_with("UNENCRYPTED_SRTCP")
                    || p.starts_with("UNAUTHENTICATED_SRTP")
                    || (p.starts_with("KDR=") && *p != "KDR=0")
            });
            if let (Some(key), false) = (key, transform_changed) {
                usable = Some((suite, key));
            }
        } else if !key_params.starts_with("inline:") {
            return Err(bad("key-params must start with inline:"));
        }
        Ok(CryptoAttribute {
            tag,
            suite_name: suite_name.to_owned(),
            usable,
        })
    }
}

/// `inline:<base64 key||salt>[|<lifetime>][|<MKI>:<length>]`, possibly several joined by `;`.
/// `Ok(None)`: well formed but not for us (several keys or an MKI).
fn parse_key_params(key_params: &str) -> Result<Option<SrtpKey>, String> {
    let mut keys = key_params.split(';');
    let first = keys.next().unwrap_or_default();
    let several = keys.next().is_some();
    let Some(inline) = first.strip_prefix("inline:") else {
        return Err("key-params must start with inline:".into());
    };
    let mut parts = inline.split('|');
    let encoded = parts.next().unwrap_or_default();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| "the inline key is not base64".to_owned())?;
    let bytes: [u8; MASTER_KEY_AND_SALT_LEN] = decoded.try_into().map_err(|d: Vec<u8>| {
        format!(
            "the inline key is {} bytes, the suite needs {MASTER_KEY_AND_SALT_LEN} (key and salt)",
            d.len()
        )
    })?;
    let mut has_mki = false;
    for part in parts {
        if part.contains(':') {
            has_mki = true;
        } else if !valid_lifetime(part) {
            return Err(format!("bad key lifetime {part:?}"));
        }
    }
    Ok((!several && !has_mki).then_some(SrtpKey(bytes)))
}

/// A key lifetime: decimal digits or `2^<digits>`. We rekey never (calls are short), so the
/// value only has to be well formed.
fn valid_lifetime(text: &str) -> bool {
    let digits = text.strip_prefix("2^").unwrap_or(text);
    !digits.is_empty() && digits.len() <= 20 && digits.bytes().all(|b| b.is_ascii_digit())
}

/// The `a=crypto` line we write for `params` (our key, their tag and suite).
pub(super) fn answer_line(params: &SrtpParams) -> String {
    format!(
        "a=crypto:{} {} inline:{}\r\n",
        params.tag,
        params.suite.name(),
        params.local.to_base64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";

    #[test]
    fn known_suites_with_one_inline_key_are_usable() {
        let a =
            CryptoAttribute::parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}"), 5).unwrap();
        assert_eq!(a.tag, 1);
        let (suite, key) = a.usable.unwrap();
        assert_eq!(suite, CryptoSuite::AesCm128HmacSha1_80);
        assert_eq!(key.to_base64(), KEY);
        assert_eq!(key.master_key().len(), 16);
        assert_eq!(key.master_salt().len(), 14);
        let with_lifetime =
            CryptoAttribute::parse(&format!("2 AES_CM_128_HMAC_SHA1_32 inline:{KEY}|2^31"), 5)
                .unwrap();
        assert_eq!(
            with_lifetime.usable.unwrap().0,
            CryptoSuite::AesCm128HmacSha1_32
        );
        assert!(!format!("{:?}", SrtpKey::random()).contains(KEY));
    }

    #[test]
    fn unknown_suites_and_missing_features_are_skipped_not_errors() {
        for value in [
            format!("1 AEAD_AES_256_GCM inline:{KEY}"),
            format!("1 F8_128_HMAC_SHA1_80 inline:{KEY}"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|2^20|1:4"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY};inline:{KEY}"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY} UNENCRYPTED_SRTP"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY} KDR=24"),
        ] {
            let a = CryptoAttribute::parse(&value, 5).unwrap();
            assert_eq!(a.usable, None, "{value}");
        }
    }

    #[test]
    fn malformed_lines_are_bad_sdp_naming_the_problem() {
        for (value, why) in [
            ("1 AES_CM_128_HMAC_SHA1_80".to_owned(), "needs"),
            (format!("x AES_CM_128_HMAC_SHA1_80 inline:{KEY}"), "tag"),
            (
                format!("1234567890 AES_CM_128_HMAC_SHA1_80 inline:{KEY}"),
                "tag",
            ),
            (format!("1 AES_CM_128_HMAC_SHA1_80 {KEY}"), "inline:"),
            ("1 AES_CM_128_HMAC_SHA1_80 inline:@@@@".to_owned(), "base64"),
            (
                "1 AES_CM_128_HMAC_SHA1_80 inline:QUJD".to_owned(),
                "3 bytes",
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|forever"),
                "lifetime",
            ),
            (format!("1 SOME_SUITE key:{KEY}"), "inline:"),
        ] {
            let err = CryptoAttribute::parse(&value, 7).unwrap_err();
            assert_eq!(err.sip_status(), 400, "{value}");
            let text = err.to_string();
            assert!(
                text.contains("line 7") && text.contains("a=crypto") && text.contains(why),
                "{value}: {text}"
            );
        }
    }

    #[test]
    fn fresh_keys_differ_and_round_trip_through_the_answer_line() {
        let (a, b) = (SrtpKey::random(), SrtpKey::random());
        assert_ne!(a, b);
        let params = SrtpParams {
            suite: CryptoSuite::AesCm128HmacSha1_32,
            tag: 7,
            remote: b,
            local: a.clone(),
        };
        let line = answer_line(&params);
        let value = line
            .strip_prefix("a=crypto:")
            .and_then(|l| l.strip_suffix("\r\n"))
            .unwrap();
        let parsed = CryptoAttribute::parse(value, 1).unwrap();
        assert_eq!(parsed.tag, 7);
        assert_eq!(parsed.usable, Some((CryptoSuite::AesCm128HmacSha1_32, a)));
    }
}
