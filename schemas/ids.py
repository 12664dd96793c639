"""Time-ordered, unique event ids (UUIDv7 layout, RFC 9562).

Producers assign the id once, when an event is born; consumers dedupe on it. The layout puts
the Unix time in milliseconds in the top 48 bits, so ids sort by creation time as strings too.
Within one millisecond a per-process counter keeps them strictly increasing.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid

_lock = threading.Lock()
_rng = random.Random(os.urandom(16))
_last_ms = 0
_counter = 0


def new_event_id(now_ms: int | None = None) -> str:
    """A fresh UUIDv7 string; strictly increasing within this process."""
    global _last_ms, _counter
    with _lock:
        ms = int(time.time() * 1000) if now_ms is None else now_ms
        if ms <= _last_ms:
            # clock went backwards or same millisecond: stay monotonic by counting up
            ms = _last_ms
            _counter += 1
            if _counter >= 1 << 12:
                ms += 1
                _counter = 0
        else:
            _counter = 0
        _last_ms = ms
        counter = _counter
    # 62 random bits from a per-process generator seeded from the OS: uniqueness, not secrecy,
    # is what the id needs, and os.urandom per event costs a syscall on the hot path
    rand = _rng.getrandbits(62)
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version 7
    value |= counter << 64  # rand_a holds the monotonic counter
    value |= 0b10 << 62  # RFC 4122 variant
    value |= rand
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def event_id_ms(event_id: str) -> int:
    """The creation time, in Unix milliseconds, encoded in an event id."""
    return uuid.UUID(event_id).int >> 80


def deterministic_event_id(ms: int, *parts: object) -> str:
    """A UUIDv7-shaped id derived from content, for events that a restarted processor may emit
    again (outcomes, groups): the same inputs give the same id, so consumers can dedupe."""
    import hashlib

    digest = hashlib.blake2b(repr(parts).encode(), digest_size=10).digest()
    low = int.from_bytes(digest, "big")  # 80 bits
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((low >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= low & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))
