//! SDP (RFC 4566 subset) and the RFC 3264 offer/answer model for one audio stream.
//!
//! What the gateway needs from a carrier's INVITE:
//! * [`SdpSession::answer`] — the carrier offered (INVITE with SDP, or a re-INVITE): pick PCMU or
//!   PCMA plus RFC 4733 telephone-event, answer with our address and RTP port. Hold offers
//!   (`a=sendonly`, `a=inactive`, `c=0.0.0.0`) are answered `recvonly` / `inactive`.
//! * [`SdpSession::offer`] + [`SdpSession::accept_answer`] — late offer: the INVITE had no SDP,
//!   so our 200 OK carries the offer and the ACK carries the answer.
//!
//! One [`SdpSession`] lives as long as the call, so every SDP we send keeps the same `o=` session
//! id and bumps the version only when the body changes (RFC 3264 §8).

use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};

use crate::MediaError;

/// Packetisation interval we send and ask for: 20 ms is what every carrier and the Twilio
/// dialect use (160 samples at 8 kHz per frame).
pub const PTIME_MS: u32 = 20;
/// Dynamic payload type we offer for telephone-event when we make the offer (late offer).
/// 101 is the de-facto value used by most SIP stacks, which makes traces easy to read.
pub const OFFER_TELEPHONE_EVENT_PT: u8 = 101;
/// RFC 4733 events we accept: DTMF 0-9, *, #, A-D (0-15) and flash (16).
const TELEPHONE_EVENTS: &str = "0-16";
/// Upper bound on `m=` sections; real offers carry one or two. Protects against absurd bodies.
const MAX_MEDIA_SECTIONS: usize = 16;
/// Upper bound on formats in one `m=` line (RTP payload types are 7 bits).
const MAX_FORMATS: usize = 128;
/// Session name in the SDP we produce (`s=` must not be empty).
const SESSION_NAME: &str = "switchboard";

/// The audio codecs switchboard bridges. The agent side is µ-law, so PCMU needs no
/// transcoding and PCMA costs one table lookup per byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// G.711 µ-law, static payload type 0.
    Pcmu,
    /// G.711 A-law, static payload type 8.
    Pcma,
}

impl Codec {
    /// The RFC 3551 static payload type.
    pub fn static_payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }

    /// The encoding name as it appears in `a=rtpmap`.
    pub fn encoding_name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    fn from_encoding(name: &str, clock_rate: u32) -> Option<Codec> {
        if clock_rate != 8000 {
            return None;
        }
        if name.eq_ignore_ascii_case("PCMU") {
            Some(Codec::Pcmu)
        } else if name.eq_ignore_ascii_case("PCMA") {
            Some(Codec::Pcma)
        } else {
            None
        }
    }
}

/// Media direction attribute (RFC 4566 §6, RFC 3264 §6.1), from the point of view of the
/// side that wrote the SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Direction {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// The direction the other side answers with (RFC 3264 §6.1).
    pub fn reversed(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            other => other,
        }
    }

    /// True when the writer of this SDP sends media.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// True when the writer of this SDP receives media.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    fn attribute(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    fn from_attribute(name: &str) -> Option<Direction> {
        match name {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }
}

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
}

impl MediaDescription {
    fn rtpmap(&self, payload_type: u8) -> Option<&RtpMap> {
        self.rtpmaps.iter().find(|m| m.payload_type == payload_type)
    }

