//! The `Twiml` field of a Twilio call update, recognised just far enough to act on it.
//!
//! switchboard does not run TwiML; a live call's update may only say
//! `<Response><Hangup/></Response>`. [`parse`] checks the document is well-formed (balanced
//! tags, one `<Response>` root, no stray text) and names the first other verb, so a caller
//! gets a precise 400 for `<Dial>`, `<Refer>` or a broken document instead of a silent no-op.
//! Only elements, an XML declaration, comments and whitespace are understood; anything else
//! (CDATA, DOCTYPE, processing instructions) is malformed here.

use std::fmt;

/// Deepest element nesting accepted; real call-update TwiML is two or three levels deep.
const MAX_DEPTH: usize = 16;

/// What a call update's TwiML asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instruction {
    /// `<Response><Hangup/></Response>`: end the call.
    Hangup,
}

/// Why a `Twiml` value is refused (400 with Twilio's error shape).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TwimlError {
    /// Not a well-formed `<Response>` document.
    Malformed(String),
    /// Well-formed, but asks for a verb switchboard does not perform on a live call.
    Unsupported(String),
}

impl TwimlError {
    /// Twilio's error code: 12100 (document parse failure) or 12200 (schema validation).
    pub fn code(&self) -> u32 {
        match self {
            TwimlError::Malformed(_) => 12100,
            TwimlError::Unsupported(_) => 12200,
        }
    }
}

impl fmt::Display for TwimlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TwimlError::Malformed(why) => write!(f, "Document parse failure: {why}"),
            TwimlError::Unsupported(verb) => write!(
                f,
                "TwiML verb <{verb}> is not supported on a live call; only <Hangup/> is"
            ),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Token<'a> {
    Open(&'a str),
    Close(&'a str),
    Empty(&'a str),
    Text,
}

/// Reads `doc` (the decoded form value) into an [`Instruction`].
pub fn parse(doc: &str) -> Result<Instruction, TwimlError> {
    let malformed = |why: &str| TwimlError::Malformed(why.to_owned());
    let tokens = tokenize(doc)?;
    let mut stack: Vec<&str> = Vec::new();
    let mut verbs: Vec<&str> = Vec::new();
    let mut root_closed = false;
    for token in tokens {
        if root_closed {
            return Err(malformed("content after </Response>"));
        }
        match token {
            Token::Open(name) | Token::Empty(name) if stack.is_empty() && name != "Response" => {
                return Err(malformed("the root element must be <Response>"));
            }
            Token::Text if stack.len() <= 1 => {
                return Err(malformed("text outside a verb"));
            }
            Token::Open(name) => {
                if stack.len() == 1 {
                    verbs.push(name);
                }
                stack.push(name);
                if stack.len() > MAX_DEPTH {
                    return Err(malformed("elements nested too deeply"));
                }
            }
            Token::Empty(name) => {
                if stack.is_empty() {
                    root_closed = true;
                } else if stack.len() == 1 {
                    verbs.push(name);
                }
            }
            Token::Close(name) => {
                if stack.pop() != Some(name) {
                    return Err(TwimlError::Malformed(format!("unexpected </{name}>")));
                }
                root_closed = stack.is_empty();
            }
            Token::Text => {}
        }
    }
    if !root_closed {
        return Err(malformed("missing <Response> or its closing tag"));
    }
    match verbs.iter().find(|v| **v != "Hangup") {
        Some(other) => Err(TwimlError::Unsupported((*other).to_owned())),
        None if verbs.is_empty() => Err(malformed("<Response> has no verb")),
        None => Ok(Instruction::Hangup),
    }
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
            rest = &rest[end..];
            tokens.push(Token::Text);
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
    fn other_verbs_are_unsupported_and_named() {
        for (doc, verb) in [
            ("<Response><Dial>+918000000000</Dial></Response>", "Dial"),
            (
                "<Response><Dial><Sip>sip:a@b</Sip></Dial></Response>",
                "Dial",
            ),
            (
                "<Response><Refer><Sip>sip:a@b</Sip></Refer></Response>",
                "Refer",
            ),
            ("<Response><Say>bye</Say><Hangup/></Response>", "Say"),
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
            &deep,
        ] {
            let err = parse(doc).unwrap_err();
            assert!(matches!(err, TwimlError::Malformed(_)), "{doc}: {err}");
            assert_eq!(err.code(), 12100);
        }
    }
}
