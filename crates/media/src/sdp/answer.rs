//! Our side of the offer/answer exchange: [`SdpSession`].

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use super::crypto::{self, CryptoSuite, MediaEncryption, SrtpKey, SrtpParams};
use super::parse::{MediaDescription, Profile};
use super::{
    Answer, Codec, CodecPreference, Direction, NegotiatedMedia, SessionDescription,
    OFFER_TELEPHONE_EVENT_PT, PTIME_MS, SESSION_NAME, TELEPHONE_EVENTS,
};
use crate::MediaError;

/// The tag of the one `a=crypto` line in our own (late) offer.
const OFFER_CRYPTO_TAG: u32 = 1;
/// The suite our own offer proposes: the one every SDES implementation has.
const OFFER_CRYPTO_SUITE: CryptoSuite = CryptoSuite::AesCm128HmacSha1_80;

/// Our side of one call's SDP exchanges. Create one per call when the RTP port is allocated
/// and keep it for re-INVITEs, so `o=` keeps its session id and version rules (RFC 3264 §8)
/// and our SRTP key stays the same while the suite does.
#[derive(Debug, Clone)]
pub struct SdpSession {
    local_ip: IpAddr,
    rtp_port: u16,
    session_id: u64,
    version: u64,
    /// Body (after the `o=` line) of the last SDP we sent: the version changes only with it.
    last_body: Option<String>,
    encryption: MediaEncryption,
    /// Which codec we pick from an offer with several, and the order of our own offer.
    preference: CodecPreference,
    /// Our SRTP master key and the suite it was made for, once we sent one.
    local_key: Option<(CryptoSuite, SrtpKey)>,
    /// Our late offer was `RTP/SAVP` (the answer must key it).
    offered_srtp: bool,
}

/// Why an audio stream of an offer was passed over; the first one explains a 488.
enum Skipped {
    Policy(&'static str),
    Suites(Vec<String>),
}

impl SdpSession {
    /// `local_ip` is the address we advertise (the configured public media address);
    /// `rtp_port` the allocated even RTP port. Encryption policy: [`MediaEncryption::Allow`]
    /// until [`SdpSession::with_encryption`] says otherwise.
    pub fn new(local_ip: IpAddr, rtp_port: u16) -> SdpSession {
        // NTP-style random session id (RFC 4566 suggests an NTP timestamp; any unique value works).
        let session_id = rand::random::<u32>() as u64 + 1;
        SdpSession {
            local_ip,
            rtp_port,
            session_id,
            version: session_id,
            last_body: None,
            encryption: MediaEncryption::default(),
            preference: CodecPreference::default(),
            local_key: None,
            offered_srtp: false,
        }
    }

    /// The connection's `media_encryption`: which offers we answer and what we offer.
    pub fn with_encryption(mut self, encryption: MediaEncryption) -> SdpSession {
        self.encryption = encryption;
        self
    }

    /// The codec order the agent's dialect wants ([`CodecPreference::Narrowband`] until told).
    pub fn with_preference(mut self, preference: CodecPreference) -> SdpSession {
        self.preference = preference;
        self
    }

    /// The address and port we advertise.
    pub fn local_rtp(&self) -> SocketAddr {
        SocketAddr::new(self.local_ip, self.rtp_port)
    }

    /// Our key for `suite`: the one already sent if the suite is unchanged (a refresh keeps
    /// the body identical), else a fresh one.
    fn local_key_for(&mut self, suite: CryptoSuite) -> SrtpKey {
        match &self.local_key {
            Some((s, key)) if *s == suite => key.clone(),
            _ => {
                let key = SrtpKey::random();
                self.local_key = Some((suite, key.clone()));
                key
            }
        }
    }

