//! The `Twiml` field of a Twilio call update, recognised just far enough to act on it.
//!
//! switchboard does not run TwiML; a live call's update may say
//! `<Response><Hangup/></Response>` (end the call) or transfer it:
//! `<Dial>+918000000000</Dial>`, `<Dial><Number>+918000000000</Number></Dial>`,
//! `<Dial><Sip>sip:desk@pbx.example</Sip></Dial>` or `<Refer><Sip>sip:…</Sip></Refer>` (all
//! become an in-dialog REFER to the carrier; verb attributes such as `timeout` or `action` are
//! ignored). [`parse`] checks the document is well-formed (balanced tags, one `<Response>`
//! root, text only inside verbs) and names the first other verb, so a caller gets a precise
//! 400 for `<Say>`, a bad number or a broken document instead of a silent no-op. Only
//! elements, the five predefined entities, an XML declaration, comments and whitespace are
//! understood; anything else (CDATA, DOCTYPE, processing instructions) is malformed here.

use std::fmt;

use switchboard_sip::Uri;

pub use crate::live_calls::TransferTarget;

/// Deepest element nesting accepted; real call-update TwiML is two or three levels deep.
const MAX_DEPTH: usize = 16;
/// Longest SIP URI accepted as a transfer target: it goes into a Refer-To header.
const MAX_URI_CHARS: usize = 512;

/// What a call update's TwiML asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    /// `<Response><Hangup/></Response>`: end the call.
    Hangup,
    /// `<Dial>` or `<Refer>`: hand the caller to `target` (REFER to the carrier).
    Transfer { target: TransferTarget },
}

/// Why a `Twiml` value is refused (400 with Twilio's error shape).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TwimlError {
    /// Not a well-formed `<Response>` document.
    Malformed(String),
    /// Well-formed, but asks for a verb (or noun) switchboard does not perform on a live call.
    Unsupported(String),
    /// Supported verbs used in a way switchboard cannot act on (two nouns in one `<Dial>`,
    /// `<Dial>` mixed with other verbs, a target that is not a SIP URI).
    Invalid(String),
    /// `<Dial>`'s number is not E.164.
    BadNumber(String),
}

impl TwimlError {
    /// Twilio's error code: 12100 (document parse failure), 12200 (schema validation) or
    /// 13224 (Dial: the number is invalid).
    pub fn code(&self) -> u32 {
        match self {
            TwimlError::Malformed(_) => 12100,
            TwimlError::Unsupported(_) | TwimlError::Invalid(_) => 12200,
            TwimlError::BadNumber(_) => 13224,
        }
    }
}

