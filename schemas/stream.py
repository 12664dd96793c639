"""Records of the streams worker's own internal topic (``<app>-actions-by-symbol``).

That topic carries the routed ``agent.action`` records and the worker's timer ticks, in order per
symbol, so the one agent that owns a symbol's partition is the only one that touches its state.
It is not a catalogue topic (``schemas.topics``): its records are read only by the worker, so
``StreamTick`` is not among ``schemas.codec.RECORD_TYPES`` (the analytics sink never sees one).
"""

from __future__ import annotations

import json

from pydantic import Field

from schemas.base import Event
from schemas.codec import RECORD_TYPES, DecodeError, decode


class StreamTick(Event):
    """The idle timer's request: close what is due for (``exchange``, ``symbol``) at event time
    ``event_time_ns``, the timer's estimate for an idle stream (0: no estimate, the symbol's
    market watermark decides). Keyed by symbol, like the market data it stands in for."""

    TYPE = "streams.tick"

    exchange: str
    symbol: str
    event_time_ns: int = Field(default=0, ge=0)


INTERNAL_RECORD_TYPES = {**RECORD_TYPES, StreamTick.TYPE: StreamTick}


def decode_internal(raw: bytes | str | None) -> Event:
    """A record of the internal topic (a ``StreamTick`` or a catalogue record such as a routed
    action), or ``DecodeError`` with the reason."""
    try:
        return decode(raw, types=INTERNAL_RECORD_TYPES)
    except DecodeError:
        tick = _unversioned_tick(raw)
        if tick is None:
            raise
        return tick


def _unversioned_tick(raw: bytes | str | None) -> StreamTick | None:
    """A tick in the envelope-less form ``{"type": "streams.tick", "sk": "exchange|symbol", "now": ns}``
    that workers before ``StreamTick`` sent: after an upgrade the internal topic can still hold a
    few (a restart processes the last second of input again), and they are as good as new ones."""
    if not isinstance(raw, (bytes, str)):
        return None
    try:
        d = json.loads(raw)
    except (ValueError, RecursionError):  # what decode() already reported
        return None
    if not isinstance(d, dict) or d.get("type") != StreamTick.TYPE or "schema_version" in d:
        return None
    sk, now = d.get("sk"), d.get("now", 0)
    if not isinstance(sk, str) or "|" not in sk or not isinstance(now, int) or isinstance(now, bool) or now < 0:
        return None
    exchange, symbol = sk.split("|", 1)
    return StreamTick(exchange=exchange, symbol=symbol, event_time_ns=now, key=symbol)
