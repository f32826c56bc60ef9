#!/usr/bin/env python3
"""WebSocket echo agent for benches/load: the switchboard side's "agent runtime".

Speaks the Twilio Media Streams dialect minimally: accepts any path, reads `connected` and
`start`, echoes every `media` event back on the call's streamSid, ignores everything else, and
returns when the gateway closes the socket. Switchboard's readiness probe (a bare handshake
then close) is served by the same handler.

    python echo_agent.py --port 25100 [--host 127.0.0.1] [--max-seconds 7200]
"""

import argparse
import asyncio
import json
import signal

from websockets.asyncio.server import serve


async def handle(ws):
    stream_sid = None
    try:
        async for raw in ws:
            if not isinstance(raw, str):
                continue
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            event = msg.get("event")
            if event == "start":
                stream_sid = msg.get("streamSid") or msg.get("start", {}).get("streamSid")
            elif event == "media":
                payload = msg.get("media", {}).get("payload")
                if payload is not None:
                    await ws.send(json.dumps({
                        "event": "media",
                        "streamSid": stream_sid or msg.get("streamSid"),
                        "media": {"payload": payload},
                    }))
            elif event == "stop":
                break
    except Exception:  # a call torn down mid-frame is normal under load
        pass


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    # Bounded lifetime: the harness kills it, this is the backstop.
    ap.add_argument("--max-seconds", type=float, default=7200)
    args = ap.parse_args()

    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    # No per-connection compression or keepalive pings: answer the handshake as fast as possible.
    async with serve(handle, args.host, args.port, compression=None, ping_interval=None,
                     backlog=4096, max_size=2**20):
        print(json.dumps({"event": "listening", "port": args.port}), flush=True)
        try:
            await asyncio.wait_for(stop, timeout=args.max_seconds)
        except asyncio.TimeoutError:
            pass


if __name__ == "__main__":
    asyncio.run(main())
