//! rtpengine as the relay to beat: the Debian `rtpengine-daemon` binary in userspace
//! forwarding (`--table=-1`, no kernel module), driven over its ng control protocol
//! (bencode over UDP) — `offer` and `answer` allocate a relay port pair per call.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

/// The relay daemon, killed when dropped. Control is blocking (set-up only, never measured).
pub struct Rtpengine {
    child: Child,
    control: UdpSocket,
    ng: SocketAddr,
    cookie: u64,
}

/// Where rtpengine is installed by `apt-get install rtpengine-daemon`.
pub const BINARY: &str = "/usr/bin/rtpengine";

impl Rtpengine {
    pub fn available() -> bool {
        Path::new(BINARY).exists()
    }

    /// Starts rtpengine with one worker thread on `cpu` (so its CPU is one core's worth, like
    /// the bridge thread's), answering ng on `ng_port`.
    pub fn start(cpu: usize, ng_port: u16) -> Result<Rtpengine> {
        let child = Command::new("taskset")
            .args(["-c", &cpu.to_string(), BINARY])
            .args([
                "--config-file=none",
                "--foreground",
                "--log-stderr",
                "--log-level=3",
                "--table=-1",
                "--interface=127.0.0.1",
                &format!("--listen-ng=127.0.0.1:{ng_port}"),
                "--port-min=20000",
                "--port-max=60000",
                "--num-threads=1",
                "--delete-delay=0",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {BINARY}"))?;
        let control = UdpSocket::bind("127.0.0.1:0")?;
        control.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut engine = Rtpengine {
            child,
            control,
            ng: SocketAddr::from(([127, 0, 0, 1], ng_port)),
            cookie: 0,
        };
        for _ in 0..50 {
            if engine.command(&[("command", "ping")]).is_ok() {
                return Ok(engine);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("rtpengine did not answer ng ping on {}", engine.ng)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Allocates the relay for one call: the caller (offer) at `caller`, the far end
    /// (answer) at `callee`. Returns (where the caller sends, where the callee sends).
    pub fn relay(
        &mut self,
        call_id: &str,
        caller: SocketAddr,
        callee: SocketAddr,
    ) -> Result<(SocketAddr, SocketAddr)> {
        let offer = self.command(&[
            ("command", "offer"),
            ("call-id", call_id),
            ("from-tag", "caller"),
            ("sdp", &sdp(caller)),
        ])?;
        let to_callee = media_address(&offer)?;
        let answer = self.command(&[
            ("command", "answer"),
            ("call-id", call_id),
            ("from-tag", "caller"),
            ("to-tag", "callee"),
            ("sdp", &sdp(callee)),
        ])?;
        Ok((media_address(&answer)?, to_callee))
    }

    pub fn delete(&mut self, call_id: &str) -> Result<()> {
        self.command(&[("command", "delete"), ("call-id", call_id)])
            .map(drop)
    }

    /// Sends one ng command and returns the answer's `sdp` (empty for commands without one).
    fn command(&mut self, pairs: &[(&str, &str)]) -> Result<String> {
        self.cookie += 1;
        let cookie = self.cookie.to_string();
        let mut message = format!("{cookie} ").into_bytes();
        encode_dict(pairs, &mut message);
        self.control.send_to(&message, self.ng)?;
        let mut buf = vec![0u8; 65_536];
        loop {
            let len = self.control.recv(&mut buf).context("rtpengine ng")?;
            let reply = &buf[..len];
            let Some(body) = reply.strip_prefix(format!("{cookie} ").as_bytes()) else {
                continue; // a late answer to an earlier command
            };
            let fields = decode_dict(body).context("bad bencode from rtpengine")?;
            let get = |key: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.clone())
            };
            match get("result").as_deref() {
                Some("ok" | "pong") => return Ok(get("sdp").unwrap_or_default()),
                other => bail!(
                    "rtpengine {}: {other:?} {:?}",
                    pairs[0].1,
                    get("error-reason")
                ),
            }
        }
    }
}

impl Drop for Rtpengine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time of every thread of process `pid`, in ns (schedstat: ns-precise).
pub fn process_cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|text| text.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn sdp(at: SocketAddr) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n\
         a=sendrecv\r\n",
        ip = at.ip(),
        port = at.port()
    )
}

/// `c=` address and `m=audio` port of an SDP rtpengine wrote.
fn media_address(sdp: &str) -> Result<SocketAddr> {
    let ip = sdp
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))
        .context("no c= line")?
        .trim();
    let port = sdp
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|rest| rest.split(' ').next())
        .context("no m=audio line")?;
    Ok(SocketAddr::new(ip.parse()?, port.parse()?))
}

fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(s.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(s);
}

/// A bencode dictionary of strings (keys sorted, as bencode requires).
fn encode_dict(pairs: &[(&str, &str)], out: &mut Vec<u8>) {
    let mut sorted = pairs.to_vec();
    sorted.sort_by_key(|(k, _)| *k);
    out.push(b'd');
    for (k, v) in sorted {
        encode_string(k.as_bytes(), out);
        encode_string(v.as_bytes(), out);
    }
    out.push(b'e');
}

/// The string-valued entries of a bencode dictionary (other values are skipped).
fn decode_dict(input: &[u8]) -> Option<Vec<(String, String)>> {
    let mut rest = input.strip_prefix(b"d")?;
    let mut fields = Vec::new();
    while rest.first()? != &b'e' {
        let (key, after) = decode_string(rest)?;
        let (value, after) = skip_value(after)?;
        if let Some(value) = value {
            fields.push((key, value));
        }
        rest = after;
    }
    Some(fields)
}

fn decode_string(input: &[u8]) -> Option<(String, &[u8])> {
    let colon = input.iter().position(|b| *b == b':')?;
    let len: usize = std::str::from_utf8(&input[..colon]).ok()?.parse().ok()?;
    let body = input.get(colon + 1..colon + 1 + len)?;
    Some((
        String::from_utf8_lossy(body).into_owned(),
        &input[colon + 1 + len..],
    ))
}

/// Skips one value; returns it when it is a string.
fn skip_value(input: &[u8]) -> Option<(Option<String>, &[u8])> {
    match input.first()? {
        b'i' => {
            let end = input.iter().position(|b| *b == b'e')?;
            Some((None, &input[end + 1..]))
        }
        b'l' | b'd' => {
            let dict = input[0] == b'd';
            let mut rest = &input[1..];
            while rest.first()? != &b'e' {
                if dict {
                    rest = decode_string(rest)?.1;
                }
                rest = skip_value(rest)?.1;
            }
            Some((None, &rest[1..]))
        }
        _ => decode_string(input).map(|(s, rest)| (Some(s), rest)),
    }
}
