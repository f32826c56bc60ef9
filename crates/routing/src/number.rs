//! Phone-number normalisation to E.164 and the compact `u64` key the routing table is keyed by.
//!
//! Numbers are normalised once, when a deployment or cohort row is written, and once per call for
//! the called and calling party. The accepted shapes are the ones carriers and spreadsheets
//! actually produce:
//!
//! * `+91 80 4716 8000`, `+1 (212) 555-1234`, `+44.20.7946.0958`: `+` then the E.164 digits;
//!   spaces, dashes, dots and parentheses are visual separators and dropped.
//! * `0091 80 4716 8000`: `00` is the ITU international prefix; `011` is accepted too when the
//!   default country code is `1` (the NANP international prefix).
//! * `080 4716 8000`, `030 1234567`: national format; the trunk prefix `0` is replaced by the
//!   configured default country code (Italy, San Marino and the Vatican keep their `0`, which is
//!   part of the number there).
//! * `98765 43210`, `(212) 555-1234`: bare national digits get the default country code; bare
//!   digits that already start with it and are at least [`MIN_BARE_INTERNATIONAL_DIGITS`] long
//!   are taken as international (`918047168000`, `12125551234`). Without a default country code
//!   bare digits are taken as international, which is what most carriers put in a Request-URI.
//! * `tel:+1-201-555-0123;ext=7`, `sip:+918047168000@gw.example;user=phone`,
//!   `<sip:%2B4420794600958@x>`, `sip:5550123;phone-context=+1-212@x`: the user part of a `tel:`,
//!   `sip:` or `sips:` URI (in angle brackets or not), `%`-escapes decoded; a global
//!   `phone-context` (`+1-212`) is prefixed to a local number, a domain context is ignored.
//!
//! Rejected: letters (vanity numbers, `anonymous`), `*`/`#`, a `+` that is not first, more than
//! [`MAX_E164_DIGITS`] or fewer than [`MIN_E164_DIGITS`] digits, a country code starting with 0,
//! and national formats when no default country code is configured.

use std::fmt;
use std::str::FromStr;

/// ITU-T E.164 §6.1: a number has at most 15 digits including the country code.
pub const MAX_E164_DIGITS: usize = 15;

/// The shortest numbers in service are 7 digits with the country code (Niue `+683 NNNN`);
/// anything shorter is an extension or a short code, which never arrives over a trunk.
pub const MIN_E164_DIGITS: usize = 7;

/// Bare digits that start with the default country code are taken as already international
/// only from this length on: national significant numbers of the large numbering plans
/// (India, NANP, UK) have 10 digits, so 11+ digits starting with the code carry it.
pub const MIN_BARE_INTERNATIONAL_DIGITS: usize = 11;

/// Digits collected before prefixes are interpreted: 15 plus the longest international prefix
/// (`011`) plus slack, so an over-long number is reported as too long, not as garbage.
const RAW_DIGIT_CAPACITY: usize = 20;

/// Why a string is not a phone number. Small and `Copy` so a rejected call can carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NumberError {
    #[error("the number is empty")]
    Empty,
    #[error("character {ch:?} at byte {position} is not part of a phone number")]
    InvalidCharacter { ch: char, position: usize },
    #[error("'+' may only appear once, before the first digit")]
    MisplacedPlus,
    #[error("malformed %-escape at byte {position}")]
    BadEscape { position: usize },
    #[error("unterminated '<' in a name-addr")]
    UnterminatedAngle,
    #[error("the SIP URI has no user part (no '@')")]
    NoUserPart,
    #[error("{digits} digits is longer than the E.164 maximum of {MAX_E164_DIGITS}")]
    TooLong { digits: usize },
    #[error("{digits} digits is shorter than the minimum of {MIN_E164_DIGITS}")]
    TooShort { digits: usize },
    #[error("country codes never start with 0")]
    InvalidCountryCode,
    #[error(
        "a national number (trunk prefix 0) needs a default country code, and none is configured"
    )]
    NationalWithoutCountryCode,
}

/// A country calling code (1–3 digits, first digit non-zero), e.g. `91` or `1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CountryCode {
    digits: [u8; 3],
    len: u8,
}

