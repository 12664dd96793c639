"""Time-shifted copies of recorded lines, for a replay that plays the captures again (``--loop``,
or a second run on a data folder whose streams already saw them): the market's and Jetstream's
own times move forward by the shift, trade ids by an offset, so every record is new to the
consumers that dedupe (trade ids, Jetstream cursors, event time). Pass 0 of a fresh data folder
is not shifted: byte for byte the recording."""

from __future__ import annotations

import re

_BINANCE_TIME = re.compile(rb'"([ET])":(\d+)')  # event time, trade/transaction time (ms)
_TRADE_ID = re.compile(rb'"t":(\d+)')
_JETSTREAM_TIME = re.compile(rb'"time_us":(\d+)')


def shift_binance(payload: bytes, shift_ms: int, id_shift: int = 0) -> bytes:
    if not shift_ms and not id_shift:
        return payload
    out = _BINANCE_TIME.sub(lambda m: b'"%s":%d' % (m.group(1), int(m.group(2)) + shift_ms), payload)
    if id_shift:
        out = _TRADE_ID.sub(lambda m: b'"t":%d' % (int(m.group(1)) + id_shift), out)
    return out


def shift_jetstream(raw: bytes, shift_us: int) -> bytes:
    if not shift_us:
        return raw
    return _JETSTREAM_TIME.sub(lambda m: b'"time_us":%d' % (int(m.group(1)) + shift_us), raw)
