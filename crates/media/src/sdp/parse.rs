//! SDP text → [`SessionDescription`] (RFC 4566 subset): what the answerer reads.

use std::net::IpAddr;

use super::crypto::CryptoAttribute;
use super::{Codec, Direction, MAX_FORMATS, MAX_MEDIA_SECTIONS};
use crate::MediaError;

/// Upper bound on `a=crypto` lines in one `m=` section; offers carry one per suite (2-4).
const MAX_CRYPTO_LINES: usize = 16;

/// `o=` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub username: String,
    pub session_id: String,
    pub session_version: String,
    pub address: String,
}

/// `a=rtpmap:<pt> <encoding>/<clock>[/<channels>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    pub payload_type: u8,
    pub encoding: String,
    pub clock_rate: u32,
    pub channels: Option<u8>,
}

/// One `m=` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDescription {
    /// `audio`, `video`, ...
    pub kind: String,
    pub port: u16,
    /// `RTP/AVP`, `RTP/SAVP`, ...
    pub proto: String,
    /// Format list as written (payload type numbers for RTP).
    pub formats: Vec<String>,
    /// Media-level `c=` (overrides the session-level one).
    pub connection: Option<IpAddr>,
    pub rtpmaps: Vec<RtpMap>,
    /// `a=fmtp:<pt> <params>`.
    pub fmtps: Vec<(u8, String)>,
    pub ptime: Option<u32>,
    /// Media-level direction attribute, if any.
    pub direction: Option<Direction>,
    /// `a=crypto` lines (SDES keys for `RTP/SAVP`), in offer order.
    pub crypto: Vec<CryptoAttribute>,
}

/// How an `m=` line's transport protocol is carried, as far as we are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `RTP/AVP`, `RTP/AVPF`.
    Plain,
    /// `RTP/SAVP`, `RTP/SAVPF`: SRTP keyed by `a=crypto` (SDES).
    Sdes,
    /// Anything else (`UDP/TLS/RTP/SAVP` is DTLS-SRTP, which we do not speak).
    Other,
}

impl MediaDescription {
    pub(super) fn rtpmap(&self, payload_type: u8) -> Option<&RtpMap> {
        self.rtpmaps.iter().find(|m| m.payload_type == payload_type)
    }

    /// Payload types of the formats in offer order (non-numeric formats are skipped).
    pub(super) fn payload_types(&self) -> impl Iterator<Item = u8> + '_ {
        self.formats
            .iter()
            .filter_map(|f| f.parse::<u8>().ok())
            .filter(|pt| *pt < 128)
    }

    /// The codec a payload type stands for here: the rtpmap wins, else the static assignment.
    pub(super) fn codec_of(&self, payload_type: u8) -> Option<Codec> {
        match self.rtpmap(payload_type) {
            Some(map) => Codec::from_encoding(&map.encoding, map.clock_rate),
            None => Codec::from_static(payload_type),
        }
    }

    /// Payload type of `telephone-event/8000`, if offered.
    pub(super) fn telephone_event(&self) -> Option<u8> {
        self.payload_types().find(|pt| {
            self.rtpmap(*pt).is_some_and(|m| {
                m.encoding.eq_ignore_ascii_case("telephone-event") && m.clock_rate == 8000
            })
        })
    }

    /// The profile of an audio stream; `None` for other media.
    pub(super) fn audio_profile(&self) -> Option<Profile> {
        if !self.kind.eq_ignore_ascii_case("audio") {
            return None;
        }
        let is = |name: &str| self.proto.eq_ignore_ascii_case(name);
        Some(if is("RTP/AVP") || is("RTP/AVPF") {
            Profile::Plain
        } else if is("RTP/SAVP") || is("RTP/SAVPF") {
            Profile::Sdes
        } else {
            Profile::Other
        })
    }
}

/// A parsed session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    pub origin: Option<Origin>,
    pub session_name: String,
    /// Session-level `c=`.
    pub connection: Option<IpAddr>,
    /// Session-level direction attribute, if any.
    pub direction: Option<Direction>,
    pub media: Vec<MediaDescription>,
}

