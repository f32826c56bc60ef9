#!/usr/bin/env python3
"""A Twilio Media Streams agent runtime over wss:// (Python `websockets`), for the SRTP test.

Usage: agent.py DIR [--frames N]

Makes, with the openssl CLI, a test CA (DIR/ca.pem: what switchboard is told to trust via
`[media] agent_ca_file`) and a second, "rogue" CA that nobody trusts. Serves two wss
listeners on 127.0.0.1:
  trusted    certificate for DNS:localhost signed by the test CA
  untrusted  certificate for DNS:localhost signed by the rogue CA
and writes {"trusted": port, "untrusted": port} to DIR/ports.json once both listen.

Every event a call sends is appended to DIR/events.jsonl (one JSON per line). On `start`
the agent answers with N media frames of media_pattern.agent_frame(0..N) and a mark.
Runs until killed.
"""

import argparse
import asyncio
import base64
import json
import os
import ssl
import subprocess
import sys

from websockets.asyncio.server import serve

from media_pattern import agent_frame


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(directory, name):
    key, cert = (os.path.join(directory, f"{name}.{ext}") for ext in ("key", "pem"))
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", key, "-out", cert, "-days", "2",
            "-subj", f"/CN=switchboard test {name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return key, cert


def make_server_cert(directory, name, ca_key, ca_cert):
    key, csr, cert = (os.path.join(directory, f"{name}.{ext}") for ext in ("key", "csr", "pem"))
    ext = os.path.join(directory, f"{name}.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n"
                "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    openssl("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
            "-out", cert, "-days", "2", "-extfile", ext)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def handler_for(events_path, frames):
    async def handler(ws):
        async for raw in ws:
            event = json.loads(raw)
            with open(events_path, "a") as f:
                f.write(json.dumps(event) + "\n")
            if event.get("event") == "start":
                sid = event["streamSid"]
                for i in range(frames):
                    payload = base64.b64encode(agent_frame(i)).decode()
                    await ws.send(json.dumps(
                        {"event": "media", "streamSid": sid, "media": {"payload": payload}}))
                await ws.send(json.dumps(
                    {"event": "mark", "streamSid": sid, "mark": {"name": "greeting"}}))
            elif event.get("event") == "stop":
                break
    return handler


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir")
    parser.add_argument("--frames", type=int, default=25)
    args = parser.parse_args()
    ca_key, ca_cert = make_ca(args.dir, "ca")
    rogue_key, rogue_cert = make_ca(args.dir, "rogue-ca")
    trusted_tls = make_server_cert(args.dir, "server", ca_key, ca_cert)
    untrusted_tls = make_server_cert(args.dir, "rogue-server", rogue_key, rogue_cert)
    handler = handler_for(os.path.join(args.dir, "events.jsonl"), args.frames)
    async with serve(handler, "127.0.0.1", 0, ssl=trusted_tls) as trusted, \
            serve(handler, "127.0.0.1", 0, ssl=untrusted_tls) as untrusted:
        ports = {
            "trusted": trusted.sockets[0].getsockname()[1],
            "untrusted": untrusted.sockets[0].getsockname()[1],
        }
        tmp = os.path.join(args.dir, "ports.json.tmp")
        with open(tmp, "w") as f:
            json.dump(ports, f)
        os.rename(tmp, os.path.join(args.dir, "ports.json"))
        print(f"agent listening: {ports}", file=sys.stderr, flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