    /// The SRTP parameters for answering `media`, or why it cannot be taken under the policy.
    /// `Ok(None)`: a plain stream we may take.
    fn protection_for(
        &mut self,
        media: &MediaDescription,
        profile: Profile,
    ) -> Result<Option<SrtpParams>, Skipped> {
        match profile {
            Profile::Plain if self.encryption.allows_plain() => Ok(None),
            Profile::Plain => Err(Skipped::Policy(
                "this connection requires SRTP (RTP/SAVP with a=crypto); the offer is plain RTP",
            )),
            Profile::Sdes if !self.encryption.allows_srtp() => Err(Skipped::Policy(
                "this connection takes plain RTP only (media_encryption = disable); the offer is RTP/SAVP",
            )),
            Profile::Sdes => {
                let Some((tag, suite, remote)) = media
                    .crypto
                    .iter()
                    .find_map(|c| c.usable.clone().map(|(s, k)| (c.tag, s, k)))
                else {
                    return Err(Skipped::Suites(
                        media.crypto.iter().map(|c| c.suite_name.clone()).collect(),
                    ));
                };
                Ok(Some(SrtpParams {
                    suite,
                    tag,
                    remote,
                    local: self.local_key_for(suite),
                }))
            }
            Profile::Other => Err(Skipped::Policy(
                "only RTP/AVP and RTP/SAVP with SDES keys are supported (no DTLS-SRTP)",
            )),
        }
    }

