#!/usr/bin/env python3
"""Captures what switchboard sends a wss:// agent, for the Pipecat check over TLS.

Usage: wss_capture.py MESSAGES_OUT EXAMPLE_BINARY FROM TO

Serves a Python `websockets` wss listener on 127.0.0.1 with a certificate for `localhost`
from a CA made now (openssl CLI, tests/srtp/agent.py's helpers), runs
`EXAMPLE_BINARY --connect wss://localhost:PORT/ws --ca CA` (switchboard's real agent
connect: rustls verifies the chain and the host name, then `connected` and `start`, then
`stop`), and writes every message the agent received to MESSAGES_OUT, one per line, for
check.py to feed to Pipecat.
"""

import asyncio
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "srtp"))

from agent import make_ca, make_server_cert  # noqa: E402  (tests/srtp)
from websockets.asyncio.server import serve  # noqa: E402


async def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    out, example, from_number, to_number = sys.argv[1:]
    received, closed = [], asyncio.Event()

    async def handler(ws):
        async for message in ws:
            received.append(message)
        closed.set()

    with tempfile.TemporaryDirectory() as directory:
        ca_key, ca_cert = make_ca(directory, "ca")
        tls = make_server_cert(directory, "server", ca_key, ca_cert)
        async with serve(handler, "127.0.0.1", 0, ssl=tls) as server:
            port = server.sockets[0].getsockname()[1]
            client = await asyncio.create_subprocess_exec(
                example, "--connect", f"wss://localhost:{port}/ws", "--ca", ca_cert,
                "--from", from_number, "--to", to_number)
            if await client.wait() != 0:
                sys.exit(f"FAIL: {example} --connect exited {client.returncode}")
            await asyncio.wait_for(closed.wait(), 5)
    if len(received) < 2:
        sys.exit(f"FAIL: the wss agent got {len(received)} messages")
    with open(out, "w") as f:
        f.write("\n".join(received) + "\n")
    print(f"ok: {len(received)} messages over wss:// (TLS verified against the test CA)")


if __name__ == "__main__":
    asyncio.run(main())
