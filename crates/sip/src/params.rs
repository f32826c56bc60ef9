//! `;name[=value]` parameter lists, validated once and then read lazily from their raw text.

use crate::lex::{self, Cursor};

/// A validated parameter list, kept as its raw text (starting at the first `;`, or empty).
/// Lookups re-scan the text: lists are short and most are never read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Params<'a> {
    raw: &'a str,
}

/// One parameter: its name and its value as written (quoted values keep their quotes; see
/// [`Param::unquoted_value`]). A flag parameter (`;lr`) has no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param<'a> {
    pub name: &'a str,
    pub value: Option<&'a str>,
}

impl<'a> Param<'a> {
    /// The value without quotes and quoted-pair escapes.
    pub fn unquoted_value(&self) -> Option<std::borrow::Cow<'a, str>> {
        self.value.map(lex::unquote)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Syntax {
    /// `generic-param` of a header: token [ = token / host / quoted-string ].
    Header,
    /// URI parameters: characters already checked by the URI parser.
    Uri,
}

impl<'a> Params<'a> {
    /// No parameters.
    pub const fn empty() -> Params<'static> {
        Params { raw: "" }
    }

    /// The raw text, from the first `;` (empty when there are none).
    pub fn as_str(&self) -> &'a str {
        self.raw
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// Validates URI parameter text (`;a=b;c`, no white space).
    pub(crate) fn parse(text: &'a str) -> Result<Params<'a>, ()> {
        let mut c = Cursor::new(text);
        let params = Self::parse_at(&mut c, Syntax::Uri)?;
        if c.at_end() {
            Ok(params)
        } else {
            Err(())
        }
    }

    /// Consumes header parameters (`*( SEMI generic-param )`) at the cursor.
    pub(crate) fn parse_header(c: &mut Cursor<'a>) -> Result<Params<'a>, &'static str> {
        Self::parse_at(c, Syntax::Header).map_err(|()| "malformed parameter")
    }

    fn parse_at(c: &mut Cursor<'a>, syntax: Syntax) -> Result<Params<'a>, ()> {
        let save = c.pos();
        c.skip_lws();
        if c.peek() != Some(b';') {
            c.reset_to(save);
            return Ok(Params { raw: "" });
        }
        let start = c.pos();
        let mut end = start;
        while c.eat_sep(b';') {
            c.skip_lws();
            let name = c.take_while(|b| is_name_byte(b, syntax));
            if name.is_empty() {
                return Err(());
            }
            if c.eat_sep(b'=') {
                c.skip_lws();
                if c.peek() == Some(b'"') {
                    if syntax == Syntax::Uri || c.quoted_string().is_none() {
                        return Err(());
                    }
                } else if c.take_while(|b| is_value_byte(b, syntax)).is_empty() {
                    return Err(());
                }
            }
            end = c.pos();
        }
        c.reset_to(end);
        Ok(Params {
            raw: c.slice(start, end),
        })
    }

    /// Iterates the parameters in order.
    pub fn iter(&self) -> ParamIter<'a> {
        ParamIter {
            c: Cursor::new(self.raw),
        }
    }

    /// Looks a parameter up by name (case-insensitive): `Some(None)` for a flag,
    /// `Some(Some(value))` for a valued one, `None` when absent.
    pub fn get(&self, name: &str) -> Option<Option<&'a str>> {
        self.iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
            .map(|p| p.value)
    }

    /// The value of a valued parameter.
    pub fn value(&self, name: &str) -> Option<&'a str> {
        self.get(name).flatten()
    }

    /// `true` when the parameter is present, with or without a value.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

fn is_name_byte(b: u8, syntax: Syntax) -> bool {
    match syntax {
        Syntax::Header => lex::is_token_byte(b),
        Syntax::Uri => lex::is_uri_params_byte(b) && b != b';' && b != b'=',
    }
}

fn is_value_byte(b: u8, syntax: Syntax) -> bool {
    match syntax {
        Syntax::Header => lex::is_gen_value_byte(b),
        Syntax::Uri => lex::is_uri_params_byte(b) && b != b';' && b != b'=',
    }
}

/// Iterator returned by [`Params::iter`].
#[derive(Debug, Clone)]
pub struct ParamIter<'a> {
    c: Cursor<'a>,
}

impl<'a> Iterator for ParamIter<'a> {
    type Item = Param<'a>;

    fn next(&mut self) -> Option<Param<'a>> {
        if !self.c.eat_sep(b';') {
            return None;
        }
        self.c.skip_lws();
        let name = self
            .c
            .take_while(|b| !lex::is_lws(b) && b != b';' && b != b'=');
        let value = if self.c.eat_sep(b'=') {
            self.c.skip_lws();
            if self.c.peek() == Some(b'"') {
                self.c.quoted_string()
            } else {
                Some(self.c.take_while(|b| !lex::is_lws(b) && b != b';'))
            }
        } else {
            None
        };
        Some(Param { name, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_params_with_spaces_and_quotes() {
        let mut c = Cursor::new(
            r#" ; newparam =
      newvalue ;
  secondparam ; q = 0.33 ; x="a;b" tail"#,
        );
        let p = Params::parse_header(&mut c).unwrap();
        let all: Vec<_> = p.iter().map(|p| (p.name, p.value)).collect();
        assert_eq!(
            all,
            vec![
                ("newparam", Some("newvalue")),
                ("secondparam", None),
                ("q", Some("0.33")),
                ("x", Some("\"a;b\"")),
            ]
        );
        assert_eq!(c.rest(), " tail");
        assert_eq!(p.get("Q"), Some(Some("0.33")));
        assert!(p.contains("secondparam"));
        assert_eq!(p.value("secondparam"), None);
    }

    #[test]
    fn empty_names_are_rejected() {
        assert!(Params::parse_header(&mut Cursor::new(";;")).is_err());
        assert!(Params::parse_header(&mut Cursor::new(";a=")).is_err());
        assert!(Params::parse(";lr;;x").is_err());
        assert!(Params::parse("").unwrap().is_empty());
    }

    #[test]
    fn uri_params_keep_escapes() {
        let p = Params::parse(";%6C%72;n%61me=v%61lue%25%34%31").unwrap();
        let names: Vec<_> = p.iter().map(|p| p.name).collect();
        assert_eq!(names, vec!["%6C%72", "n%61me"]);
    }
}
