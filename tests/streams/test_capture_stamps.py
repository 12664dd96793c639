"""``read_capture`` times both recorded sets in ns: 2024-08 stamps are ns, 2023-04 ones µs.

A stamp in any other unit is refused with the file, the line and the stamp: read as ns, a µs
capture would play 1000x too fast and its horizons would be 1000x too long.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from streams.capture import CaptureFormatError, read_capture, stamp_ns_factor

SET_2023 = "exchange_binance_2023-04/usdm_futures/usdm_btcusdt_20230404.dat.gz"
SET_2024 = "exchange_binance/usdm_futures/usdm_btcusdt_20240808.gz"


def _raw_seconds(path: Path, per_second: int) -> list[float]:
    """Receive times (s) of the bookTicker and trade lines, straight from the text."""
    out = []
    with gzip.open(path, "rt") as fh:
        for line in fh:
            stamp, _, payload = line.partition(" ")
            if '@bookTicker"' in payload[:60] or '@trade"' in payload[:60]:
                out.append(int(stamp) / per_second)
    return out


def test_stamp_unit_is_decided_by_magnitude():
    t_s = 1_680_652_800  # 2023-04-05
    assert stamp_ns_factor(t_s * 10**9) == 1
    assert stamp_ns_factor(t_s * 10**6) == 1_000
    for implausible in (t_s * 10**3, t_s, 0, -t_s * 10**9, 4_200_000_000 * 10**9, 1_000_000_000 * 10**9):
        assert stamp_ns_factor(implausible) is None, implausible


@pytest.mark.parametrize("rel, per_second", [(SET_2023, 10**6), (SET_2024, 10**9)])
def test_real_captures_of_both_sets_are_timed_in_ns(shared_data: Path, rel: str, per_second: int):
    path = shared_data / rel
    events = list(read_capture(path))
    raw = _raw_seconds(path, per_second)
    assert len(events) == len(raw)  # markPrice (2023 USD-M) and depth skipped, nothing else
    ts = [ev.ts_event for ev in events]
    assert all(stamp_ns_factor(t) == 1 for t in (ts[0], ts[-1]))
    assert ts[0] == pytest.approx(raw[0] * 1e9, abs=1e3)
    gaps_s = [(b - a) / 1e9 for a, b in zip(ts, ts[1:])]
    assert gaps_s == pytest.approx([b - a for a, b in zip(raw, raw[1:])], abs=1e-6)
    # the README's spans: 2023-04-04 23:58:20 -> midnight, 2024-08-08 23:54:15 -> midnight
    assert (ts[-1] - ts[0]) / 1e9 == pytest.approx(99.6 if rel == SET_2023 else 345.0, abs=1.5)


def test_ns_and_us_spellings_of_one_recording_read_the_same(tiny_captures):
    ns = list(read_capture(tiny_captures.write("ns/usdm_btcusdt_20230405.gz", 1)))
    us = list(read_capture(tiny_captures.write("us/usdm_btcusdt_20230405.dat.gz", 1_000)))
    expected = [t for i, t in enumerate(tiny_captures.stamps_ns) if i % 4 in (0, 1)]  # bookTicker, trade
    assert [ev.ts_event for ev in ns] == expected
    assert [ev.ts_event for ev in us] == expected
    assert [type(ev) for ev in us] == [type(ev) for ev in ns]


@pytest.mark.parametrize("unit", [1_000_000, 1_000_000_000], ids=["ms", "s"])
def test_implausible_stamps_are_refused_naming_file_line_and_stamp(tiny_captures, unit: int):
    path = tiny_captures.write("spot/spot_btcusdt_20230405.dat.gz", unit)
    with pytest.raises(CaptureFormatError) as err:
        list(read_capture(path))
    msg = str(err.value)
    assert str(path) in msg and "line 1" in msg and str(tiny_captures.stamps_ns[0] // unit) in msg


def test_a_file_mixing_units_is_refused(tiny_captures):
    units = [1_000] * len(tiny_captures.stamps_ns)
    units[5] = 1  # line 6 in ns after µs lines
    path = tiny_captures.write("spot/spot_btcusdt_20230405.dat.gz", units)
    with pytest.raises(CaptureFormatError, match=r"line 6: .*nanoseconds.*line 1.*microseconds"):
        list(read_capture(path))
