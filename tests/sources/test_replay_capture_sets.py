"""The Binance replay plays both recorded sets at their recorded speed, one set at a time.

2024-08 stamps are ns, 2023-04 ones µs: the server's clock (``Pacer``) works in ns, so a µs
capture read as ns would be sent 1000x too fast. Due times are computed from the server's own
pacer, never measured with sleeps.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import pytest
from source_helpers import run
from structlog.testing import capture_logs

from daemon.errors import ReplayError
from daemon.tools.capture_servers.binance_server import BinanceReplayServer
from daemon.tools.capture_servers.captures import find_captures

SET_2023 = "exchange_binance_2023-04"


def _raw_stamps(paths: list[Path]) -> list[int]:
    """The receive stamps of every combined-stream line, as written."""
    out = []
    for path in paths:
        with gzip.open(path, "rb") as fh:
            out += [int(ln.split(b" ", 1)[0]) for ln in fh if ln.split(b" ", 1)[1].startswith(b'{"stream"')]
    return out


@pytest.mark.parametrize("folder, ns_per_unit", [(SET_2023, 1_000), ("exchange_binance", 1)])
def test_lines_of_both_sets_are_ns_with_the_recorded_gaps(data_root: Path, folder: str, ns_per_unit: int):
    (cap,) = find_captures(data_root / folder, "usdm", ["BTCUSDT"])
    lines = list(cap.lines())
    raw = _raw_stamps(cap.files)
    assert [ts for ts, _, _ in lines] == [t * ns_per_unit for t in raw]
    with gzip.open(cap.files[0], "rb") as fh:
        assert cap.first_ns == int(fh.readline().split(b" ", 1)[0]) * ns_per_unit  # the clock's origin
    if folder == SET_2023:
        # 0404 + 0405: 23:58:20 -> 00:06:54, and USD-M's markPrice is served as its own stream
        assert (lines[-1][0] - lines[0][0]) / 1e9 == pytest.approx(514.3, abs=1.0)
        assert "btcusdt@markprice@1s" in {s for _, s, _ in lines}


def test_server_starts_the_clock_at_the_sets_first_stamp_and_paces_in_ns(data_root: Path):
    async def body():
        speed = 20.0
        srv = BinanceReplayServer(data_root / SET_2023, {"spot": ["BTCUSDT"], "usdm": ["BTCUSDT"]}, speed=speed)
        async with srv:
            spot, usdm = sorted(srv.captures, key=lambda c: c.market)
            srv.play()
            # spot was recorded from 00:00:00, USD-M from 23:58:20: spot starts ~100 s / speed later
            gap_s = (_raw_stamps(spot.files[:1])[0] - _raw_stamps(usdm.files[:1])[0]) / 1e6
            assert gap_s == pytest.approx(99.58, abs=0.05)
            assert srv.pacer.due(spot.first_ns) - srv.pacer.due(usdm.first_ns) == pytest.approx(gap_s / speed, abs=1e-6)
            stamps = [ts for ts, _, _ in usdm.lines()]
            assert srv.pacer.due(stamps[-1]) - srv.pacer.due(stamps[0]) == pytest.approx(514.3 / speed, abs=0.1)
    run(body(), 60)


def test_ns_and_us_spellings_of_one_recording_are_due_at_the_same_times(tiny_captures):
    async def body():
        dues = []
        for sub, unit in (("ns", 1), ("us", 1_000)):
            tiny_captures.write(f"{sub}/spot/spot_btcusdt_20230405.dat.gz", unit)
            async with BinanceReplayServer(tiny_captures.root / sub, {"spot": ["BTCUSDT"]}, speed=2.0) as srv:
                srv.play()
                (cap,) = srv.captures
                dues.append([srv.pacer.due(ts) - srv.pacer.due(cap.first_ns) for ts, _, _ in cap.lines()])
        expected = [(t - tiny_captures.stamps_ns[0]) / 1e9 / 2.0 for t in tiny_captures.stamps_ns]
        assert dues[0] == pytest.approx(expected, abs=1e-9) and dues[1] == pytest.approx(expected, abs=1e-9)
    run(body(), 10)


@pytest.mark.parametrize("unit", [1_000_000, 1_000_000_000], ids=["ms", "s"])
def test_implausible_stamps_are_refused_at_start(tiny_captures, unit: int):
    path = tiny_captures.write("spot/spot_btcusdt_20230405.dat.gz", unit)

    async def body():
        with pytest.raises(ReplayError) as err:
            await BinanceReplayServer(tiny_captures.root, {"spot": ["BTCUSDT"]}).start()
        assert f"{path} line 1: receive stamp {tiny_captures.stamps_ns[0] // unit} " in str(err.value)
    run(body(), 10)


def test_a_unit_change_within_a_file_stops_its_player_loudly(tiny_captures):
    units = [1_000] * len(tiny_captures.stamps_ns)
    units[5] = 1
    tiny_captures.write("spot/spot_btcusdt_20230405.dat.gz", units)

    async def body():
        with capture_logs() as logs:
            async with BinanceReplayServer(tiny_captures.root, {"spot": ["BTCUSDT"]}, speed=math.inf) as srv:
                srv.play()
                await srv.finished.wait()
        (refused,) = [e for e in logs if e["event"] == "replay.binance.refused"]
        assert "line 6" in refused["error"] and "must not mix units" in refused["error"]
        assert not [e for e in logs if e["event"] == "replay.binance.finished"]
    run(body(), 10)


def test_one_set_per_replay_the_data_root_means_2024_and_mixed_sets_are_refused(data_root: Path, tmp_path: Path):
    async def body():
        async with BinanceReplayServer(data_root, {"spot": ["BTCUSDT"]}) as srv:
            assert [p.name for p in srv.captures[0].files] == ["spot_btcusdt_20240808.gz", "spot_btcusdt_20240809.gz"]
        (tmp_path / "spot").mkdir()
        for rel in (f"{SET_2023}/spot/spot_btcusdt_20230405.dat.gz", "exchange_binance/spot/spot_btcusdt_20240808.gz"):
            (tmp_path / "spot" / Path(rel).name).symlink_to(data_root / rel)
        mixed = r"spot_btcusdt_20240808\.gz starts 4\d\d\.\d days after .*not one capture set"
        with pytest.raises(ReplayError, match=mixed):
            await BinanceReplayServer(tmp_path, {"spot": ["BTCUSDT"]}).start()
    run(body(), 30)
