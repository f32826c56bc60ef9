#!/usr/bin/env python3
"""Pipecat compatibility check for switchboard's Twilio Media Streams dialect.

Usage: check.py MESSAGES_FILE EXAMPLE_BINARY FROM TO

MESSAGES_FILE holds the lines printed by `first_messages` (connected, start, media, dtmf,
mark, stop). This script installs nothing: it expects `pipecat-ai` to be importable (run.sh
creates the venv). It checks, with Pipecat's own code:
  1. parse_telephony_websocket() on the first two messages detects provider "twilio" and
     returns the right call_id / stream_id / from / to / custom parameters;
  2. TwilioFrameSerializer.deserialize() turns our media and dtmf messages into an audio
     frame of the right size and the right keypad digit;
  3. what TwilioFrameSerializer.serialize() sends to Twilio (media, clear) is understood by
     switchboard's parser (EXAMPLE_BINARY --parse).
"""

import asyncio
import json
import subprocess
import sys
from types import SimpleNamespace

from pipecat.frames.frames import (
    InputAudioRawFrame,
    InputDTMFFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
)
from pipecat.runner.utils import parse_telephony_websocket
from pipecat.serializers.twilio import TwilioFrameSerializer


class FakeWebSocket:
    """The two methods parse_telephony_websocket reads a FastAPI WebSocket through."""

    def __init__(self, messages):
        self._messages = list(messages)

    async def iter_text(self):
        while self._messages:
            yield self._messages.pop(0)

    async def receive_text(self):
        if not self._messages:
            raise RuntimeError("no more messages")
        return self._messages.pop(0)


def fail(message):
    print(f"FAIL: {message}")
    sys.exit(1)


def expect(actual, expected, what):
    if actual != expected:
        fail(f"{what}: expected {expected!r}, got {actual!r}")
    print(f"ok: {what} = {actual!r}")


async def main():
    if len(sys.argv) != 5:
        fail(__doc__)
    messages_file, example, from_number, to_number = sys.argv[1:]
    with open(messages_file) as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    if len(lines) < 2:
        fail(f"expected at least two messages, got {len(lines)}")
    start = json.loads(lines[1])

    # 1. Provider detection and call data, exactly as a Pipecat bot receives them.
    transport, call_data = await parse_telephony_websocket(FakeWebSocket(lines[:2]))
    expect(transport, "twilio", "provider")
    expect(call_data["call_id"], start["start"]["callSid"], "call_id")
    expect(call_data["stream_id"], start["streamSid"], "stream_id")
    expect(call_data["from"], from_number, "from")
    expect(call_data["to"], to_number, "to")
    body = call_data["body"]
    expect(body.get("deployment_id"), "dep_example", "body.deployment_id")
    expect(json.loads(body.get("app_variables", "{}")).get("customer_name"), "Asha", "body.app_variables")
    for sid, prefix in ((call_data["call_id"], "CA"), (call_data["stream_id"], "MZ")):
        if not (sid.startswith(prefix) and len(sid) == 34 and int(sid[2:], 16) >= 0):
            fail(f"{sid!r} is not a Twilio {prefix} SID")
    account_sid = start["start"]["accountSid"]

    # 2. Pipecat's serializer reads our media and dtmf events.
    serializer = TwilioFrameSerializer(
        stream_sid=call_data["stream_id"],
        call_sid=call_data["call_id"],
        account_sid=account_sid,
        params=TwilioFrameSerializer.InputParams(sample_rate=8000, auto_hang_up=False),
    )
    # The pipeline normally calls setup() with its FrameProcessorSetup; only the input sample
    # rate is read, and InputParams.sample_rate overrides it anyway.
    await serializer.setup(SimpleNamespace(audio_in_sample_rate=8000))
    by_event = {json.loads(line)["event"]: line for line in lines[2:]}
    if "media" in by_event:
        frame = await serializer.deserialize(by_event["media"])
        if not isinstance(frame, InputAudioRawFrame):
            fail(f"media became {frame!r}")
        expect(len(frame.audio), 320, "decoded 20 ms frame (160 samples, 16-bit)")
    if "dtmf" in by_event:
        frame = await serializer.deserialize(by_event["dtmf"])
        if not isinstance(frame, InputDTMFFrame):
            fail(f"dtmf became {frame!r}")
        expect(frame.button.value, "5", "dtmf digit")

    # 3. What Pipecat sends back is what switchboard expects.
    outgoing = [
        await serializer.serialize(
            OutputAudioRawFrame(audio=b"\x00\x00" * 160, sample_rate=8000, num_channels=1)
        ),
        await serializer.serialize(InterruptionFrame()),
    ]
    parsed = subprocess.run(
        [example, "--parse"],
        input="\n".join(outgoing) + "\n",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    expect(parsed, ["media 160", "clear"], "switchboard's reading of Pipecat's media + clear")
    print("pipecat compatibility: PASS")


if __name__ == "__main__":
    asyncio.run(main())