impl CountryCode {
    /// Parses `"91"`, `"+91"` or `" 44 "`. Call once when settings are loaded.
    pub fn parse(raw: &str) -> Result<Self, NumberError> {
        let trimmed = raw.trim();
        let body = trimmed.strip_prefix('+').unwrap_or(trimmed);
        if body.is_empty() {
            return Err(NumberError::Empty);
        }
        if body.len() > 3 {
            return Err(NumberError::TooLong { digits: body.len() });
        }
        let mut digits = [0u8; 3];
        for (i, b) in body.bytes().enumerate() {
            if !b.is_ascii_digit() {
                return Err(NumberError::InvalidCharacter {
                    ch: char::from(b),
                    position: i,
                });
            }
            digits[i] = b;
        }
        if digits[0] == b'0' {
            return Err(NumberError::InvalidCountryCode);
        }
        Ok(Self {
            digits,
            len: body.len() as u8,
        })
    }

    /// The ASCII digits, without `+`.
    pub fn digits(&self) -> &[u8] {
        &self.digits[..usize::from(self.len)]
    }

    /// In Italy (39), San Marino (378) and the Vatican (379) the leading 0 of a national number
    /// is part of the subscriber number and is kept after the country code.
    fn keeps_trunk_zero(&self) -> bool {
        matches!(self.digits(), b"39" | b"378" | b"379")
    }

    fn is_nanp(&self) -> bool {
        self.digits() == b"1"
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("+")?;
        for &d in self.digits() {
            write!(f, "{}", char::from(d))?;
        }
        Ok(())
    }
}

/// A normalised number: `+` and 7–15 digits, the first non-zero.
///
/// Because the first digit is never 0, the digits read as a `u64` identify the number
/// uniquely: [`E164::key`] is the compact key of the routing table (no length tag needed).
#[derive(Clone, Copy)]
pub struct E164 {
    key: u64,
    /// `+` followed by the digits; `len` bytes are used.
    text: [u8; MAX_E164_DIGITS + 1],
    len: u8,
}

impl E164 {
    fn from_digits(digits: &[u8]) -> Result<Self, NumberError> {
        if digits.len() > MAX_E164_DIGITS {
            return Err(NumberError::TooLong {
                digits: digits.len(),
            });
        }
        if digits.len() < MIN_E164_DIGITS {
            return Err(NumberError::TooShort {
                digits: digits.len(),
            });
        }
        if digits.first() == Some(&b'0') {
            return Err(NumberError::InvalidCountryCode);
        }
        let mut text = [0u8; MAX_E164_DIGITS + 1];
        text[0] = b'+';
        let mut key = 0u64;
        for (i, &d) in digits.iter().enumerate() {
            text[i + 1] = d;
            key = key * 10 + u64::from(d - b'0');
        }
        Ok(Self {
            key,
            text,
            len: digits.len() as u8 + 1,
        })
    }

    /// The fast path for what carriers and the store send most: `+` and 7–15 digits, the
    /// first non-zero. Anything else goes through the general parser.
    #[inline]
    fn parse_canonical(raw: &[u8]) -> Option<Self> {
        let digits = raw.strip_prefix(b"+")?;
        if !(MIN_E164_DIGITS..=MAX_E164_DIGITS).contains(&digits.len()) || digits[0] == b'0' {
            return None;
        }
        let mut text = [0u8; MAX_E164_DIGITS + 1];
        text[0] = b'+';
        let mut key = 0u64;
        for (i, &byte) in digits.iter().enumerate() {
            let digit = byte.wrapping_sub(b'0');
            if digit > 9 {
                return None;
            }
            key = key * 10 + u64::from(digit);
            text[i + 1] = byte;
        }
        Some(Self {
            key,
            text,
            len: raw.len() as u8,
        })
    }

    /// Rebuilds a number from its key (e.g. one stored as an integer). `None` if the key does
    /// not have 7–15 digits.
    pub fn from_key(key: u64) -> Option<Self> {
        let mut buf = [0u8; 20];
        let mut n = key;
        let mut i = buf.len();
        while n > 0 {
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
        Self::from_digits(&buf[i..]).ok()
    }

    /// The compact key: the digits as an integer (`+918047168000` → `918047168000`).
    pub fn key(&self) -> u64 {
        self.key
    }

    /// `"+918047168000"`.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and '+' are ever written into `text`.
        std::str::from_utf8(&self.text[..usize::from(self.len)]).unwrap_or("+")
    }

    /// The digits without `+`.
    pub fn digits(&self) -> &str {
        &self.as_str()[1..]
    }
}

impl PartialEq for E164 {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for E164 {}
impl std::hash::Hash for E164 {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}
impl PartialOrd for E164 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for E164 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "E164({})", self.as_str())
    }
}

