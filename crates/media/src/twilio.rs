//! The Twilio Media Streams WebSocket dialect, byte for byte.
//!
//! Switchboard plays Twilio's part: it opens the WebSocket to the agent runtime and sends
//! `connected`, `start`, then `media` / `dtmf` / `mark` / `stop`; the agent sends `media`,
//! `mark` and `clear` back. Field order and string-typed counters follow what Twilio sends
//! (docs: twilio.com/docs/voice/media-streams/websocket-messages), so agent frameworks that
//! parse Twilio (Pipecat's `parse_telephony_websocket` and `TwilioFrameSerializer`, Vocode,
//! Ultravox, OpenAI Agents) work unchanged.

use std::borrow::Cow;
use std::fmt::Write as _;

use base64::Engine as _;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use crate::transcode::AgentDialect;
use crate::MediaError;

/// Protocol name and version Twilio announces in `connected`.
const PROTOCOL: &str = "Call";
const PROTOCOL_VERSION: &str = "1.0.0";
/// Twilio's name for the caller's audio in `start.tracks` and `media.track`.
const INBOUND_TRACK: &str = "inbound";
/// Twilio's name for the caller's track in `dtmf.track` (differs from `media.track`).
const DTMF_TRACK: &str = "inbound_track";

/// A Twilio-style SID: two-letter prefix + 32 lowercase hex digits (128 random bits).
pub fn new_sid(prefix: &str) -> String {
    let value: u128 = rand::random();
    format!("{prefix}{value:032x}")
}

/// The identifiers of one stream, as the agent sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamIds {
    /// `AC…`: the gateway's account (what the agent puts in REST hang-up URLs).
    pub account_sid: String,
    /// `CA…`: identifies the call (REST `Calls/{CallSid}.json`).
    pub call_sid: String,
    /// `MZ…`: identifies this media stream.
    pub stream_sid: String,
}

impl StreamIds {
    /// Fresh call and stream SIDs for a call under `account_sid`.
    pub fn generate(account_sid: impl Into<String>) -> StreamIds {
        StreamIds {
            account_sid: account_sid.into(),
            call_sid: new_sid("CA"),
            stream_sid: new_sid("MZ"),
        }
    }
}

/// The keys [`CustomParameters::for_call`] may set. Keys chosen by users (cohort variables,
/// SIP headers mapped by a connection) never replace them, even when the call lacks one
/// (a header cannot pose as `split_variant`).
pub const RESERVED_PARAMETERS: [&str; 9] = [
    "from_number",
    "to_number",
    "deployment_id",
    "app_id",
    "app_version",
    "split_variant",
    "user_identifier",
    "app_variables",
    "app_overrides",
];

/// `start.customParameters`: a flat string → string map, serialised in insertion order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomParameters {
    entries: Vec<(String, String)>,
}

impl CustomParameters {
    pub fn new() -> CustomParameters {
        CustomParameters::default()
    }

    /// Sets `key` (replacing an earlier value, keeping its position).
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let key = key.into();
        let value = value.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    /// Sets `key` only if it is not there yet (reserved keys win over user-supplied ones).
    pub fn insert_if_absent(&mut self, key: &str, value: &str) {
        if self.get(key).is_none() {
            self.entries.push((key.to_owned(), value.to_owned()));
        }
    }

