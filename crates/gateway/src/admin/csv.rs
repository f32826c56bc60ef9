//! An incremental RFC 4180 CSV reader: bytes go in as they arrive from the multipart stream,
//! complete records come out, and only the record being read is buffered, so a cohort file of any
//! size is parsed in constant memory.
//!
//! Accepted: quoted fields with `""` escapes and embedded separators/newlines, `\n` or `\r\n` line
//! ends, a UTF-8 byte-order mark at the start; blank lines are skipped. Bytes that are not UTF-8
//! are replaced (U+FFFD) rather than failing the whole upload.

/// One record is capped so a file without line breaks cannot grow the buffer without bound;
/// 64 KiB is hundreds of times a realistic cohort row.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// The upload cannot be read as CSV at all (as opposed to a bad row, which is rejected alone).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsvError {
    #[error("record {record} is longer than {MAX_RECORD_BYTES} bytes")]
    RecordTooLong { record: u64 },
    #[error("record {record} has an unterminated quoted field at the end of the file")]
    UnterminatedQuote { record: u64 },
}

/// Parser state between chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a field.
    FieldStart,
    /// Inside an unquoted field.
    Unquoted,
    /// Inside a quoted field.
    Quoted,
    /// Just read a `"` inside a quoted field: either an escaped quote or the closing one.
    QuoteInQuoted,
}

/// Push parser: call [`CsvReader::feed`] per chunk, then [`CsvReader::finish`].
#[derive(Debug)]
pub struct CsvReader {
    state: State,
    field: Vec<u8>,
    record: Vec<String>,
    record_bytes: usize,
    /// Records completed so far (1-based number of the one being read is `records + 1`).
    records: u64,
    at_start: bool,
}

impl Default for CsvReader {
    fn default() -> Self {
        Self::new()
    }
}

impl CsvReader {
    pub fn new() -> Self {
        Self {
            state: State::FieldStart,
            field: Vec::new(),
            record: Vec::new(),
            record_bytes: 0,
            records: 0,
            at_start: true,
        }
    }

    /// Parses `chunk`, appending every record it completes to `out`.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<Vec<String>>) -> Result<(), CsvError> {
        if self.at_start && !chunk.is_empty() {
            // The BOM may in theory straddle chunks; multipart chunks are far larger than 3 bytes.
            if let Some(rest) = chunk.strip_prefix(b"\xEF\xBB\xBF") {
                chunk = rest;
            }
            self.at_start = false;
        }
        for &b in chunk {
            self.record_bytes += 1;
            if self.record_bytes > MAX_RECORD_BYTES {
                return Err(CsvError::RecordTooLong {
                    record: self.records + 1,
                });
            }
            match (self.state, b) {
                (State::FieldStart, b'"') => self.state = State::Quoted,
                (State::FieldStart | State::Unquoted | State::QuoteInQuoted, b',') => {
                    self.end_field()
                }
                (State::FieldStart | State::Unquoted | State::QuoteInQuoted, b'\n' | b'\r') => {
                    self.end_record(out)
                }
                (State::FieldStart | State::Unquoted, _) => {
                    self.field.push(b);
                    self.state = State::Unquoted;
                }
                (State::Quoted, b'"') => self.state = State::QuoteInQuoted,
                (State::Quoted, _) => self.field.push(b),
                (State::QuoteInQuoted, b'"') => {
                    self.field.push(b'"');
                    self.state = State::Quoted;
                }
                // `"ab"c`: lenient like most readers, keep the stray bytes as field content.
                (State::QuoteInQuoted, _) => {
                    self.field.push(b);
                    self.state = State::Unquoted;
                }
            }
        }
        Ok(())
    }

    /// Flushes the last record (a file need not end with a newline).
    pub fn finish(&mut self, out: &mut Vec<Vec<String>>) -> Result<(), CsvError> {
        if self.state == State::Quoted {
            return Err(CsvError::UnterminatedQuote {
                record: self.records + 1,
            });
        }
        self.end_record(out);
        Ok(())
    }

    fn end_field(&mut self) {
        let text = match String::from_utf8(std::mem::take(&mut self.field)) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        self.record.push(text);
        self.state = State::FieldStart;
    }

    fn end_record(&mut self, out: &mut Vec<Vec<String>>) {
        let blank =
            self.record.is_empty() && self.field.is_empty() && self.state == State::FieldStart;
        if blank {
            // Blank line, or the `\n` of a `\r\n`.
            self.record_bytes = 0;
            return;
        }
        self.end_field();
        self.records += 1;
        self.record_bytes = 0;
        out.push(std::mem::take(&mut self.record));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_in_chunks(input: &[u8], chunk: usize) -> Result<Vec<Vec<String>>, CsvError> {
        let mut r = CsvReader::new();
        let mut out = Vec::new();
        for c in input.chunks(chunk.max(1)) {
            r.feed(c, &mut out)?;
        }
        r.finish(&mut out)?;
        Ok(out)
    }

    #[test]
    fn quoting_line_ends_and_bom() {
        let input =
            "\u{feff}mobile,name\r\n+91 80,\"Doe, \"\"J\"\"\"\r\n\r\n\"multi\nline\",x\nlast,row";
        let rows = parse_in_chunks(input.as_bytes(), 1000).unwrap();
        assert_eq!(
            rows,
            [
                vec!["mobile", "name"],
                vec!["+91 80", "Doe, \"J\""],
                vec!["multi\nline", "x"],
                vec!["last", "row"]
            ]
        );
    }

    #[test]
    fn empty_fields_are_kept() {
        assert_eq!(
            parse_in_chunks(b"a,,c\n,\n", 3).unwrap(),
            [vec!["a", "", "c"], vec!["", ""]]
        );
    }

    #[test]
    fn unterminated_quote_and_runaway_records_are_errors() {
        assert_eq!(
            parse_in_chunks(b"a\n\"open", 4),
            Err(CsvError::UnterminatedQuote { record: 2 })
        );
        let long = vec![b'x'; MAX_RECORD_BYTES + 1];
        assert_eq!(
            parse_in_chunks(&long, 4096),
            Err(CsvError::RecordTooLong { record: 1 })
        );
    }

    fn quote(field: &str) -> String {
        format!("\"{}\"", field.replace('"', "\"\""))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Any table written with full quoting reads back the same, however it is chunked.
        #[test]
        fn roundtrip_any_chunking(
            rows in proptest::collection::vec(proptest::collection::vec("[a-z,\"\n\r ]{0,6}", 1..4), 1..6),
            chunk in 1usize..17,
        ) {
            let text: String = rows
                .iter()
                .map(|r| r.iter().map(|f| quote(f)).collect::<Vec<_>>().join(","))
                .collect::<Vec<_>>()
                .join("\r\n");
            prop_assert_eq!(parse_in_chunks(text.as_bytes(), chunk).unwrap(), rows);
        }
    }
}