/// Parses with no default country code (so national formats are rejected).
impl FromStr for E164 {
    type Err = NumberError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        normalize_with(s, None)
    }
}

impl serde::Serialize for E164 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Normalises `raw` to E.164. `default_country_code` (e.g. `"91"`) is used for national formats;
/// an invalid default country code is reported as [`NumberError::InvalidCountryCode`].
///
/// Call at write time (admin API, cohort upload); the routing table calls
/// [`normalize_with`] with its pre-parsed setting on every lookup.
pub fn normalize_number(
    raw: &str,
    default_country_code: Option<&str>,
) -> Result<E164, NumberError> {
    let cc = match default_country_code {
        Some(code) => Some(CountryCode::parse(code).map_err(|_| NumberError::InvalidCountryCode)?),
        None => None,
    };
    normalize_with(raw, cc)
}

/// [`normalize_number`] with an already parsed country code: no allocation, one pass.
pub fn normalize_with(raw: &str, default_cc: Option<CountryCode>) -> Result<E164, NumberError> {
    if let Some(number) = E164::parse_canonical(raw.as_bytes()) {
        return Ok(number);
    }
    let (number, params) = user_part(raw)?;
    let mut collected = Digits::default();
    let plus = collect_digits(number, &mut collected)?;

    let mut context = Digits::default();
    let mut global_context = false;
    if !plus {
        if let Some(value) = phone_context(params) {
            // A domain context ("example.com") names a private dial plan we cannot globalise;
            // the number is then read like any national number.
            if value.starts_with('+') || value.starts_with("%2B") || value.starts_with("%2b") {
                global_context = collect_digits(value, &mut context)?;
            }
        }
    }

    let digits = collected.as_slice();
    if digits.is_empty() {
        return Err(NumberError::Empty);
    }
    let mut out = Digits::default();
    if plus {
        out.extend(digits)?;
    } else if global_context {
        out.extend(context.as_slice())?;
        out.extend(digits)?;
    } else if let Some(rest) = digits.strip_prefix(b"00") {
        out.extend(rest)?;
    } else if let Some(rest) = digits
        .strip_prefix(b"011")
        .filter(|_| default_cc.is_some_and(|cc| cc.is_nanp()))
    {
        out.extend(rest)?;
    } else if digits[0] == b'0' {
        let cc = default_cc.ok_or(NumberError::NationalWithoutCountryCode)?;
        out.extend(cc.digits())?;
        out.extend(if cc.keeps_trunk_zero() {
            digits
        } else {
            &digits[1..]
        })?;
    } else {
        match default_cc {
            Some(cc)
                if !(digits.starts_with(cc.digits())
                    && digits.len() >= MIN_BARE_INTERNATIONAL_DIGITS) =>
            {
                out.extend(cc.digits())?;
                out.extend(digits)?;
            }
            _ => out.extend(digits)?,
        }
    }
    E164::from_digits(out.as_slice())
}

/// A fixed-capacity digit buffer (no allocation on the lookup path).
#[derive(Default)]
struct Digits {
    buf: [u8; RAW_DIGIT_CAPACITY],
    len: usize,
}

impl Digits {
    fn push(&mut self, digit: u8) -> Result<(), NumberError> {
        if self.len == RAW_DIGIT_CAPACITY {
            return Err(NumberError::TooLong {
                digits: self.len + 1,
            });
        }
        self.buf[self.len] = digit;
        self.len += 1;
        Ok(())
    }

    fn extend(&mut self, digits: &[u8]) -> Result<(), NumberError> {
        digits.iter().try_for_each(|&d| self.push(d))
    }

    fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Splits `raw` into the number text and the `;`-parameters that belong to it (tel URI
/// parameters or the parameters inside a SIP user part).
fn user_part(raw: &str) -> Result<(&str, &str), NumberError> {
    let mut s = raw.trim();
    if let Some(open) = s.find('<') {
        let inner = &s[open + 1..];
        let close = inner.find('>').ok_or(NumberError::UnterminatedAngle)?;
        s = inner[..close].trim();
    }
    let scheme_end = s.find(':');
    let body = match scheme_end {
        Some(i) if s[..i].eq_ignore_ascii_case("tel") => &s[i + 1..],
        Some(i) if s[..i].eq_ignore_ascii_case("sip") || s[..i].eq_ignore_ascii_case("sips") => {
            let rest = &s[i + 1..];
            let at = rest.find('@').ok_or(NumberError::NoUserPart)?;
            &rest[..at]
        }
        _ => s,
    };
    Ok(match body.find(';') {
        Some(i) => (&body[..i], &body[i + 1..]),
        None => (body, ""),
    })
}

/// The value of a `phone-context` parameter, if present.
fn phone_context(params: &str) -> Option<&str> {
    params.split(';').find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("phone-context")
            .then(|| value.trim())
    })
}