    /// Sets a user-chosen `key` unless it is reserved ([`RESERVED_PARAMETERS`]) or already
    /// set; returns whether it was added.
    pub fn insert_user(&mut self, key: &str, value: &str) -> bool {
        if RESERVED_PARAMETERS.contains(&key) || self.get(key).is_some() {
            return false;
        }
        self.entries.push((key.to_owned(), value.to_owned()));
        true
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The standard parameters of a routed call (see [`CallInfo`]).
    pub fn for_call(info: &CallInfo<'_>) -> CustomParameters {
        let mut params = CustomParameters::new();
        // `from_number` / `to_number` are the keys Pipecat promotes to CallData.from/to.
        params.insert("from_number", info.from_number);
        params.insert("to_number", info.to_number);
        params.insert("deployment_id", info.deployment_id);
        params.insert("app_id", info.app_id);
        params.insert("app_version", info.app_version.to_string());
        if let Some(variant) = info.split_variant {
            params.insert("split_variant", variant);
        }
        if let Some(user) = info.user_identifier {
            params.insert("user_identifier", user);
        }
        // Each key flat (for agents that read single parameters), never shadowing the
        // reserved keys above, then each group whole as one JSON object string.
        for (key, value) in info.app_variables {
            params.insert_if_absent(key, value);
        }
        for (key, value) in info.app_overrides {
            params.insert_if_absent(key, value);
        }
        params.insert("app_variables", json_object(info.app_variables));
        params.insert("app_overrides", json_object(info.app_overrides));
        params
    }
}

fn json_object(pairs: &[(String, String)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = pairs
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::Value::Object(map).to_string()
}

impl Serialize for CustomParameters {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (k, v) in &self.entries {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// What the gateway knows about a routed call, for [`CustomParameters::for_call`].
#[derive(Debug, Clone, Copy)]
pub struct CallInfo<'a> {
    /// Caller, E.164 (`+91…`), or empty when withheld.
    pub from_number: &'a str,
    /// Called number, E.164.
    pub to_number: &'a str,
    pub deployment_id: &'a str,
    pub app_id: &'a str,
    pub app_version: u32,
    /// The traffic-split branch that chose `app_version`, when a split applied.
    pub split_variant: Option<&'a str>,
    /// The cohort member's `user_identifier`, when the caller is in a cohort.
    pub user_identifier: Option<&'a str>,
    /// The cohort member's `app_variables`.
    pub app_variables: &'a [(String, String)],
    /// The cohort member's `app_overrides` that are set (e.g. `initial_bot_message`).
    pub app_overrides: &'a [(String, String)],
}

#[derive(Serialize)]
struct Connected {
    event: &'static str,
    protocol: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Start<'a> {
    event: &'static str,
    sequence_number: String,
    start: StartBody<'a>,
    stream_sid: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StartBody<'a> {
    account_sid: &'a str,
    stream_sid: &'a str,
    call_sid: &'a str,
    tracks: [&'static str; 1],
    custom_parameters: &'a CustomParameters,
    media_format: MediaFormat,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MediaFormat {
    encoding: &'static str,
    sample_rate: u32,
    channels: u8,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Dtmf<'a> {
    event: &'static str,
    stream_sid: &'a str,
    sequence_number: String,
    dtmf: DtmfBody,
}

#[derive(Serialize)]
struct DtmfBody {
    track: &'static str,
    digit: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Mark<'a> {
    event: &'static str,
    sequence_number: String,
    stream_sid: &'a str,
    mark: MarkBody<'a>,
}

#[derive(Serialize)]
struct MarkBody<'a> {
    name: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Stop<'a> {
    event: &'static str,
    sequence_number: String,
    stream_sid: &'a str,
    stop: StopBody<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StopBody<'a> {
    account_sid: &'a str,
    call_sid: &'a str,
}

/// Where a transfer stands, as the agent's `transfer` event and the `call.transfer` event
/// name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransferStatus {
    /// The carrier accepted the REFER and the target is being called (sipfrag 1xx).
    Ringing,
    /// The target answered (sipfrag 2xx): the caller is theirs, the agent's stream ends.
    Completed,
    /// Refused, failed or timed out: the caller stays with the agent.
    Failed,
}

impl TransferStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TransferStatus::Ringing => "ringing",
            TransferStatus::Completed => "completed",
            TransferStatus::Failed => "failed",
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Transfer<'a> {
    event: &'static str,
    sequence_number: String,
    stream_sid: &'a str,
    transfer: TransferBody,
}

#[derive(Serialize)]
struct TransferBody {
    status: &'static str,
    sip_status: u16,
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Serialising these plain structs of strings and integers cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

/// Writes the messages switchboard sends to the agent, keeping Twilio's counters:
/// `sequenceNumber` counts every message after `connected` (start = "1"), `chunk` counts
/// `media` messages from "1".
#[derive(Debug, Clone)]
pub struct Outbound {
    ids: StreamIds,
    /// `streamSid` as a JSON string literal, escaped once for the hand-written media path.
    stream_sid_json: String,
    sequence: u64,
    chunk: u64,
    /// What `start.mediaFormat` announces and `media` payloads carry.
    dialect: AgentDialect,
}

impl Outbound {
    pub fn new(ids: StreamIds) -> Outbound {
        let stream_sid_json = serde_json::Value::from(ids.stream_sid.as_str()).to_string();
        Outbound {
            ids,
            stream_sid_json,
            sequence: 0,
            chunk: 0,
            dialect: AgentDialect::Twilio,
        }
    }

    /// Speak `dialect` (µ-law 8 kHz unless told): set before [`Outbound::start`].
    pub fn with_dialect(mut self, dialect: AgentDialect) -> Outbound {
        self.dialect = dialect;
        self
    }

    pub fn dialect(&self) -> AgentDialect {
        self.dialect
    }

    pub fn ids(&self) -> &StreamIds {
        &self.ids
    }

    fn next_sequence(&mut self) -> u64 {
        self.sequence += 1;
        self.sequence
    }

    /// `{"event":"connected","protocol":"Call","version":"1.0.0"}` — the first message.
    pub fn connected(&self) -> String {
        to_json(&Connected {
            event: "connected",
            protocol: PROTOCOL,
            version: PROTOCOL_VERSION,
        })
    }

    /// The `start` message (second message, `sequenceNumber` "1").
    pub fn start(&mut self, params: &CustomParameters) -> String {
        let sequence_number = self.next_sequence().to_string();
        to_json(&Start {
            event: "start",
            sequence_number,
            start: StartBody {
                account_sid: &self.ids.account_sid,
                stream_sid: &self.ids.stream_sid,
                call_sid: &self.ids.call_sid,
                tracks: [INBOUND_TRACK],
                custom_parameters: params,
                media_format: MediaFormat {
                    encoding: self.dialect.encoding(),
                    sample_rate: self.dialect.sample_rate(),
                    channels: 1,
                },
            },
            stream_sid: &self.ids.stream_sid,
        })
    }

    /// One `media` message with caller audio (µ-law, or L16 in that dialect); `timestamp_ms` is the
    /// presentation time since the stream started. Hand-written: this is the hot path.
    pub fn media(&mut self, timestamp_ms: u64, ulaw: &[u8]) -> String {
        let sequence = self.next_sequence();
        self.chunk += 1;
        let mut out =
            String::with_capacity(160 + self.stream_sid_json.len() + ulaw.len().div_ceil(3) * 4);
        let _ = write!(
            out,
            "{{\"event\":\"media\",\"sequenceNumber\":\"{sequence}\",\"media\":{{\"track\":\"{INBOUND_TRACK}\",\
             \"chunk\":\"{}\",\"timestamp\":\"{timestamp_ms}\",\"payload\":\"",
            self.chunk
        );
        base64::engine::general_purpose::STANDARD.encode_string(ulaw, &mut out);
        out.push_str("\"},\"streamSid\":");
        out.push_str(&self.stream_sid_json);
        out.push('}');
        out
    }

    /// A `dtmf` message for one digit (`0-9`, `*`, `#`, `A-D`).
    pub fn dtmf(&mut self, digit: char) -> String {
        let sequence_number = self.next_sequence().to_string();
        to_json(&Dtmf {
            event: "dtmf",
            stream_sid: &self.ids.stream_sid,
            sequence_number,
            dtmf: DtmfBody {
                track: DTMF_TRACK,
                digit: digit.to_string(),
            },
        })
    }

    /// Echoes a `mark` once the audio queued before it has been played to the caller.
    pub fn mark(&mut self, name: &str) -> String {
        let sequence_number = self.next_sequence().to_string();
        to_json(&Mark {
            event: "mark",
            sequence_number,
            stream_sid: &self.ids.stream_sid,
            mark: MarkBody { name },
        })
    }

    /// A `transfer` message: how the transfer the agent asked for (REST call update with
    /// `<Dial>`/`<Refer>`) is going. Not a Twilio message: agents that do not know it ignore it
    /// as they ignore any unknown event; it carries `sequenceNumber` like every other one.
    pub fn transfer(&mut self, status: TransferStatus, sip_status: u16) -> String {
        let sequence_number = self.next_sequence().to_string();
        to_json(&Transfer {
            event: "transfer",
            sequence_number,
            stream_sid: &self.ids.stream_sid,
            transfer: TransferBody {
                status: status.as_str(),
                sip_status,
            },
        })
    }

    /// The last message of a stream: the caller hung up.
    pub fn stop(&mut self) -> String {
        let sequence_number = self.next_sequence().to_string();
        to_json(&Stop {
            event: "stop",
            sequence_number,
            stream_sid: &self.ids.stream_sid,
            stop: StopBody {
                account_sid: &self.ids.account_sid,
                call_sid: &self.ids.call_sid,
            },
        })
    }
}

/// A message from the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AgentEvent {
    /// Audio to play to the caller: decoded µ-law bytes.
    Media(Vec<u8>),
    /// Tell me when the audio sent so far has been played.
    Mark(String),
    /// Drop all queued audio (barge-in).
    Clear,
    /// Any other event name (ignored by the bridge, e.g. Twilio's outbound `dtmf`).
    Other(String),
}

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow, default)]
    media: Option<IncomingMedia<'a>>,
    #[serde(borrow, default)]
    mark: Option<IncomingMark<'a>>,
}