    /// Payload types of the formats in offer order (non-numeric formats are skipped).
    fn payload_types(&self) -> impl Iterator<Item = u8> + '_ {
        self.formats
            .iter()
            .filter_map(|f| f.parse::<u8>().ok())
            .filter(|pt| *pt < 128)
    }

    /// The codec a payload type stands for here: the rtpmap wins, else the static assignment.
    fn codec_of(&self, payload_type: u8) -> Option<Codec> {
        match self.rtpmap(payload_type) {
            Some(map) => Codec::from_encoding(&map.encoding, map.clock_rate),
            None => match payload_type {
                0 => Some(Codec::Pcmu),
                8 => Some(Codec::Pcma),
                _ => None,
            },
        }
    }

    /// Payload type of `telephone-event/8000`, if offered.
    fn telephone_event(&self) -> Option<u8> {
        self.payload_types().find(|pt| {
            self.rtpmap(*pt).is_some_and(|m| {
                m.encoding.eq_ignore_ascii_case("telephone-event") && m.clock_rate == 8000
            })
        })
    }

    /// Plain RTP audio profiles we can terminate (no SRTP).
    fn is_plain_rtp_audio(&self) -> bool {
        self.kind.eq_ignore_ascii_case("audio")
            && (self.proto.eq_ignore_ascii_case("RTP/AVP")
                || self.proto.eq_ignore_ascii_case("RTP/AVPF"))
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
    fn connection_for(&self, media: &MediaDescription) -> Option<IpAddr> {
        media.connection.or(self.connection)
    }

    fn direction_for(&self, media: &MediaDescription) -> Direction {
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

/// What the bridge needs to know about the agreed audio stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiatedMedia {
    pub codec: Codec,
    /// Payload type for audio in both directions (the offerer's number for the codec).
    pub payload_type: u8,
    /// Payload type of RFC 4733 telephone-event, when both sides agreed on it.
    pub telephone_event: Option<u8>,
    /// Where the far end wants our RTP, from its SDP. `None` while it is on hold with a null
    /// address (`c=0.0.0.0`). The bridge latches to the real source address anyway
    /// (symmetric RTP); this is where it sends until the first packet arrives.
    pub remote_rtp: Option<SocketAddr>,
    /// Our side's direction: [`Direction::sends`] says whether the bridge may send RTP,
    /// [`Direction::receives`] whether it expects caller audio.
    pub direction: Direction,
    /// The far end's requested packetisation (informational; we always send [`PTIME_MS`]).
    pub remote_ptime_ms: Option<u32>,
}

impl NegotiatedMedia {
    /// True when the far end put the call on hold (we must not send media).
    pub fn on_hold(&self) -> bool {
        !self.direction.sends() || self.remote_rtp.is_none()
    }
}

/// An SDP body we generated (answer or offer), ready for a SIP message body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    sdp: String,
}

impl Answer {
    /// The body text (CRLF line endings).
    pub fn as_str(&self) -> &str {
        &self.sdp
    }

    pub fn into_string(self) -> String {
        self.sdp
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sdp)
    }
}

/// Our side of one call's SDP exchanges. Create one per call when the RTP port is allocated
/// and keep it for re-INVITEs, so `o=` keeps its session id and version rules (RFC 3264 §8).
#[derive(Debug, Clone)]
pub struct SdpSession {
    local_ip: IpAddr,
    rtp_port: u16,
    session_id: u64,
    version: u64,
    /// Body (after the `o=` line) of the last SDP we sent: the version changes only with it.
    last_body: Option<String>,
}

impl SdpSession {
    /// `local_ip` is the address we advertise (the configured public media address);
    /// `rtp_port` the allocated even RTP port.
    pub fn new(local_ip: IpAddr, rtp_port: u16) -> SdpSession {
        // NTP-style random session id (RFC 4566 suggests an NTP timestamp; any unique value works).
        let session_id = rand::random::<u32>() as u64 + 1;
        SdpSession {
            local_ip,
            rtp_port,
            session_id,
            version: session_id,
            last_body: None,
        }
    }

    /// The address and port we advertise.
    pub fn local_rtp(&self) -> SocketAddr {
        SocketAddr::new(self.local_ip, self.rtp_port)
    }

