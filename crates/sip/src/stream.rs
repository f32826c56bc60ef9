//! Framing SIP over a byte stream (TCP/TLS, RFC 3261 §18.3): headers up to the empty line,
//! then exactly Content-Length octets. Sans-IO: the caller owns the socket and the buffer.

use bytes::{Buf, BytesMut};

use crate::error::SipError;
use crate::message::{Framing, Index, OwnedMessage};

/// Largest message accepted on a stream unless configured otherwise. RFC 3261 sets no
/// maximum; 64 KiB is what fits a UDP datagram, so no trunk needs more, and it bounds the
/// memory one connection can pin.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024;

/// What one call to [`StreamDecoder::decode`] produced.
// Frames are consumed as soon as they are returned; boxing the message would cost an
// allocation per message to save a memcpy.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A complete message.
    Message(OwnedMessage),
    /// A `CRLFCRLF` keep-alive ping (RFC 5626 §3.5.1): answer with a single `CRLF` pong if
    /// you support outbound keep-alives, or ignore it.
    KeepAlive,
}

/// Frames messages out of a stream buffer. Feed it the connection's read buffer after each
/// read; it consumes what it returns. After an error, close the connection (RFC 3261 §18.3
/// and RFC 4475 §3.1.2.3: the stream can no longer be framed).
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    max_message_size: usize,
    /// Offset of the first header line not yet seen complete (avoids rescanning).
    line_start: usize,
    /// The indexed header section of the message being received, and its total size.
    pending: Option<(Index, usize)>,
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_MESSAGE_SIZE)
    }
}

impl StreamDecoder {
    /// A decoder refusing messages over `max_message_size` octets (see
    /// [`DEFAULT_MAX_MESSAGE_SIZE`]).
    pub fn new(max_message_size: usize) -> Self {
        StreamDecoder {
            max_message_size,
            line_start: 0,
            pending: None,
        }
    }

    /// Takes the next frame from the front of `buf`. `Ok(None)` means "need more bytes";
    /// line breaks before a message are consumed (RFC 3261 §7.5), a double CRLF is reported
    /// as [`Frame::KeepAlive`].
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SipError> {
        if self.pending.is_none() {
            let breaks = buf
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
            if breaks == buf.len() && breaks < 4 {
                // Possibly the start of a CRLFCRLF ping split across reads: wait.
                return Ok(None);
            }
            if breaks > 0 {
                buf.advance(breaks);
                self.line_start = 0;
                if breaks >= 4 {
                    return Ok(Some(Frame::KeepAlive));
                }
            }
            let Some(head_end) = self.find_head_end(buf) else {
                if buf.len() > self.max_message_size {
                    return Err(self.fail(SipError::MessageTooLarge {
                        limit: self.max_message_size,
                    }));
                }
                return Ok(None);
            };
            let index =
                Index::parse(&buf[..head_end], Framing::HeadOnly).map_err(|e| self.fail(e))?;
            let Some(body_len) = index.content_length() else {
                return Err(self.fail(SipError::MissingContentLength));
            };
            let total = head_end.saturating_add(body_len);
            if total > self.max_message_size {
                return Err(self.fail(SipError::MessageTooLarge {
                    limit: self.max_message_size,
                }));
            }
            self.pending = Some((index, total));
        }
        let Some((_, total)) = &self.pending else {
            return Ok(None);
        };
        let total = *total;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let Some((mut index, _)) = self.pending.take() else {
            return Ok(None);
        };
        self.line_start = 0;
        let bytes = buf.split_to(total).freeze();
        index.set_body_len(total - index.head_end());
        Ok(Some(Frame::Message(OwnedMessage::from_index(bytes, index))))
    }

    fn fail(&mut self, e: SipError) -> SipError {
        self.pending = None;
        self.line_start = 0;
        e
    }

    /// Scans complete lines from where the last call stopped; returns the offset after the
    /// empty line ending the header section.
    fn find_head_end(&mut self, buf: &[u8]) -> Option<usize> {
        let mut pos = self.line_start;
        while let Some(off) = memchr::memchr(b'\n', buf.get(pos..)?) {
            let nl = pos + off;
            let content = &buf[pos..nl];
            if pos > 0 && (content.is_empty() || content == b"\r") {
                self.line_start = 0;
                return Some(nl + 1);
            }
            pos = nl + 1;
        }
        self.line_start = pos;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: 1\r\nContent-Length: 3\r\n\r\nabc";

    fn message(f: Option<Frame>) -> OwnedMessage {
        match f {
            Some(Frame::Message(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn frames_byte_by_byte() {
        let mut d = StreamDecoder::default();
        let mut buf = BytesMut::new();
        let mut stream = b"\r\n\r\n".to_vec();
        stream.extend_from_slice(MSG);
        stream.extend_from_slice(MSG);
        let mut frames = Vec::new();
        for &b in &stream {
            buf.extend_from_slice(&[b]);
            while let Some(f) = d.decode(&mut buf).unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0], Frame::KeepAlive);
        for f in frames.into_iter().skip(1) {
            let m = message(Some(f));
            assert_eq!(m.message().body(), b"abc");
            assert_eq!(&m.bytes()[..], MSG);
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn two_messages_in_one_read() {
        let mut d = StreamDecoder::default();
        let mut buf = BytesMut::from(&[MSG, MSG].concat()[..]);
        message(d.decode(&mut buf).unwrap());
        message(d.decode(&mut buf).unwrap());
        assert_eq!(d.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn content_length_rules() {
        let mut d = StreamDecoder::default();
        let mut buf = BytesMut::from(&b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: 1\r\n\r\n"[..]);
        assert_eq!(
            d.decode(&mut buf).unwrap_err(),
            SipError::MissingContentLength
        );
        let mut d = StreamDecoder::default();
        let mut buf = BytesMut::from(&b"OPTIONS sip:a@b SIP/2.0\r\nl: -1\r\n\r\n"[..]);
        assert_eq!(d.decode(&mut buf).unwrap_err().response_status(), Some(400));
        // Larger than what arrived: wait for more (RFC 4475 §3.1.2.2 over TCP).
        let mut d = StreamDecoder::default();
        let mut buf = BytesMut::from(&b"OPTIONS sip:a@b SIP/2.0\r\nl: 9999\r\n\r\nshort"[..]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn size_cap() {
        let mut d = StreamDecoder::new(100);
        let mut buf = BytesMut::from(&b"OPTIONS sip:a@b SIP/2.0\r\nl: 500\r\n\r\n"[..]);
        assert!(matches!(
            d.decode(&mut buf),
            Err(SipError::MessageTooLarge { limit: 100 })
        ));
        let mut d = StreamDecoder::new(100);
        let mut buf = BytesMut::from(&[b'x'; 200][..]);
        assert_eq!(d.decode(&mut buf).unwrap_err().response_status(), Some(513));
    }
}