#[derive(Deserialize)]
struct IncomingMedia<'a> {
    #[serde(borrow)]
    payload: Cow<'a, str>,
}

#[derive(Deserialize)]
struct IncomingMark<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

/// Parses one text frame from the agent.
pub fn parse_agent_message(text: &str) -> Result<AgentEvent, MediaError> {
    let bad = |reason: String| MediaError::BadAgentMessage { reason };
    let message: Incoming<'_> = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    match message.event.as_ref() {
        "media" => {
            let media = message
                .media
                .ok_or_else(|| bad("media event without media".into()))?;
            let payload = base64::engine::general_purpose::STANDARD
                .decode(media.payload.as_bytes())
                .map_err(|e| bad(format!("media payload is not base64: {e}")))?;
            Ok(AgentEvent::Media(payload))
        }
        "mark" => {
            let mark = message
                .mark
                .ok_or_else(|| bad("mark event without mark".into()))?;
            Ok(AgentEvent::Mark(mark.name.into_owned()))
        }
        "clear" => Ok(AgentEvent::Clear),
        other => Ok(AgentEvent::Other(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> StreamIds {
        StreamIds {
            account_sid: "AC00000000000000000000000000000001".into(),
            call_sid: "CA00000000000000000000000000000002".into(),
            stream_sid: "MZ00000000000000000000000000000003".into(),
        }
    }

    #[test]
    fn sids_have_twilio_shape() {
        for (prefix, sid) in [
            ("MZ", new_sid("MZ")),
            ("CA", new_sid("CA")),
            ("AC", new_sid("AC")),
        ] {
            assert_eq!(sid.len(), 34);
            assert!(sid.starts_with(prefix));
            assert!(sid[2..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
        assert_ne!(new_sid("MZ"), new_sid("MZ"));
    }

    #[test]
    fn user_keys_never_take_a_reserved_key_or_replace_one_already_set() {
        let mut params = CustomParameters::new();
        params.insert("from_number", "+15550001111");
        for reserved in RESERVED_PARAMETERS {
            assert!(!params.insert_user(reserved, "spoof"), "{reserved}");
        }
        assert!(params.insert_user("customer_id", "42"));
        assert!(!params.insert_user("customer_id", "43"));
        assert_eq!(params.get("from_number"), Some("+15550001111"));
        assert_eq!(params.get("split_variant"), None);
        assert_eq!(params.get("customer_id"), Some("42"));
        assert_eq!(params.len(), 2);
    }

    #[test]
    fn connected_and_start_byte_for_byte() {
        let mut out = Outbound::new(ids());
        assert_eq!(
            out.connected(),
            r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#
        );
        let mut params = CustomParameters::new();
        params.insert("from_number", "+15550001111");
        params.insert("to_number", "+15550002222");
        assert_eq!(
            out.start(&params),
            concat!(
                r#"{"event":"start","sequenceNumber":"1","start":{"accountSid":"AC00000000000000000000000000000001","#,
                r#""streamSid":"MZ00000000000000000000000000000003","callSid":"CA00000000000000000000000000000002","#,
                r#""tracks":["inbound"],"customParameters":{"from_number":"+15550001111","to_number":"+15550002222"},"#,
                r#""mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},"#,
                r#""streamSid":"MZ00000000000000000000000000000003"}"#
            )
        );
    }

    #[test]
    fn transfer_progress_is_numbered_like_every_other_event() {
        let mut out = Outbound::new(ids());
        let _ = out.start(&CustomParameters::new());
        assert_eq!(
            out.transfer(TransferStatus::Ringing, 100),
            r#"{"event":"transfer","sequenceNumber":"2","streamSid":"MZ00000000000000000000000000000003","transfer":{"status":"ringing","sip_status":100}}"#
        );
        assert_eq!(
            out.transfer(TransferStatus::Failed, 603),
            r#"{"event":"transfer","sequenceNumber":"3","streamSid":"MZ00000000000000000000000000000003","transfer":{"status":"failed","sip_status":603}}"#
        );
    }

    #[test]
    fn media_dtmf_mark_stop_byte_for_byte_with_string_counters() {
        let mut out = Outbound::new(ids());
        let _ = out.start(&CustomParameters::new());
        assert_eq!(
            out.media(0, &[0xFF, 0x7F, 0x00]),
            r#"{"event":"media","sequenceNumber":"2","media":{"track":"inbound","chunk":"1","timestamp":"0","payload":"/38A"},"streamSid":"MZ00000000000000000000000000000003"}"#
        );
        assert_eq!(
            out.media(20, &[0xFF; 4]),
            r#"{"event":"media","sequenceNumber":"3","media":{"track":"inbound","chunk":"2","timestamp":"20","payload":"/////w=="},"streamSid":"MZ00000000000000000000000000000003"}"#
        );
        assert_eq!(
            out.dtmf('5'),
            r#"{"event":"dtmf","streamSid":"MZ00000000000000000000000000000003","sequenceNumber":"4","dtmf":{"track":"inbound_track","digit":"5"}}"#
        );
        assert_eq!(
            out.mark("greeting \"done\""),
            r#"{"event":"mark","sequenceNumber":"5","streamSid":"MZ00000000000000000000000000000003","mark":{"name":"greeting \"done\""}}"#
        );
        assert_eq!(
            out.stop(),
            r#"{"event":"stop","sequenceNumber":"6","streamSid":"MZ00000000000000000000000000000003","stop":{"accountSid":"AC00000000000000000000000000000001","callSid":"CA00000000000000000000000000000002"}}"#
        );
        // The hand-written media JSON is valid JSON with the same content.
        let v: serde_json::Value = serde_json::from_str(&out.media(40, &[1, 2, 3, 4, 5])).unwrap();
        assert_eq!(v["media"]["chunk"], "3");
        assert_eq!(v["media"]["payload"], "AQIDBAU=");
    }

    #[test]
    fn call_parameters_carry_every_key_flat_and_as_json() {
        let vars = vec![
            ("name".to_string(), "Asha".to_string()),
            ("from_number".to_string(), "spoof".to_string()),
        ];
        let overrides = vec![(
            "initial_bot_message".to_string(),
            "Namaste \"Asha\"".to_string(),
        )];
        let params = CustomParameters::for_call(&CallInfo {
            from_number: "+919800000001",
            to_number: "+918047168000",
            deployment_id: "dep-1",
            app_id: "app-1",
            app_version: 3,
            split_variant: Some("3"),
            user_identifier: Some("user-42"),
            app_variables: &vars,
            app_overrides: &overrides,
        });
        let keys: Vec<&str> = params.iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "from_number",
                "to_number",
                "deployment_id",
                "app_id",
                "app_version",
                "split_variant",
                "user_identifier",
                "name",
                "initial_bot_message",
                "app_variables",
                "app_overrides"
            ]
        );
        assert_eq!(
            params.get("from_number"),
            Some("+919800000001"),
            "reserved keys win"
        );
        assert_eq!(params.get("app_version"), Some("3"));
        let vars_json: serde_json::Value =
            serde_json::from_str(params.get("app_variables").unwrap()).unwrap();
        assert_eq!(vars_json["name"], "Asha");
        let overrides_json: serde_json::Value =
            serde_json::from_str(params.get("app_overrides").unwrap()).unwrap();
        assert_eq!(overrides_json["initial_bot_message"], "Namaste \"Asha\"");
        // The whole start message stays a flat string map.
        let mut out = Outbound::new(ids());
        let start: serde_json::Value = serde_json::from_str(&out.start(&params)).unwrap();
        let custom = start["start"]["customParameters"].as_object().unwrap();
        assert!(custom.values().all(serde_json::Value::is_string));
    }

    #[test]
    fn agent_messages_parse() {
        assert_eq!(
            parse_agent_message(
                r#"{"event":"media","streamSid":"MZ1","media":{"payload":"/38A"}}"#
            )
            .unwrap(),
            AgentEvent::Media(vec![0xFF, 0x7F, 0x00])
        );
        // Escaped slashes (some JSON writers emit them) still decode.
        assert_eq!(
            parse_agent_message(r#"{"event":"media","media":{"payload":"\/38A"}}"#).unwrap(),
            AgentEvent::Media(vec![0xFF, 0x7F, 0x00])
        );
        assert_eq!(
            parse_agent_message(r#"{"event":"mark","streamSid":"MZ1","mark":{"name":"m1"}}"#)
                .unwrap(),
            AgentEvent::Mark("m1".into())
        );
        assert_eq!(
            parse_agent_message(r#"{"event":"clear","streamSid":"MZ1"}"#).unwrap(),
            AgentEvent::Clear
        );
        assert_eq!(
            parse_agent_message(r#"{"event":"dtmf","dtmf":{"digit":"1"}}"#).unwrap(),
            AgentEvent::Other("dtmf".into())
        );
        for bad in [
            "not json",
            r#"{"media":{"payload":"AA=="}}"#,
            r#"{"event":"media"}"#,
            r#"{"event":"media","media":{"payload":"!!!"}}"#,
            r#"{"event":"mark"}"#,
        ] {
            assert!(
                matches!(
                    parse_agent_message(bad),
                    Err(MediaError::BadAgentMessage { .. })
                ),
                "{bad}"
            );
        }
    }
}