    /// Answers an offer (initial INVITE or re-INVITE). Errors: [`MediaError::BadSdp`] (400),
    /// [`MediaError::NoCommonCodec`] (488).
    pub fn answer(&mut self, offer: &str) -> Result<(Answer, NegotiatedMedia), MediaError> {
        let offer = SessionDescription::parse(offer)?;
        let mut chosen: Option<(usize, NegotiatedMedia)> = None;
        for (index, media) in offer.media.iter().enumerate() {
            if chosen.is_some() || media.port == 0 || !media.is_plain_rtp_audio() {
                continue;
            }
            // Prefer PCMU: it is what the agent speaks, so no transcoding at all.
            let pick = |want: Codec| {
                media
                    .payload_types()
                    .find(|pt| media.codec_of(*pt) == Some(want))
            };
            let Some((codec, payload_type)) = pick(Codec::Pcmu)
                .map(|pt| (Codec::Pcmu, pt))
                .or_else(|| pick(Codec::Pcma).map(|pt| (Codec::Pcma, pt)))
            else {
                continue;
            };
            let address = offer.connection_for(media).ok_or_else(|| {
                MediaError::bad_sdp(0, "audio stream has no c= line at session or media level")
            })?;
            let offered = offer.direction_for(media);
            let null_address = address.is_unspecified();
            let ours = if null_address {
                // RFC 2543-style hold: the far end does not want our media.
                if offered.sends() {
                    Direction::RecvOnly
                } else {
                    Direction::Inactive
                }
            } else {
                offered.reversed()
            };
            chosen = Some((
                index,
                NegotiatedMedia {
                    codec,
                    payload_type,
                    telephone_event: media.telephone_event(),
                    remote_rtp: (!null_address).then(|| SocketAddr::new(address, media.port)),
                    direction: ours,
                    remote_ptime_ms: media.ptime,
                },
            ));
        }
        let Some((chosen_index, negotiated)) = chosen else {
            let offered = offer
                .media
                .iter()
                .flat_map(|m| m.formats.iter().cloned())
                .collect();
            return Err(MediaError::NoCommonCodec { offered });
        };

        let mut body = self.session_lines();
        for (index, media) in offer.media.iter().enumerate() {
            if index == chosen_index {
                self.write_audio_section(
                    &mut body,
                    &media.proto,
                    negotiated.codec,
                    negotiated.payload_type,
                    negotiated.telephone_event,
                    negotiated.direction,
                );
            } else {
                // Rejected stream: port 0, formats echoed (RFC 3264 §6).
                let _ = write!(
                    body,
                    "m={} 0 {} {}\r\n",
                    media.kind,
                    media.proto,
                    media.formats.join(" ")
                );
            }
        }
        Ok((self.finish(body), negotiated))
    }

    /// Makes an offer for a late-offer INVITE (no SDP in the INVITE): PCMU, PCMA and
    /// telephone-event, sendrecv. Send it in the 200 OK; the answer comes in the ACK.
    pub fn offer(&mut self) -> Answer {
        let mut body = self.session_lines();
        let _ = write!(
            body,
            "m=audio {port} RTP/AVP 0 8 {te}\r\n\
             a=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:8 PCMA/8000\r\n\
             a=rtpmap:{te} telephone-event/8000\r\n\
             a=fmtp:{te} {events}\r\n\
             a=ptime:{ptime}\r\n\
             a=sendrecv\r\n",
            port = self.rtp_port,
            te = OFFER_TELEPHONE_EVENT_PT,
            events = TELEPHONE_EVENTS,
            ptime = PTIME_MS,
        );
        self.finish(body)
    }

    /// Reads the answer to our [`SdpSession::offer`] (from the ACK).
    pub fn accept_answer(&self, answer: &str) -> Result<NegotiatedMedia, MediaError> {
        let answer = SessionDescription::parse(answer)?;
        let media = answer
            .media
            .iter()
            .find(|m| m.kind.eq_ignore_ascii_case("audio"))
            .ok_or_else(|| MediaError::bad_sdp(0, "answer has no audio stream"))?;
        let not_common = || MediaError::NoCommonCodec {
            offered: media.formats.clone(),
        };
        if media.port == 0 {
            return Err(not_common());
        }
        // The answerer lists the codecs it accepted from our offer, preferred first.
        let (codec, payload_type) = media
            .payload_types()
            .find_map(|pt| media.codec_of(pt).map(|c| (c, pt)))
            .ok_or_else(not_common)?;
        let address = answer
            .connection_for(media)
            .ok_or_else(|| MediaError::bad_sdp(0, "answer has no c= line"))?;
        let answered = answer.direction_for(media);
        let null_address = address.is_unspecified();
        let mut ours = answered.reversed();
        if null_address && ours.sends() {
            ours = if ours.receives() {
                Direction::RecvOnly
            } else {
                Direction::Inactive
            };
        }
        Ok(NegotiatedMedia {
            codec,
            payload_type,
            telephone_event: media.telephone_event(),
            remote_rtp: (!null_address).then(|| SocketAddr::new(address, media.port)),
            direction: ours,
            remote_ptime_ms: media.ptime,
        })
    }