impl SessionDescription {
    /// Parses an SDP body. Unknown line types and attributes are ignored (RFC 4566 §5); lines
    /// may end in CRLF or LF.
    pub fn parse(text: &str) -> Result<SessionDescription, MediaError> {
        let mut sdp = SessionDescription {
            origin: None,
            session_name: String::new(),
            connection: None,
            direction: None,
            media: Vec::new(),
        };
        let mut saw_version = false;
        for (index, raw) in text.split('\n').enumerate() {
            let line_no = index + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if line.trim().is_empty() {
                continue;
            }
            let bytes = line.as_bytes();
            if bytes.len() < 2 || bytes[1] != b'=' {
                return Err(MediaError::bad_sdp(line_no, "expected <type>=<value>"));
            }
            let kind = bytes[0];
            let value = &line[2..];
            if !saw_version {
                if kind != b'v' {
                    return Err(MediaError::bad_sdp(line_no, "the first line must be v="));
                }
                if value.trim() != "0" {
                    return Err(MediaError::bad_sdp(line_no, "only SDP version 0 is known"));
                }
                saw_version = true;
                continue;
            }
            match kind {
                b'o' => sdp.origin = Some(parse_origin(value, line_no)?),
                b's' => sdp.session_name = value.to_owned(),
                b'c' => {
                    let addr = parse_connection(value, line_no)?;
                    match sdp.media.last_mut() {
                        Some(m) => m.connection = Some(addr),
                        None => sdp.connection = Some(addr),
                    }
                }
                b'm' => {
                    if sdp.media.len() == MAX_MEDIA_SECTIONS {
                        return Err(MediaError::bad_sdp(line_no, "too many m= sections"));
                    }
                    sdp.media.push(parse_media(value, line_no)?);
                }
                b'a' => parse_attribute(&mut sdp, value, line_no)?,
                // v, t, b, k, r, z, i, u, e, p: nothing we act on.
                _ => {}
            }
        }
        if !saw_version {
            return Err(MediaError::bad_sdp(0, "empty SDP"));
        }
        Ok(sdp)
    }

    /// Where the media of `media` should be sent (media-level `c=` over session-level).
    pub(super) fn connection_for(&self, media: &MediaDescription) -> Option<IpAddr> {
        media.connection.or(self.connection)
    }

    pub(super) fn direction_for(&self, media: &MediaDescription) -> Direction {
        media.direction.or(self.direction).unwrap_or_default()
    }
}

fn parse_origin(value: &str, line: usize) -> Result<Origin, MediaError> {
    let fields: Vec<&str> = value.split_ascii_whitespace().collect();
    if fields.len() != 6 {
        return Err(MediaError::bad_sdp(line, "o= needs 6 fields"));
    }
    Ok(Origin {
        username: fields[0].to_owned(),
        session_id: fields[1].to_owned(),
        session_version: fields[2].to_owned(),
        address: fields[5].to_owned(),
    })
}

fn parse_connection(value: &str, line: usize) -> Result<IpAddr, MediaError> {
    let mut fields = value.split_ascii_whitespace();
    let (Some(net), Some(family), Some(address)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(MediaError::bad_sdp(
            line,
            "c= needs <nettype> <addrtype> <address>",
        ));
    };
    if net != "IN" {
        return Err(MediaError::bad_sdp(line, "c= network type must be IN"));
    }
    // Multicast addresses may carry /ttl[/count]; we only need the address.
    let address = address.split('/').next().unwrap_or(address);
    let parsed: IpAddr = address
        .parse()
        .map_err(|_| MediaError::bad_sdp(line, format!("c= address {address:?} is not an IP")))?;
    match (family, parsed) {
        ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_)) => Ok(parsed),
        _ => Err(MediaError::bad_sdp(
            line,
            "c= address does not match its address type",
        )),
    }
}

