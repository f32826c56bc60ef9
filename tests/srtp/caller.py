#!/usr/bin/env python3
"""A SIP caller that offers SRTP (RTP/SAVP with SDES a=crypto) and speaks it with libsrtp
(the `pylibsrtp` package), for switchboard's SRTP end-to-end test.

Usage: caller.py --target HOST:PORT --number E164 --report FILE [options]

  --transport udp|tcp|tls   SIP transport (tls: --ca FILE verifies the gateway, with
                            --server-name for the certificate's name)
  --offer savp|plain        what the INVITE offers (plain: RTP/AVP, no keys)
  --suite NAME              a=crypto suite to offer (repeat for several; tags 1, 2, ...)
  --crypto-line TEXT        a raw a=crypto value instead (for malformed-line tests)
  --frames N                20 ms frames of media_pattern.caller_frame(0..N) to send
  --listen SECONDS          how long to keep receiving after the last frame

On a 200 it ACKs, sends the frames SRTP-protected with its own key, sends one packet twice
(a replay) and one with a flipped payload bit (forged), decrypts what the gateway sends with
the key from the answer, then hangs up with BYE. On a failure status it ACKs and stops.
The report (JSON) says what happened; the test that runs this script judges it.
"""

import argparse
import base64
import json
import os
import random
import re
import select
import socket
import ssl
import struct
import sys
import time

from pylibsrtp import Policy, Session

from media_pattern import FRAME_BYTES, agent_frame, caller_frame

PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
}
SSRC = 0x5EC0_0001
REPLAYED_INDEX = 10
FORGED_INDEX = 20