    fn session_lines(&self) -> String {
        let family = if self.local_ip.is_ipv4() {
            "IP4"
        } else {
            "IP6"
        };
        format!(
            "s={SESSION_NAME}\r\nc=IN {family} {}\r\nt=0 0\r\n",
            self.local_ip
        )
    }

    fn write_audio_section(
        &self,
        body: &mut String,
        proto: &str,
        codec: Codec,
        payload_type: u8,
        telephone_event: Option<u8>,
        direction: Direction,
    ) {
        let _ = write!(body, "m=audio {} {proto} {payload_type}", self.rtp_port);
        if let Some(te) = telephone_event {
            let _ = write!(body, " {te}");
        }
        body.push_str("\r\n");
        let _ = write!(
            body,
            "a=rtpmap:{payload_type} {}/8000\r\n",
            codec.encoding_name()
        );
        if let Some(te) = telephone_event {
            let _ = write!(
                body,
                "a=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} {TELEPHONE_EVENTS}\r\n"
            );
        }
        let _ = write!(
            body,
            "a=ptime:{PTIME_MS}\r\na={}\r\n",
            direction.attribute()
        );
    }

    /// Prepends `v=` and `o=`, bumping the version when the body differs from the last one.
    fn finish(&mut self, body: String) -> Answer {
        if self.last_body.as_deref().is_some_and(|last| last != body) {
            self.version += 1;
        }
        let family = if self.local_ip.is_ipv4() {
            "IP4"
        } else {
            "IP6"
        };
        let sdp = format!(
            "v=0\r\no=switchboard {} {} IN {family} {}\r\n{body}",
            self.session_id, self.version, self.local_ip
        );
        self.last_body = Some(body);
        Answer { sdp }
    }
}

