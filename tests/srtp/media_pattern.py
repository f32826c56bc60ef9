"""Audio both sides of the SRTP end-to-end test send: deterministic pseudo-random frames,
distinct per index and per side, never µ-law silence (0xFF), so a frame found on the wire or
at the far end can only be the one that was sent."""

import random

FRAME_BYTES = 160  # 20 ms of G.711 at 8 kHz


def _frame(side, index):
    # random.Random seeded with a str is the same in every process (it hashes the seed).
    return bytes(b % 255 for b in random.Random(f"{side}-{index}").randbytes(FRAME_BYTES))


def caller_frame(index):
    return _frame("caller", index)


def agent_frame(index):
    return _frame("agent", index)
