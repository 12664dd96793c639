"""The efficacy benchmark reads both recorded sets: several folders, ``.dat.gz`` files, ns times."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.tools.efficacy.captures import discover, load
from daemon.tools.efficacy.config import DEFAULT_CAPTURES, EfficacyConfig
from streams.capture import CaptureFormatError

SETS = ["exchange_binance", "exchange_binance_2023-04"]


def test_default_captures_are_both_sets_and_a_single_path_or_a_comma_list_works():
    assert [p.name for p in EfficacyConfig().captures] == SETS
    assert list(DEFAULT_CAPTURES) == EfficacyConfig().captures
    assert EfficacyConfig(captures=Path("a")).captures == [Path("a")]
    assert EfficacyConfig(captures="a, b,").captures == [Path("a"), Path("b")]
    cfg = EfficacyConfig(captures=["a", Path("b")])
    assert cfg.captures == [Path("a"), Path("b")]
    assert EfficacyConfig(**cfg.to_json()).captures == cfg.captures  # a summary reruns as written
    with pytest.raises(ValueError, match="captures is empty"):
        EfficacyConfig(captures=",")


def test_discover_finds_both_sets_and_loads_them_in_ns(shared_data: Path):
    caps = discover([shared_data / s for s in SETS], ["*_btcusdt_*"], ["*_20240809.gz"])
    by_name = {c.name: c for c in caps}
    assert {"usdm_btcusdt_20230404.dat.gz", "usdm_btcusdt_20230405.dat.gz", "spot_btcusdt_20230405.dat.gz",
            "usdm_btcusdt_20240808.gz", "spot_btcusdt_20240809.gz"} <= set(by_name)
    old, new = by_name["usdm_btcusdt_20230404.dat.gz"], by_name["usdm_btcusdt_20240808.gz"]
    assert (old.symbol, old.exchange, old.held_out) == ("BTC/USDT:USDT", "binanceusdm", False)
    assert by_name["spot_btcusdt_20240809.gz"].held_out
    for cap, first_s, span_s in ((old, 1_680_652_700.42, 99.6), (new, 1_723_161_255.1, 345.0)):
        events = load(cap)
        assert cap.first_ns == events[0].ts_event and cap.last_ns == events[-1].ts_event
        assert cap.first_ns / 1e9 == pytest.approx(first_s, abs=1.0)  # ns, not µs read as ns
        assert (cap.last_ns - cap.first_ns) / 1e9 == pytest.approx(span_s, abs=1.5)


def test_ns_and_us_files_load_with_the_same_times(tiny_captures):
    tiny_captures.write("a/usdm_futures/usdm_btcusdt_20240808.gz", 1)
    tiny_captures.write("b/usdm_futures/usdm_ethusdt_20230404.dat.gz", 1_000, symbol="ETHUSDT")
    caps = discover([tiny_captures.root / "a", tiny_captures.root / "b"], ["*.gz"], [])
    times = [[ev.ts_event for ev in load(c)] for c in caps]
    assert times[0] == times[1] and times[0][0] == tiny_captures.stamps_ns[0]
    assert [(c.first_ns, c.last_ns) for c in caps] == [(times[0][0], times[0][-1])] * 2


def test_implausible_stamps_and_duplicate_names_are_refused(tiny_captures):
    tiny_captures.write("a/spot/spot_btcusdt_20230405.dat.gz", 1_000_000)  # milliseconds
    (cap,) = discover(tiny_captures.root / "a", ["*.gz"], [])
    with pytest.raises(CaptureFormatError, match=r"spot_btcusdt_20230405\.dat\.gz line 1: receive stamp \d{13} "):
        load(cap)
    tiny_captures.write("b/spot/spot_btcusdt_20230405.dat.gz", 1_000)
    with pytest.raises(ValueError, match="in two folders"):
        discover([tiny_captures.root / "a", tiny_captures.root / "b"], ["*.gz"], [])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        discover([tiny_captures.root / "a", tiny_captures.root / "nowhere"], ["*.gz"], [])