/// One-shot convenience for an initial offer: a fresh [`SdpSession`] answers it.
/// Keep an [`SdpSession`] instead when the call may see re-INVITEs.
pub fn negotiate(
    offer: &str,
    local_ip: IpAddr,
    rtp_port: u16,
) -> Result<(Answer, NegotiatedMedia), MediaError> {
    SdpSession::new(local_ip, rtp_port).answer(offer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5));

    fn carrier_offer(formats: &str, extra: &str) -> String {
        format!(
            "v=0\r\no=carrier 123 456 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n\
             m=audio 40000 RTP/AVP {formats}\r\n{extra}"
        )
    }

    fn lines(sdp: &Answer) -> Vec<&str> {
        sdp.as_str()
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .collect()
    }

    #[test]
    fn pcmu_offer_with_telephone_event_is_answered_in_kind() {
        let offer = carrier_offer(
            "0 8 96",
            "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:96 telephone-event/8000\r\n\
             a=fmtp:96 0-15\r\na=ptime:20\r\na=sendrecv\r\n",
        );
        let (answer, media) = negotiate(&offer, LOCAL, 30000).unwrap();
        assert_eq!(media.codec, Codec::Pcmu);
        assert_eq!(media.payload_type, 0);
        assert_eq!(media.telephone_event, Some(96));
        assert_eq!(
            media.remote_rtp,
            Some("198.51.100.7:40000".parse().unwrap())
        );
        assert_eq!(media.direction, Direction::SendRecv);
        assert!(!media.on_hold());
        let l = lines(&answer);
        assert_eq!(l[0], "v=0");
        assert!(l[1].starts_with("o=switchboard ") && l[1].ends_with(" IN IP4 203.0.113.5"));
        assert!(l.contains(&"c=IN IP4 203.0.113.5"));
        assert!(l.contains(&"m=audio 30000 RTP/AVP 0 96"));
        assert!(l.contains(&"a=rtpmap:0 PCMU/8000"));
        assert!(l.contains(&"a=rtpmap:96 telephone-event/8000"));
        assert!(l.contains(&"a=ptime:20"));
        assert!(l.contains(&"a=sendrecv"));
        // The answer is itself valid SDP.
        let reparsed = SessionDescription::parse(answer.as_str()).unwrap();
        assert_eq!(reparsed.media.len(), 1);
    }

    #[test]
    fn pcma_only_offer_and_static_types_without_rtpmap() {
        let (answer, media) = negotiate(
            &carrier_offer("8 101", "a=rtpmap:101 telephone-event/8000\r\n"),
            LOCAL,
            30002,
        )
        .unwrap();
        assert_eq!(media.codec, Codec::Pcma);
        assert_eq!(media.payload_type, 8);
        assert!(answer.as_str().contains("m=audio 30002 RTP/AVP 8 101\r\n"));
        assert!(answer.as_str().contains("a=rtpmap:8 PCMA/8000\r\n"));
    }

    #[test]
    fn dynamic_payload_type_for_pcmu_is_kept() {
        let (answer, media) = negotiate(
            &carrier_offer("18 112", "a=rtpmap:112 pcmu/8000\r\n"),
            LOCAL,
            30000,
        )
        .unwrap();
        assert_eq!((media.codec, media.payload_type), (Codec::Pcmu, 112));
        assert_eq!(media.telephone_event, None);
        assert!(answer.as_str().contains("m=audio 30000 RTP/AVP 112\r\n"));
    }

    #[test]
    fn no_common_codec_is_488() {
        let err = negotiate(
            &carrier_offer("18 9", "a=rtpmap:9 G722/8000\r\n"),
            LOCAL,
            30000,
        )
        .unwrap_err();
        assert!(matches!(err, MediaError::NoCommonCodec { .. }), "{err}");
        assert_eq!(err.sip_status(), 488);
        // SRTP-only is not plain RTP either.
        let srtp = carrier_offer("0", "").replace("RTP/AVP", "RTP/SAVP");
        assert_eq!(
            negotiate(&srtp, LOCAL, 30000).unwrap_err().sip_status(),
            488
        );
    }

    #[test]
    fn garbage_is_400() {
        for bad in [
            "",
            "hello",
            "o=x 1 1 IN IP4 1.2.3.4\r\nv=0\r\n",
            "v=1\r\n",
            "v=0\r\nc=IN IP4 not-an-ip\r\n",
            "v=0\r\nc=IN IP6 1.2.3.4\r\n",
            "v=0\r\nm=audio seventy RTP/AVP 0\r\n",
            "v=0\r\nm=audio 4000 RTP/AVP\r\n",
            "v=0\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU\r\n",
            "v=0\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:300 PCMU/8000\r\n",
        ] {
            let err = negotiate(bad, LOCAL, 30000).unwrap_err();
            assert_eq!(err.sip_status(), 400, "{bad:?}: {err}");
        }
        // Audio without any c= line.
        let no_c = "v=0\r\no=a 1 1 IN IP4 1.1.1.1\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
        assert_eq!(negotiate(no_c, LOCAL, 30000).unwrap_err().sip_status(), 400);
    }

    #[test]
    fn ipv6_and_media_level_connection() {
        let offer = "v=0\r\no=- 1 1 IN IP6 2001:db8::1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
                     m=audio 5004 RTP/AVP 0\r\nc=IN IP6 2001:db8::9\r\n";
        let local6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x5));
        let (answer, media) = negotiate(offer, local6, 30000).unwrap();
        assert_eq!(
            media.remote_rtp,
            Some("[2001:db8::9]:5004".parse().unwrap())
        );
        assert!(answer.as_str().contains("c=IN IP6 2001:db8::5\r\n"));
        assert!(answer.as_str().contains(" IN IP6 2001:db8::5\r\n"));
    }

    #[test]
    fn extra_streams_are_rejected_with_port_zero_in_order() {
        let offer = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
                     m=video 6000 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n\
                     m=audio 5004 RTP/AVP 8\r\n\
                     m=audio 5006 RTP/AVP 0\r\n";
        let (answer, media) = negotiate(offer, LOCAL, 30000).unwrap();
        assert_eq!(media.remote_rtp, Some("192.0.2.1:5004".parse().unwrap()));
        let m_lines: Vec<&str> = lines(&answer)
            .into_iter()
            .filter(|l| l.starts_with("m="))
            .collect();
        assert_eq!(
            m_lines,
            [
                "m=video 0 RTP/AVP 96",
                "m=audio 30000 RTP/AVP 8",
                "m=audio 0 RTP/AVP 0"
            ]
        );
    }

    #[test]
    fn hold_offers_are_answered_recvonly_or_inactive() {
        let mut session = SdpSession::new(LOCAL, 30000);
        let (first, media) = session
            .answer(&carrier_offer("0", "a=sendrecv\r\n"))
            .unwrap();
        assert!(!media.on_hold());

        let (held, media) = session
            .answer(&carrier_offer("0", "a=sendonly\r\n"))
            .unwrap();
        assert_eq!(media.direction, Direction::RecvOnly);
        assert!(media.on_hold());
        assert!(held.as_str().contains("a=recvonly\r\n"));

        let (inactive, media) = session
            .answer(&carrier_offer("0", "a=inactive\r\n"))
            .unwrap();
        assert_eq!(media.direction, Direction::Inactive);
        assert!(inactive.as_str().contains("a=inactive\r\n"));

        let old_style = carrier_offer("0", "").replace("c=IN IP4 198.51.100.7", "c=IN IP4 0.0.0.0");
        let (answer, media) = session.answer(&old_style).unwrap();
        assert_eq!(media.remote_rtp, None);
        assert_eq!(media.direction, Direction::RecvOnly);
        assert!(media.on_hold());
        assert!(answer.as_str().contains("a=recvonly\r\n"));

        // Session-level direction applies when the media section has none.
        let session_level = carrier_offer("0", "").replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n");
        assert_eq!(
            session.answer(&session_level).unwrap().1.direction,
            Direction::RecvOnly
        );

        // Resume: back to sendrecv, same session id, version moved on.
        let (resumed, media) = session
            .answer(&carrier_offer("0", "a=sendrecv\r\n"))
            .unwrap();
        assert!(!media.on_hold());
        let origin = |a: &Answer| {
            SessionDescription::parse(a.as_str())
                .unwrap()
                .origin
                .unwrap()
        };
        assert_eq!(origin(&first).session_id, origin(&resumed).session_id);
        let v = |a: &Answer| origin(a).session_version.parse::<u64>().unwrap();
        assert!(v(&held) > v(&first));
        assert!(v(&resumed) > v(&inactive));
    }

    #[test]
    fn unchanged_refresh_keeps_the_version() {
        let mut session = SdpSession::new(LOCAL, 30000);
        let offer = carrier_offer("0", "");
        let (a, _) = session.answer(&offer).unwrap();
        let (b, _) = session.answer(&offer).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn late_offer_and_its_answer() {
        let mut session = SdpSession::new(LOCAL, 31000);
        let offer = session.offer();
        let parsed = SessionDescription::parse(offer.as_str()).unwrap();
        let m = &parsed.media[0];
        assert_eq!((m.port, m.proto.as_str()), (31000, "RTP/AVP"));
        assert_eq!(m.formats, ["0", "8", "101"]);
        assert_eq!(m.ptime, Some(20));

        let answer = "v=0\r\no=carrier 9 9 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n\
                      m=audio 41000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n";
        let media = session.accept_answer(answer).unwrap();
        assert_eq!(
            (media.codec, media.payload_type, media.telephone_event),
            (Codec::Pcma, 8, Some(101))
        );
        assert_eq!(
            media.remote_rtp,
            Some("198.51.100.7:41000".parse().unwrap())
        );
        assert_eq!(media.direction, Direction::SendRecv);

        let refused = answer.replace("m=audio 41000", "m=audio 0");
        assert_eq!(
            session.accept_answer(&refused).unwrap_err().sip_status(),
            488
        );
        let recvonly = format!("{answer}a=recvonly\r\n");
        assert_eq!(
            session.accept_answer(&recvonly).unwrap().direction,
            Direction::SendOnly
        );
    }

    #[test]
    fn lf_only_and_unknown_lines_are_tolerated() {
        let offer = "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\nb=AS:64\n\
                     m=audio 5004 RTP/AVP 0\na=rtcp:5005\na=silenceSupp:off - - - -\nx=unknown\n";
        assert_eq!(negotiate(offer, LOCAL, 30000).unwrap().1.codec, Codec::Pcmu);
    }
}