impl fmt::Display for TwimlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TwimlError::Malformed(why) => write!(f, "Document parse failure: {why}"),
            TwimlError::Unsupported(verb) => write!(
                f,
                "TwiML <{verb}> is not supported on a live call; only <Hangup/>, <Dial> (a number or <Sip>) and <Refer><Sip> are"
            ),
            TwimlError::Invalid(why) => write!(f, "Invalid TwiML: {why}"),
            TwimlError::BadNumber(number) => write!(
                f,
                "Dial: {number:?} is not an E.164 number (+ and up to 15 digits)"
            ),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Token<'a> {
    Open(&'a str),
    Close(&'a str),
    Empty(&'a str),
    Text(&'a str),
}

/// A verb (child of `<Response>`) with its text and its nouns (name, text).
#[derive(Debug, Default)]
struct Verb<'a> {
    name: &'a str,
    text: String,
    nouns: Vec<(&'a str, String)>,
}

/// Reads `doc` (the decoded form value) into an [`Instruction`].
pub fn parse(doc: &str) -> Result<Instruction, TwimlError> {
    let verbs = verbs(doc)?;
    if verbs.is_empty() {
        return Err(TwimlError::Malformed("<Response> has no verb".to_owned()));
    }
    if let Some(other) = verbs
        .iter()
        .find(|v| !matches!(v.name, "Hangup" | "Dial" | "Refer"))
    {
        return Err(TwimlError::Unsupported(other.name.to_owned()));
    }
    if verbs.iter().all(|v| v.name == "Hangup") {
        return Ok(Instruction::Hangup);
    }
    let [verb] = verbs.as_slice() else {
        return Err(TwimlError::Invalid(
            "a transfer must be the only verb of the <Response>".to_owned(),
        ));
    };
    transfer(verb).map(|target| Instruction::Transfer { target })
}

/// The target of a `<Dial>` or `<Refer>`.
fn transfer(verb: &Verb<'_>) -> Result<TransferTarget, TwimlError> {
    let invalid = |why: &str| TwimlError::Invalid(why.to_owned());
    let text = verb.text.trim();
    match (verb.name, verb.nouns.as_slice()) {
        ("Dial", []) if !text.is_empty() => e164(text),
        ("Dial", [("Number", number)]) if text.is_empty() => e164(number.trim()),
        (_, [("Sip", uri)]) if text.is_empty() => sip_uri(uri.trim()),
        ("Dial", []) => Err(invalid("<Dial> names no number")),
        ("Refer", []) => Err(invalid("<Refer> needs a <Sip> noun")),
        (_, [(noun, _)]) if !matches!(*noun, "Number" | "Sip") => {
            Err(TwimlError::Unsupported((*noun).to_owned()))
        }
        (_, [_]) => Err(invalid("a verb holds either text or one noun, not both")),
        _ => Err(invalid("one transfer target at a time")),
    }
}

/// An E.164 number with visual separators (space, `-`, `.`, parentheses) removed.
fn e164(text: &str) -> Result<TransferTarget, TwimlError> {
    let number: String = text
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    let digits = number.strip_prefix('+').unwrap_or("");
    if (2..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(TransferTarget::Number(number))
    } else {
        Err(TwimlError::BadNumber(text.chars().take(40).collect()))
    }
}

/// A `sip:`/`sips:` URI that can go inside `<…>` in a Refer-To header.
fn sip_uri(text: &str) -> Result<TransferTarget, TwimlError> {
    let bad = |why: &str| {
        TwimlError::Invalid(format!(
            "<Sip> {:?} {why}",
            text.chars().take(60).collect::<String>()
        ))
    };
    if text.len() > MAX_URI_CHARS {
        return Err(bad("is too long"));
    }
    if text.contains(['<', '>', '"']) {
        return Err(bad("is not a SIP URI"));
    }
    match Uri::parse(text) {
        Ok(Uri::Sip(_)) => Ok(TransferTarget::Uri(text.to_owned())),
        Ok(_) => Err(bad("is not a sip: or sips: URI")),
        Err(why) => Err(bad(&format!("is not a SIP URI ({why})"))),
    }
}

/// The verbs of a well-formed `<Response>` document.
fn verbs(doc: &str) -> Result<Vec<Verb<'_>>, TwimlError> {
    let malformed = |why: &str| TwimlError::Malformed(why.to_owned());
    let tokens = tokenize(doc)?;
    let mut stack: Vec<&str> = Vec::new();
    let mut verbs: Vec<Verb<'_>> = Vec::new();
    let mut root_closed = false;
    for token in tokens {
        if root_closed {
            return Err(malformed("content after </Response>"));
        }
        match token {
            Token::Open(name) | Token::Empty(name) if stack.is_empty() && name != "Response" => {
                return Err(malformed("the root element must be <Response>"));
            }
            Token::Text(_) if stack.len() <= 1 => {
                return Err(malformed("text outside a verb"));
            }
            Token::Open(name) | Token::Empty(name) => {
                let empty = matches!(token, Token::Empty(_));
                match (stack.len(), verbs.last_mut()) {
                    (0, _) => root_closed = empty,
                    (1, _) => verbs.push(Verb {
                        name,
                        ..Verb::default()
                    }),
                    (2, Some(verb)) => verb.nouns.push((name, String::new())),
                    _ => {}
                }
                if !empty {
                    stack.push(name);
                    if stack.len() > MAX_DEPTH {
                        return Err(malformed("elements nested too deeply"));
                    }
                }
            }
            Token::Close(name) => {
                if stack.pop() != Some(name) {
                    return Err(TwimlError::Malformed(format!("unexpected </{name}>")));
                }
                root_closed = stack.is_empty();
            }
            Token::Text(raw) => {
                let text = unescape(raw)?;
                match (stack.len(), verbs.last_mut()) {
                    (2, Some(verb)) => verb.text.push_str(&text),
                    (3, Some(verb)) => {
                        if let Some((_, noun)) = verb.nouns.last_mut() {
                            noun.push_str(&text);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    if !root_closed {
        return Err(malformed("missing <Response> or its closing tag"));
    }
    Ok(verbs)
}

/// Text with XML's five predefined entities and character references replaced.
fn unescape(raw: &str) -> Result<String, TwimlError> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let end = after
            .find(';')
            .filter(|&end| end <= 10)
            .ok_or_else(|| TwimlError::Malformed("bare & in text".to_owned()))?;
        let entity = &after[..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .map(|hex| u32::from_str_radix(hex, 16))
                .or_else(|| entity.strip_prefix('#').map(str::parse::<u32>))
                .and_then(Result::ok)
                .and_then(char::from_u32),
        };
        out.push(
            decoded.ok_or_else(|| TwimlError::Malformed(format!("unknown entity &{entity};")))?,
        );
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn tokenize(doc: &str) -> Result<Vec<Token<'_>>, TwimlError> {
    let malformed = |why: &str| TwimlError::Malformed(why.to_owned());
    let mut rest = doc.trim_start_matches('\u{feff}').trim();
    if let Some(after) = rest.strip_prefix("<?xml") {
        let end = after
            .find("?>")
            .ok_or_else(|| malformed("unterminated XML declaration"))?;
        rest = &after[end + 2..];
    }
    let mut tokens = Vec::new();
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return Ok(tokens);
        }
        if let Some(after) = rest.strip_prefix("<!--") {
            let end = after
                .find("-->")
                .ok_or_else(|| malformed("unterminated comment"))?;
            rest = &after[end + 3..];
            continue;
        }
        let Some(after) = rest.strip_prefix('<') else {
            let end = rest.find('<').unwrap_or(rest.len());
            tokens.push(Token::Text(&rest[..end]));
            rest = &rest[end..];
            continue;
        };
        let end = after
            .find('>')
            .ok_or_else(|| malformed("unterminated tag"))?;
        let tag = &after[..end];
        rest = &after[end + 1..];
        tokens.push(if let Some(name) = tag.strip_prefix('/') {
            Token::Close(element_name(name.trim_end(), true)?)
        } else if let Some(inner) = tag.strip_suffix('/') {
            Token::Empty(element_name(inner, false)?)
        } else {
            Token::Open(element_name(tag, false)?)
        });
    }
}

/// The element name at the start of a tag; attributes (if allowed) are not interpreted.
fn element_name(tag: &str, closing: bool) -> Result<&str, TwimlError> {
    let end = tag
        .find(|c: char| c.is_ascii_whitespace())
        .unwrap_or(tag.len());
    let (name, attributes) = tag.split_at(end);
    let first_ok = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c));
    if !first_ok || !rest_ok || (closing && !attributes.trim().is_empty()) {
        return Err(TwimlError::Malformed(format!(
            "bad tag <{}>",
            tag.chars().take(40).collect::<String>()
        )));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hangup_documents_in_the_shapes_helper_libraries_send() {
        for doc in [
            "<Response><Hangup/></Response>",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response>\n  <Hangup />\n</Response>\n",
            "<Response><!-- bye --><Hangup></Hangup></Response>",
            "\u{feff}<Response><Hangup/><Hangup/></Response>",
        ] {
            assert_eq!(parse(doc), Ok(Instruction::Hangup), "{doc}");
        }
    }

    #[test]
    fn transfers_in_the_shapes_agents_send() {
        let number = |n: &str| {
            Ok(Instruction::Transfer {
                target: TransferTarget::Number(n.to_owned()),
            })
        };
        let uri = |u: &str| {
            Ok(Instruction::Transfer {
                target: TransferTarget::Uri(u.to_owned()),
            })
        };
        for (doc, expected) in [
            (
                "<Response><Dial>+918000000000</Dial></Response>",
                number("+918000000000"),
            ),
            (
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Dial timeout=\"20\">\n  <Number>+1 (415) 555-0123</Number>\n</Dial></Response>",
                number("+14155550123"),
            ),
            (
                "<Response><Dial><Sip>sip:desk@pbx.example.com;transport=tcp</Sip></Dial></Response>",
                uri("sip:desk@pbx.example.com;transport=tcp"),
            ),
            (
                "<Response><Refer><Sip> sips:queue@198.51.100.7:5061?X-Ticket=42&amp;X-Lang=hi </Sip></Refer></Response>",
                uri("sips:queue@198.51.100.7:5061?X-Ticket=42&X-Lang=hi"),
            ),
        ] {
            assert_eq!(parse(doc), expected, "{doc}");
        }
    }

    #[test]
    fn bad_transfer_targets_are_400s_that_say_why() {
        for (doc, code) in [
            ("<Response><Dial>08000000000</Dial></Response>", 13224),
            (
                "<Response><Dial>+91800000000000000</Dial></Response>",
                13224,
            ),
            (
                "<Response><Dial><Number>+91abc</Number></Dial></Response>",
                13224,
            ),
            (
                "<Response><Dial><Sip>tel:+918000000000</Sip></Dial></Response>",
                12200,
            ),
            (
                "<Response><Dial><Sip>sip:a@b&gt;x</Sip></Dial></Response>",
                12200,
            ),
            (
                "<Response><Dial><Sip>sip:a b@c</Sip></Dial></Response>",
                12200,
            ),
            ("<Response><Refer>sip:a@b</Refer></Response>", 12200),
            ("<Response><Dial></Dial></Response>", 12200),
            (
                "<Response><Dial><Number>+9180</Number><Number>+9181</Number></Dial></Response>",
                12200,
            ),
            (
                "<Response><Dial>+918000000000</Dial><Hangup/></Response>",
                12200,
            ),
            (
                "<Response><Dial>+9180<Number>+9181</Number></Dial></Response>",
                12200,
            ),
        ] {
            let err = parse(doc).unwrap_err();
            assert_eq!(err.code(), code, "{doc}: {err}");
        }
    }

    #[test]
    fn other_verbs_and_nouns_are_unsupported_and_named() {
        for (doc, verb) in [
            ("<Response><Say>bye</Say><Hangup/></Response>", "Say"),
            (
                "<Response><Dial><Client>bob</Client></Dial></Response>",
                "Client",
            ),
            ("<Response><Enqueue>q</Enqueue></Response>", "Enqueue"),
        ] {
            let err = parse(doc).unwrap_err();
            assert_eq!(err, TwimlError::Unsupported(verb.to_owned()), "{doc}");
            assert_eq!(err.code(), 12200);
        }
    }

    #[test]
    fn malformed_documents_are_refused_without_panicking() {
        let deep = format!("<Response>{}", "<a>".repeat(100));
        for doc in [
            "",
            "Hangup",
            "<Response><Hangup/>",
            "<Response><Hangup/></Respons>",
            "<Hangup/>",
            "<Response>hello</Response>",
            "<Response></Response>",
            "<Response/>",
            "<Response><Hangup/></Response><Response/>",
            "<Response><Hangup",
            "<Response><!-- <Hangup/></Response>",
            "<?xml version='1.0'<Response/>",
            "<Response><1x/></Response>",
            "<Response><Hangup/></Response x>",
            "<Response><![CDATA[x]]><Hangup/></Response>",
            "<Response><Dial>+9180 & more</Dial></Response>",
            "<Response><Dial>&bogus;</Dial></Response>",
            &deep,
        ] {
            let err = parse(doc).unwrap_err();
            assert!(matches!(err, TwimlError::Malformed(_)), "{doc}: {err}");
            assert_eq!(err.code(), 12100);
        }
    }
}