fn parse_media(value: &str, line: usize) -> Result<MediaDescription, MediaError> {
    let mut fields = value.split_ascii_whitespace();
    let (Some(kind), Some(port), Some(proto)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(MediaError::bad_sdp(
            line,
            "m= needs <media> <port> <proto> <fmt>...",
        ));
    };
    // `<port>/<number of ports>`: we use the first.
    let port = port.split('/').next().unwrap_or(port);
    let port: u16 = port
        .parse()
        .map_err(|_| MediaError::bad_sdp(line, format!("bad m= port {port:?}")))?;
    let formats: Vec<String> = fields.map(str::to_owned).collect();
    if formats.is_empty() {
        return Err(MediaError::bad_sdp(line, "m= has no formats"));
    }
    if formats.len() > MAX_FORMATS {
        return Err(MediaError::bad_sdp(line, "m= has too many formats"));
    }
    Ok(MediaDescription {
        kind: kind.to_owned(),
        port,
        proto: proto.to_owned(),
        formats,
        connection: None,
        rtpmaps: Vec::new(),
        fmtps: Vec::new(),
        ptime: None,
        direction: None,
        crypto: Vec::new(),
    })
}

fn parse_attribute(
    sdp: &mut SessionDescription,
    value: &str,
    line: usize,
) -> Result<(), MediaError> {
    let (name, arg) = match value.split_once(':') {
        Some((name, arg)) => (name, Some(arg)),
        None => (value, None),
    };
    if let Some(direction) = Direction::from_attribute(name.trim()) {
        match sdp.media.last_mut() {
            Some(m) => m.direction = Some(direction),
            None => sdp.direction = Some(direction),
        }
        return Ok(());
    }
    // The remaining attributes we read are media-level only.
    let Some(media) = sdp.media.last_mut() else {
        return Ok(());
    };
    let Some(arg) = arg else { return Ok(()) };
    match name {
        "rtpmap" => media.rtpmaps.push(parse_rtpmap(arg, line)?),
        "fmtp" => {
            let (pt, params) = arg.split_once(' ').unwrap_or((arg, ""));
            let pt = pt
                .parse::<u8>()
                .map_err(|_| MediaError::bad_sdp(line, "bad fmtp PT"))?;
            media.fmtps.push((pt, params.trim().to_owned()));
        }
        "crypto" => {
            if media.crypto.len() == MAX_CRYPTO_LINES {
                return Err(MediaError::bad_sdp(line, "too many a=crypto lines"));
            }
            media.crypto.push(CryptoAttribute::parse(arg, line)?);
        }
        "ptime" => {
            let ms = arg
                .trim()
                .parse::<u32>()
                .map_err(|_| MediaError::bad_sdp(line, "bad ptime"))?;
            media.ptime = Some(ms);
        }
        _ => {}
    }
    Ok(())
}

fn parse_rtpmap(arg: &str, line: usize) -> Result<RtpMap, MediaError> {
    let (pt, rest) = arg
        .split_once(' ')
        .ok_or_else(|| MediaError::bad_sdp(line, "rtpmap needs <pt> <encoding>/<clock>"))?;
    let payload_type = pt
        .trim()
        .parse::<u8>()
        .ok()
        .filter(|pt| *pt < 128)
        .ok_or_else(|| MediaError::bad_sdp(line, "bad rtpmap payload type"))?;
    let mut parts = rest.trim().split('/');
    let encoding = parts.next().unwrap_or_default().to_owned();
    let clock_rate = parts
        .next()
        .and_then(|c| c.parse::<u32>().ok())
        .ok_or_else(|| MediaError::bad_sdp(line, "bad rtpmap clock rate"))?;
    let channels = match parts.next() {
        Some(c) => Some(
            c.parse::<u8>()
                .map_err(|_| MediaError::bad_sdp(line, "bad rtpmap channels"))?,
        ),
        None => None,
    };
    Ok(RtpMap {
        payload_type,
        encoding,
        clock_rate,
        channels,
    })
}
