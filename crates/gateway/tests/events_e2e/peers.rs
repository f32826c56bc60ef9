//! The test-side peers of `events_e2e.rs`: an SSE client reading a raw TCP stream, and a
//! webhook receiver (a real HTTP/1.1 server on threads) that checks signatures.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit as _, Mac as _};
use serde_json::Value;
use sha2::Sha256;

use crate::harness::API_KEY;

/// Bound on any wait: a regression fails instead of hanging; nothing asserts speed.
pub const GUARD: Duration = Duration::from_secs(30);
/// The webhook secret every test configures.
pub const SECRET: &str = "whsec-0123456789abcdef";

// ---- SSE client ------------------------------------------------------------------------

/// One item read off an event stream.
#[derive(Debug, Clone)]
pub enum Sse {
    Event {
        id: Option<u64>,
        name: String,
        data: Value,
    },
    Comment(String),
}

/// An open `text/event-stream` response, parsed on a thread.
pub struct SseStream {
    pub status: u16,
    pub items: mpsc::Receiver<Sse>,
}

impl SseStream {
    pub fn open(admin: SocketAddr, path: &str, last_event_id: Option<&str>) -> SseStream {
        let mut stream = TcpStream::connect(admin).expect("connect");
        let mut head = format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nX-API-Key: {API_KEY}\r\n");
        if let Some(id) = last_event_id {
            head.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).expect("write");
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).expect("status line");
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        let (tx, items) = mpsc::channel();
        std::thread::spawn(move || {
            // Headers, then chunks; each chunk is whole `field: value` lines, so chunk-size
            // lines (bare hex) are skipped like any line without a known field.
            let (mut id, mut name, mut data) = (None, None, None);
            let mut in_body = false;
            for line in reader.lines() {
                let Ok(line) = line else { break };
                let line = line.trim_end_matches('\r');
                if !in_body {
                    in_body = line.is_empty();
                    continue;
                }
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse().ok();
                } else if let Some(v) = line.strip_prefix("event: ") {
                    name = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(v).ok();
                } else if let Some(v) = line.strip_prefix(':') {
                    if tx.send(Sse::Comment(v.trim().to_owned())).is_err() {
                        break;
                    }
                } else if line.is_empty() {
                    if let Some(name) = name.take() {
                        let item = Sse::Event {
                            id: id.take(),
                            name,
                            data: data.take().unwrap_or(Value::Null),
                        };
                        if tx.send(item).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        SseStream { status, items }
    }

    /// The next event (comments skipped), or `None` at the end of the stream.
    pub fn next_event(&self) -> Option<(Option<u64>, String, Value)> {
        let deadline = Instant::now() + GUARD;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.items.recv_timeout(left) {
                Ok(Sse::Event { id, name, data }) => return Some((id, name, data)),
                Ok(Sse::Comment(_)) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("no event within {GUARD:?}"),
            }
        }
    }

    /// Events until (and including) the first named `last`.
    pub fn events_until(&self, last: &str) -> Vec<(Option<u64>, String, Value)> {
        let mut seen = Vec::new();
        loop {
            let event = self.next_event().expect("stream ended early");
            let done = event.1 == last;
            seen.push(event);
            if done {
                return seen;
            }
        }
    }
}

pub fn names(events: &[(Option<u64>, String, Value)]) -> Vec<&str> {
    events.iter().map(|e| e.1.as_str()).collect()
}

// ---- webhook receiver --------------------------------------------------------------------

/// How the receiver answers each request, in order; `Ok` once the script runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Ok,
    Fail,
    /// Read the request and never answer.
    Hang,
}

/// A delivery as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub answered: Answer,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    /// Checks `X-Switchboard-Signature` against `SECRET` with an independent HMAC.
    pub fn signature_is_valid(&self) -> bool {
        let Some(header) = self.headers.get("x-switchboard-signature") else {
            return false;
        };
        let Some((t, v1)) = header
            .split_once(',')
            .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v.strip_prefix("v1=")?)))
        else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(t.as_bytes());
        mac.update(b".");
        mac.update(&self.body);
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        expected == v1
    }
}

/// A real HTTP/1.1 receiver on 127.0.0.1, one thread per connection.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub fn start(script: Vec<Answer>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script.into_iter()));
        let shared = Arc::clone(&received);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let (received, script) = (Arc::clone(&shared), Arc::clone(&script));
                std::thread::spawn(move || serve_hook(stream, &received, &script));
            }
        });
        Receiver { addr, received }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks/switchboard?source=test", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived.
    pub fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + GUARD;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "only {} deliveries: {got:?}",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn serve_hook(
    stream: TcpStream,
    received: &Mutex<Vec<Received>>,
    script: &Mutex<std::vec::IntoIter<Answer>>,
) {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let answer = script.lock().unwrap().next().unwrap_or(Answer::Ok);
    received.lock().unwrap().push(Received {
        headers,
        body,
        answered: answer,
    });
    let mut stream = reader.into_inner();
    match answer {
        Answer::Ok => {
            let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        }
        Answer::Fail => {
            let _ = stream.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
        Answer::Hang => std::thread::sleep(Duration::from_secs(60)),
    }
}