/// Collects the digits of `text` (decoding `%`-escapes, skipping visual separators) and
/// reports whether it started with `+`.
fn collect_digits(text: &str, out: &mut Digits) -> Result<bool, NumberError> {
    let bytes = text.as_bytes();
    let mut plus = false;
    let mut i = 0;
    while i < bytes.len() {
        let position = i;
        // "+44 (0)20 …": the bracketed trunk prefix is not dialled from abroad.
        if bytes[i..].starts_with(b"(0)") && out.len > 0 {
            i += 3;
            continue;
        }
        let b = if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).and_then(|&h| char::from(h).to_digit(16));
            let lo = bytes.get(i + 2).and_then(|&l| char::from(l).to_digit(16));
            i += 3;
            match (hi, lo) {
                (Some(hi), Some(lo)) => (hi * 16 + lo) as u8,
                _ => return Err(NumberError::BadEscape { position }),
            }
        } else {
            i += 1;
            bytes[position]
        };
        match b {
            b'0'..=b'9' => out.push(b)?,
            b'+' if !plus && out.len == 0 => plus = true,
            b'+' => return Err(NumberError::MisplacedPlus),
            b' ' | b'\t' | b'-' | b'.' | b'(' | b')' => {}
            _ => {
                let ch = text[position..]
                    .chars()
                    .next()
                    .unwrap_or(char::REPLACEMENT_CHARACTER);
                return Err(NumberError::InvalidCharacter {
                    ch: if b.is_ascii() { char::from(b) } else { ch },
                    position,
                });
            }
        }
    }
    Ok(plus)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str, cc: Option<&str>) -> Result<String, NumberError> {
        normalize_number(raw, cc).map(|n| n.to_string())
    }

    /// Real shapes seen in carrier signalling, CRM exports and web forms.
    #[test]
    fn real_number_shapes_normalise() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            // India
            ("+918047168000", None, "+918047168000"),
            ("+91 80 4716 8000", None, "+918047168000"),
            ("+91-98765-43210", None, "+919876543210"),
            ("080 4716 8000", Some("91"), "+918047168000"),
            ("098765 43210", Some("91"), "+919876543210"),
            ("98765 43210", Some("91"), "+919876543210"),
            ("919876543210", Some("91"), "+919876543210"),
            ("0091 80 4716 8000", Some("91"), "+918047168000"),
            // United States / NANP
            ("+1 (212) 555-1234", None, "+12125551234"),
            ("(212) 555-1234", Some("1"), "+12125551234"),
            ("212.555.1234", Some("1"), "+12125551234"),
            ("1-212-555-1234", Some("1"), "+12125551234"),
            ("011 44 20 7946 0958", Some("1"), "+442079460958"),
            ("12125551234", None, "+12125551234"),
            // United Kingdom
            ("+44 20 7946 0958", None, "+442079460958"),
            ("020 7946 0958", Some("44"), "+442079460958"),
            ("(0)20 7946 0958", Some("44"), "+442079460958"),
            ("07700 900123", Some("44"), "+447700900123"),
            ("+44 (0) 7700 900123", None, "+447700900123"),
            // Germany
            ("+49 30 1234567", None, "+49301234567"),
            ("030 1234567", Some("49"), "+49301234567"),
            ("0049 (30) 123 4567", None, "+49301234567"),
            ("+49 (0)30 1234567", None, "+49301234567"),
            // Italy keeps the 0
            ("06 1234 5678", Some("39"), "+390612345678"),
            // URIs
            ("tel:+1-201-555-0123", None, "+12015550123"),
            ("tel:+1-201-555-0123;ext=42", None, "+12015550123"),
            ("TEL:+91.80.4716.8000", None, "+918047168000"),
            (
                "sip:+918047168000@gw.example.com;user=phone",
                None,
                "+918047168000",
            ),
            (
                "sips:+918047168000@gw.example.com:5061;transport=tls;user=phone",
                None,
                "+918047168000",
            ),
            (
                "<sip:%2B442079460958@carrier.example>;tag=abc",
                None,
                "+442079460958",
            ),
            (
                "\"Alice\" <sip:+12125551234@10.0.0.1>",
                None,
                "+12125551234",
            ),
            ("sip:08047168000@10.0.0.1", Some("91"), "+918047168000"),
            (
                "sip:5550123;phone-context=+1-212@gw.example;user=phone",
                None,
                "+12125550123",
            ),
            ("tel:5550123;phone-context=%2B1-212", None, "+12125550123"),
            (
                "tel:08047168000;phone-context=example.com",
                Some("91"),
                "+918047168000",
            ),
            ("sip:+1%20212%20555%201234@x", None, "+12125551234"),
            // Shortest and longest in service
            ("+683 4002", None, "+6834002"),
            ("+882 1234 5678 9012", None, "+882123456789012"),
        ];
        for (raw, cc, want) in cases {
            assert_eq!(
                norm(raw, *cc).as_deref(),
                Ok(*want),
                "{raw:?} with default cc {cc:?}"
            );
        }
        assert!(cases.len() >= 20);
    }

    #[test]
    fn invalid_shapes_are_rejected_with_a_reason() {
        let cases: &[(&str, Option<&str>, NumberError)] = &[
            ("", None, NumberError::Empty),
            ("   ", None, NumberError::Empty),
            (
                "1-800-FLOWERS",
                Some("1"),
                NumberError::InvalidCharacter {
                    ch: 'F',
                    position: 6,
                },
            ),
            (
                "sip:anonymous@anonymous.invalid",
                None,
                NumberError::InvalidCharacter {
                    ch: 'a',
                    position: 0,
                },
            ),
            (
                "+1 212 555 1234 #5",
                None,
                NumberError::InvalidCharacter {
                    ch: '#',
                    position: 16,
                },
            ),
            (
                "*67 212 555 1234",
                Some("1"),
                NumberError::InvalidCharacter {
                    ch: '*',
                    position: 0,
                },
            ),
            ("+44+20 7946", None, NumberError::MisplacedPlus),
            ("12+345678", None, NumberError::MisplacedPlus),
            (
                "+1 212 555 1234 5678 9",
                None,
                NumberError::TooLong { digits: 16 },
            ),
            (
                "+12 345 678 901 234 567 890 123",
                None,
                NumberError::TooLong { digits: 21 },
            ),
            ("+1 555", None, NumberError::TooShort { digits: 4 }),
            ("112", Some("44"), NumberError::TooShort { digits: 5 }),
            ("+0 800 123 4567", None, NumberError::InvalidCountryCode),
            ("000 800 123 4567", None, NumberError::InvalidCountryCode),
            (
                "080 4716 8000",
                None,
                NumberError::NationalWithoutCountryCode,
            ),
            ("sip:+918047168000", None, NumberError::NoUserPart),
            ("<sip:+918047168000@x", None, NumberError::UnterminatedAngle),
            (
                "sip:%2G918047168000@x",
                None,
                NumberError::BadEscape { position: 0 },
            ),
            (
                "+91 ८०४७१६८०००",
                None,
                NumberError::InvalidCharacter {
                    ch: '८',
                    position: 4,
                },
            ),
        ];
        for (raw, cc, want) in cases {
            assert_eq!(norm(raw, *cc), Err(*want), "{raw:?}");
        }
    }

    #[test]
    fn key_is_the_digits_and_round_trips() {
        let n = normalize_number("+91 80 4716 8000", None).unwrap();
        assert_eq!(n.key(), 918_047_168_000);
        assert_eq!(n.as_str(), "+918047168000");
        assert_eq!(n.digits(), "918047168000");
        assert_eq!(E164::from_key(n.key()), Some(n));
        assert_eq!(E164::from_key(123), None);
        assert_eq!(
            "+442079460958".parse::<E164>().map(|n| n.key()),
            Ok(442_079_460_958)
        );
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"+918047168000\"");
    }

    #[test]
    fn country_code_parsing() {
        assert_eq!(
            CountryCode::parse("+91").map(|c| c.to_string()),
            Ok("+91".to_string())
        );
        assert_eq!(
            CountryCode::parse("0"),
            Err(NumberError::InvalidCountryCode)
        );
        assert!(CountryCode::parse("1234").is_err());
        assert!(CountryCode::parse("4a").is_err());
        assert_eq!(
            normalize_number("080", Some("x")),
            Err(NumberError::InvalidCountryCode)
        );
    }
}