class SipTransport:
    """One SIP flow to the gateway over UDP, TCP or TLS; messages in and out as bytes."""

    def __init__(self, kind, target, ca=None, server_name=None):
        self.kind = kind
        self.target = target
        self.buffer = b""
        if kind == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(("127.0.0.1", 0))
        else:
            raw = socket.create_connection(target, timeout=10)
            if kind == "tls":
                context = ssl.create_default_context(cafile=ca)
                raw = context.wrap_socket(raw, server_hostname=server_name or target[0])
            self.sock = raw
        self.local = self.sock.getsockname()

    def via_transport(self):
        return self.kind.upper()

    def send(self, message):
        if self.kind == "udp":
            self.sock.sendto(message, self.target)
        else:
            self.sock.sendall(message)

    def receive(self, timeout):
        """The next SIP message, or None after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if self.kind != "udp":
                message = self._framed()
                if message is not None:
                    return message
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                if self.kind == "udp":
                    return self.sock.recvfrom(65535)[0]
                chunk = self.sock.recv(65535)
            except (socket.timeout, TimeoutError):
                return None
            if not chunk:
                return None
            self.buffer += chunk

    def _framed(self):
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        match = re.search(rb"(?im)^(?:content-length|l)\s*:\s*(\d+)", self.buffer[:head_end])
        length = int(match.group(1)) if match else 0
        end = head_end + 4 + length
        if len(self.buffer) < end:
            return None
        message, self.buffer = self.buffer[:end], self.buffer[end:]
        return message


def parse_message(raw):
    text = raw.decode("utf-8", "replace")
    head, _, body = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return lines[0], headers, body


def build(method, uri, headers, body=""):
    lines = [f"{method} {uri} SIP/2.0"] + [f"{k}: {v}" for k, v in headers]
    lines.append(f"Content-Length: {len(body.encode())}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def offer_sdp(rtp_port, args, key):
    proto = "RTP/SAVP" if args.offer == "savp" else "RTP/AVP"
    lines = [
        "v=0", "o=caller 1 1 IN IP4 127.0.0.1", "s=srtp test", "c=IN IP4 127.0.0.1", "t=0 0",
        f"m=audio {rtp_port} {proto} 0 101",
        "a=rtpmap:0 PCMU/8000", "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-15",
        "a=ptime:20", "a=sendrecv",
    ]
    if args.offer == "savp":
        inline = base64.b64encode(key).decode()
        for tag, suite in enumerate(args.suite or ["AES_CM_128_HMAC_SHA1_80"], start=1):
            lines.append(f"a=crypto:{tag} {suite} inline:{inline}")
        for raw in args.crypto_line or []:
            lines.append(f"a=crypto:{raw}")
    return "\r\n".join(lines) + "\r\n"


def answered_media(body):
    address = re.search(r"(?m)^c=IN IP4 (\S+)", body).group(1)
    port = int(re.search(r"(?m)^m=audio (\d+) (\S+)", body).group(1))
    proto = re.search(r"(?m)^m=audio \d+ (\S+)", body).group(1)
    crypto = re.search(r"(?m)^a=crypto:(\d+) (\S+) inline:([A-Za-z0-9+/=]+)", body)
    return (address, port), proto, crypto


def rtp_packet(index):
    header = struct.pack("!BBHII", 0x80, 0, (1000 + index) & 0xFFFF, index * FRAME_BYTES, SSRC)
    return header + caller_frame(index)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--transport", choices=["udp", "tcp", "tls"], default="udp")
    parser.add_argument("--ca")
    parser.add_argument("--server-name")
    parser.add_argument("--number", required=True)
    parser.add_argument("--offer", choices=["savp", "plain"], default="savp")
    parser.add_argument("--suite", action="append")
    parser.add_argument("--crypto-line", action="append")
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--listen", type=float, default=1.0)
    parser.add_argument("--report", required=True)
    args = parser.parse_args()
    host, port = args.target.rsplit(":", 1)
    sip = SipTransport(args.transport, (host, int(port)), args.ca, args.server_name)
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    our_key = os.urandom(30)
    report = {"transport": args.transport}

    local = f"{sip.local[0]}:{sip.local[1]}"
    call_id = f"srtp-{random.getrandbits(48):x}@127.0.0.1"
    from_tag = f"{random.getrandbits(32):x}"
    uri = f"sip:{args.number}@{args.target}"
    scheme = "sips" if args.transport == "tls" else "sip"
    contact = f"<{scheme}:caller@{local};transport={args.transport}>"

    def via(branch):
        return ("Via", f"SIP/2.0/{sip.via_transport()} {local};branch=z9hG4bK{branch};rport")

    common = [("From", f"<sip:+919812345678@127.0.0.1>;tag={from_tag}"), ("Call-ID", call_id)]
    invite_branch = f"{random.getrandbits(40):x}"
    invite = build("INVITE", uri, [
        via(invite_branch), ("Max-Forwards", "70"), *common[:1], ("To", f"<{uri}>"), common[1],
        ("CSeq", "1 INVITE"), ("Contact", contact), ("Content-Type", "application/sdp"),
    ], offer_sdp(rtp.getsockname()[1], args, our_key))

    # INVITE until a final response (retransmitted over UDP until something comes back).
    sip.send(invite)
    interval, next_resend, deadline = 0.5, time.monotonic() + 0.5, time.monotonic() + 15
    provisional = False
    while True:
        raw = sip.receive(0.1)
        now = time.monotonic()
        if raw is None:
            if now > deadline:
                report["status"] = None
                report["error"] = "no final response to the INVITE"
                break
            if args.transport == "udp" and not provisional and now > next_resend:
                sip.send(invite)
                interval = min(interval * 2, 4)
                next_resend = now + interval
            continue
        start, headers, body = parse_message(raw)
        if not start.startswith("SIP/2.0 "):
            continue
        status = int(start.split()[1])
        if status < 200:
            provisional = True
            continue
        report["status"] = status
        report["warning"] = headers.get("warning", [])
        to = headers["to"][0]
        break

    if report.get("status") is None:
        write(args.report, report)
        return
    if report["status"] >= 300:
        # ACK for a failure is part of the INVITE transaction (same branch).
        sip.send(build("ACK", uri, [
            via(invite_branch), ("Max-Forwards", "70"), *common[:1], ("To", to), common[1],
            ("CSeq", "1 ACK"),
        ]))
        write(args.report, report)
        return

    remote, proto, crypto = answered_media(body)
    report["answer_proto"] = proto
    request_uri = re.search(r"<([^>]+)>", headers["contact"][0]).group(1)
    in_dialog = [*common[:1], ("To", to), common[1], ("Max-Forwards", "70")]
    sip.send(build("ACK", request_uri, [via(f"{random.getrandbits(40):x}"), *in_dialog,
                                         ("CSeq", "1 ACK")]))

    protect = unprotect = None
    if crypto:
        suite = crypto.group(2)
        report["answer_suite"] = suite
        report["answer_tag"] = int(crypto.group(1))
        their_key = base64.b64decode(crypto.group(3))
        report["keys_differ"] = their_key != our_key
        protect = Session(Policy(key=our_key, ssrc_type=Policy.SSRC_ANY_OUTBOUND,
                                 srtp_profile=PROFILES[suite]))
        unprotect = Session(Policy(key=their_key, ssrc_type=Policy.SSRC_ANY_INBOUND,
                                   srtp_profile=PROFILES[suite]))

    received = []
    sent_payload = b""
    start_time = time.monotonic()

    def drain(until):
        while True:
            left = until - time.monotonic()
            readable, _, _ = select.select([rtp], [], [], max(left, 0))
            if not readable:
                if left <= 0:
                    return
                continue
            received.append(rtp.recv(2048))

    for index in range(args.frames):
        clear = rtp_packet(index)
        wire = protect.protect(clear) if protect else clear
        if protect and index == FORGED_INDEX:
            # One payload bit flipped, sent ahead of the genuine packet: the tag no longer
            # verifies (sent after it, it would count as a replay instead).
            forged = bytearray(wire)
            forged[20] ^= 0x01
            rtp.sendto(bytes(forged), remote)
        rtp.sendto(wire, remote)
        sent_payload += clear[12:]
        if protect and index == REPLAYED_INDEX:
            rtp.sendto(wire, remote)  # the same packet again: a replay
        drain(start_time + (index + 1) * 0.02)
    drain(time.monotonic() + args.listen)

    report["sent_payload_b64"] = base64.b64encode(sent_payload).decode()
    report["replayed"] = 1 if protect else 0
    report["forged"] = 1 if protect else 0
    report["received_packets"] = len(received)
    agent_frames = [agent_frame(i) for i in range(200)]
    probes = [frame[:16] for frame in agent_frames]
    report["clear_agent_audio_on_wire"] = any(p in raw for raw in received for p in probes)
    undecryptable, frames_back = 0, []
    for raw in received:
        try:
            clear = unprotect.unprotect(raw) if unprotect else raw
        except Exception:  # pylibsrtp raises on a tag that does not verify
            undecryptable += 1
            continue
        payload = clear[12:]
        if payload in agent_frames:
            frames_back.append(agent_frames.index(payload))
    report["undecryptable"] = undecryptable
    report["agent_frames_back"] = frames_back

    sip.send(build("BYE", request_uri, [via(f"{random.getrandbits(40):x}"), *in_dialog,
                                         ("CSeq", "2 BYE")]))
    bye_status = None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        raw = sip.receive(0.2)
        if raw is None:
            continue
        start, headers, _ = parse_message(raw)
        if start.startswith("SIP/2.0 ") and headers.get("cseq", [""])[0].endswith("BYE"):
            bye_status = int(start.split()[1])
            break
    report["bye_status"] = bye_status
    write(args.report, report)


def write(path, report):
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps({k: v for k, v in report.items() if k != "sent_payload_b64"}),
          file=sys.stderr)


if __name__ == "__main__":
    main()