    /// Answers an offer (initial INVITE or re-INVITE). Errors: [`MediaError::BadSdp`] (400),
    /// [`MediaError::NoCommonCodec`], [`MediaError::NoCryptoSuite`] and
    /// [`MediaError::EncryptionPolicy`] (488).
    pub fn answer(&mut self, offer: &str) -> Result<(Answer, NegotiatedMedia), MediaError> {
        let offer = SessionDescription::parse(offer)?;
        let mut chosen: Option<(usize, NegotiatedMedia)> = None;
        let mut skipped: Option<Skipped> = None;
        for (index, media) in offer.media.iter().enumerate() {
            if chosen.is_some() || media.port == 0 {
                continue;
            }
            let Some(profile) = media.audio_profile() else {
                continue;
            };
            // The first codec of our preference order that the offer carries, with the
            // offerer's payload type for it.
            let Some((codec, payload_type)) =
                self.preference.order().into_iter().find_map(|want| {
                    media
                        .payload_types()
                        .find(|pt| media.codec_of(*pt) == Some(want))
                        .map(|pt| (want, pt))
                })
            else {
                continue;
            };
            let srtp = match self.protection_for(media, profile) {
                Ok(srtp) => srtp,
                Err(why) => {
                    skipped.get_or_insert(why);
                    continue;
                }
            };
            let address = offer.connection_for(media).ok_or_else(|| {
                MediaError::bad_sdp(0, "audio stream has no c= line at session or media level")
            })?;
            let theirs = offer.direction_for(media);
            let negotiated = negotiated(media, address, theirs, (codec, payload_type), srtp);
            chosen = Some((index, negotiated));
        }
        let Some((chosen_index, negotiated)) = chosen else {
            return Err(match skipped {
                Some(Skipped::Policy(reason)) => MediaError::EncryptionPolicy { reason },
                Some(Skipped::Suites(offered)) => MediaError::NoCryptoSuite {
                    offered,
                    supported: CryptoSuite::supported_names(),
                },
                None => MediaError::NoCommonCodec {
                    offered: offer
                        .media
                        .iter()
                        .flat_map(|m| m.formats.iter().cloned())
                        .collect(),
                },
            });
        };

        let mut body = self.session_lines();
        for (index, media) in offer.media.iter().enumerate() {
            if index == chosen_index {
                self.write_audio_section(&mut body, &media.proto, &negotiated);
                if let Some(srtp) = &negotiated.srtp {
                    body.push_str(&crypto::answer_line(srtp));
                }
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

    /// Makes an offer for a late-offer INVITE (no SDP in the INVITE): PCMU, PCMA and G.722 in
    /// [`CodecPreference`] order, and telephone-event, sendrecv; `RTP/SAVP` with our key when
    /// the policy requires SRTP. Send it in the 200 OK; the answer comes in the ACK.
    pub fn offer(&mut self) -> Answer {
        let mut body = self.session_lines();
        self.offered_srtp = self.encryption == MediaEncryption::Require;
        let proto = if self.offered_srtp {
            "RTP/SAVP"
        } else {
            "RTP/AVP"
        };
        let order = self.preference.order();
        let _ = write!(body, "m=audio {} {proto}", self.rtp_port);
        for codec in order {
            let _ = write!(body, " {}", codec.static_payload_type());
        }
        let _ = write!(body, " {OFFER_TELEPHONE_EVENT_PT}\r\n");
        for codec in order {
            let _ = write!(
                body,
                "a=rtpmap:{} {}/8000\r\n",
                codec.static_payload_type(),
                codec.encoding_name()
            );
        }
        let _ = write!(
            body,
            "a=rtpmap:{te} telephone-event/8000\r\n\
             a=fmtp:{te} {events}\r\n\
             a=ptime:{ptime}\r\n\
             a=sendrecv\r\n",
            te = OFFER_TELEPHONE_EVENT_PT,
            events = TELEPHONE_EVENTS,
            ptime = PTIME_MS,
        );
        if self.offered_srtp {
            let local = self.local_key_for(OFFER_CRYPTO_SUITE);
            let _ = write!(
                body,
                "a=crypto:{OFFER_CRYPTO_TAG} {} inline:{}\r\n",
                OFFER_CRYPTO_SUITE.name(),
                local.to_base64()
            );
        }
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
        let srtp = self.answered_keys(media)?;
        // The answerer lists the codecs it accepted from our offer, preferred first.
        let (codec, payload_type) = media
            .payload_types()
            .find_map(|pt| media.codec_of(pt).map(|c| (c, pt)))
            .ok_or_else(not_common)?;
        let address = answer
            .connection_for(media)
            .ok_or_else(|| MediaError::bad_sdp(0, "answer has no c= line"))?;
        let theirs = answer.direction_for(media);
        Ok(negotiated(
            media,
            address,
            theirs,
            (codec, payload_type),
            srtp,
        ))
    }

    /// The far end's key from its answer to our `RTP/SAVP` offer: the line with our tag and
    /// suite (RFC 4568 §7.1.2). A plain offer takes a plain answer.
    fn answered_keys(&self, media: &MediaDescription) -> Result<Option<SrtpParams>, MediaError> {
        let (true, Some((suite, local))) = (self.offered_srtp, self.local_key.clone()) else {
            return Ok(None);
        };
        let remote = media
            .crypto
            .iter()
            .filter(|c| c.tag == OFFER_CRYPTO_TAG)
            .find_map(|c| c.usable.clone().filter(|(s, _)| *s == suite))
            .map(|(_, key)| key)
            .ok_or(MediaError::EncryptionPolicy {
                reason: "the answer to our RTP/SAVP offer has no usable a=crypto for it",
            })?;
        Ok(Some(SrtpParams {
            suite,
            tag: OFFER_CRYPTO_TAG,
            remote,
            local,
        }))
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

    fn write_audio_section(&self, body: &mut String, proto: &str, media: &NegotiatedMedia) {
        let payload_type = media.payload_type;
        let _ = write!(body, "m=audio {} {proto} {payload_type}", self.rtp_port);
        if let Some(te) = media.telephone_event {
            let _ = write!(body, " {te}");
        }
        body.push_str("\r\n");
        let _ = write!(
            body,
            "a=rtpmap:{payload_type} {}/8000\r\n",
            media.codec.encoding_name()
        );
        if let Some(te) = media.telephone_event {
            let _ = write!(
                body,
                "a=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} {TELEPHONE_EVENTS}\r\n"
            );
        }
        let _ = write!(
            body,
            "a=ptime:{PTIME_MS}\r\na={}\r\n",
            media.direction.attribute()
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

/// Our direction given theirs (RFC 3264 §6.1). A null address (`c=0.0.0.0`, RFC 2543-style
/// hold) means the far end does not want our media: we may only receive.
/// What the call uses from the agreed audio stream, for answers we give and answers we read
/// alike. A null connection address (hold) leaves the remote RTP address unknown.
fn negotiated(
    media: &MediaDescription,
    address: IpAddr,
    theirs: Direction,
    (codec, payload_type): (Codec, u8),
    srtp: Option<SrtpParams>,
) -> NegotiatedMedia {
    let null_address = address.is_unspecified();
    NegotiatedMedia {
        codec,
        payload_type,
        telephone_event: media.telephone_event(),
        remote_rtp: (!null_address).then(|| SocketAddr::new(address, media.port)),
        direction: our_direction(theirs, null_address),
        remote_ptime_ms: media.ptime,
        srtp,
    }
}

fn our_direction(theirs: Direction, null_address: bool) -> Direction {
    let ours = theirs.reversed();
    match (null_address, ours.sends(), ours.receives()) {
        (true, true, true) => Direction::RecvOnly,
        (true, true, false) => Direction::Inactive,
        _ => ours,
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
