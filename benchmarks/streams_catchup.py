"""Catch-up after downtime: how long each streams engine takes to work off N minutes of market data.

    .venv/bin/python benchmarks/streams_catchup.py [--minutes 10] [--engines faust faust2 flink]
    .venv/bin/python benchmarks/streams_catchup.py --minutes 60     # the full hour

The situation: the daemon was down for ``--minutes`` and the market kept going, so that much
market data and the candidates decided on it wait in the topics when the streams engine comes
back. Engines, each on a fresh topic set of the same broker (found as every benchmark finds it,
``benchmarks/bench_kafka.py``) fed the same input:

- ``faust``: one ``eigenloop streams worker`` process (the baseline of the ratios);
- ``faust2``: two ``eigenloop streams worker`` processes in one consumer group, each with its own
  data folder (the market partitions are split between them);
- ``flink``: ``eigenloop streams flink --local`` (exactly-once, parallelism ``--flink-parallelism``),
  once per ``--flink-intervals`` value (seconds between checkpoints; default: the setting's,
  ``streams.flink_checkpoint_interval_s``), which shows what a short interval costs in catch-up.

**How the hour is built.** There is no hour of recording: the captures in ../shared/data run
7-11 minutes each. Four markets, each its own symbol (so the partitions have something to
spread): spot BTCUSDT (the 2024-08-08/09 captures, then the 2023-04-05 one, whose receive stamps
are microseconds; ``streams.capture.read_capture`` converts them), spot ETHUSDT, and COIN-M
BTCUSD_PERP and ETHUSD_PERP (2024-08-08/09 each). Per symbol the captures are played one after
the other, in a cycle, each copy time-shifted to start 1 ms after the previous copy's last event,
until ``--minutes`` of event time are covered (the price jumps at a seam, as after a gap in a
feed; the rewards do not matter here, the work does). Every record gets a fresh ``event_id``
(copies are new events), ``ts_ingest`` is now (so retention keeps them). Candidates: a group of
8 every 2 s of event time per symbol (``tests/streams/stream_cases.make_actions`` per copy),
all horizons inside the data, so every group closes ``all_in`` on event time.

**Caught up** = every group has been closed and is readable in ``learn.groups`` under
``read_committed`` (the last window closed: the input left after it is under a horizon's worth).
Reported per engine: events (market events + candidates), seconds from the engine's process
start to caught up (start-up included, as after an outage), seconds from its first output to
caught up, events/s over the latter, and ratios against one Faust worker. Faust is at-least-once:
duplicates (same ``event_id``) are counted, not treated as errors. The load (``os.getloadavg``)
is printed with every figure: on a shared 2-core machine they move with whatever else runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests" / "streams"), str(REPO / "tests" / "flink")]

from benchmarks.bench_kafka import bench_settings  # noqa: E402
from benchmarks.flink_vs_faust import fresh_settings, load  # noqa: E402
from daemon.eventlog import EventProducer  # noqa: E402
from daemon.eventlog.connection import topic  # noqa: E402
from flink_harness import CommittedCollector, FlinkJob, flink_ready  # noqa: E402
from schemas.ids import new_event_id  # noqa: E402
from schemas.settings import Settings  # noqa: E402
from stream_cases import make_actions  # noqa: E402
from streams.capture import read_capture  # noqa: E402
from worker_harness import Worker, write_config  # noqa: E402

GROUP_SIZE = 8
S = 1_000_000_000
SPOT, SPOT_2023, COINM = "exchange_binance/spot", "exchange_binance_2023-04/spot", "exchange_binance/coinm_futures"
MARKETS = {  # symbol -> the captures played in a cycle
    "BTCUSDT": [f"{SPOT}/spot_btcusdt_20240808.gz", f"{SPOT}/spot_btcusdt_20240809.gz",
                f"{SPOT_2023}/spot_btcusdt_20230405.dat.gz"],
    "ETHUSDT": [f"{SPOT}/spot_ethusdt_20240808.gz", f"{SPOT}/spot_ethusdt_20240809.gz"],
    "BTCUSD_PERP": [f"{COINM}/cm_btcusd_perp_20240808.gz", f"{COINM}/cm_btcusd_perp_20240809.gz"],
    "ETHUSD_PERP": [f"{COINM}/cm_ethusd_perp_20240808.gz", f"{COINM}/cm_ethusd_perp_20240809.gz"],
}


def pieces(data: Path, minutes: float):
    """(events, candidates) per capture copy, symbol by symbol, ``minutes`` of event time each."""
    span = round(minutes * 60 * S)
    now = time.time_ns()
    for m, (symbol, files) in enumerate(MARKETS.items()):
        start = end = None
        copy = 0
        while start is None or end - start < span:
            path = data / files[copy % len(files)]
            evs, shift = [], None
            for ev in read_capture(path, ingest_ns=now):
                if shift is None:  # this copy begins 1 ms after the previous one ends
                    shift = 0 if end is None else end + 1_000_000 - ev.ts_event
                    start = ev.ts_event if start is None else start
                ts = ev.ts_event + shift
                if ts - start > span:
                    break
                evs.append(ev.model_copy(update={"ts_event": ts, "event_id": new_event_id(ts // 1_000_000)}))
            if not evs:
                break
            end = evs[-1].ts_event
            acts = [a.model_copy(update={"ts_ingest": now})
                    for a in make_actions(evs, group_size=GROUP_SIZE, seed=1000 * (m + 1) + copy)]
            yield evs, acts
            copy += 1


async def feed(settings: Settings, data: Path, minutes: float) -> tuple[int, int, set[str]]:
    """Produce the whole input; (market events, candidates, group ids)."""
    n_ev = n_act = 0
    groups: set[str] = set()
    async with EventProducer(settings) as p:
        for evs, acts in pieces(data, minutes):
            for ev in evs:
                await p.send("market.events", ev)
            for a in acts:
                await p.send("agent.actions", a)
                groups.add(a.group_id)
            n_ev, n_act = n_ev + len(evs), n_act + len(acts)
        await p.flush()
    return n_ev, n_act, groups


async def until_caught_up(settings: Settings, groups: set[str], timeout: float, alive) -> dict:
    """Wall times (perf_counter) of the first output and of the last group, and what was read."""
    topics = {b: topic(settings, b) for b in ("agent.outcomes", "learn.groups")}
    t_first = None
    seen: set[str] = set()
    raw = 0
    deadline = time.perf_counter() + timeout
    async with CommittedCollector(settings, topics) as c:
        while time.perf_counter() < deadline and alive() and not seen >= groups:
            await c.until(lambda r: False, 0.05)  # one short poll
            if t_first is None and (c.records["agent.outcomes"] or c.records["learn.groups"]):
                t_first = time.perf_counter()
            raw = len(c.records["learn.groups"])
            seen = {g.group_id for g in c.records["learn.groups"]}
        distinct = len({g.event_id for g in c.records["learn.groups"]})
    return dict(t_first=t_first, t_done=time.perf_counter() if seen >= groups else None, seen=len(seen & groups),
                raw=raw, distinct=distinct)


def run_engine(engine: str, bootstrap: str, args, interval: float | None = None) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"catchup-{engine}-"))
    label = engine if interval is None else f"{engine} {interval:g}s"
    s = fresh_settings(bootstrap, tmp, GROUP_SIZE)
    t = time.perf_counter()
    n_ev, n_act, groups = asyncio.run(feed(s, args.data, args.minutes))
    print(f"{label}: produced {n_ev} market events + {n_act} candidates ({len(groups)} groups) in "
          f"{time.perf_counter() - t:.0f} s", flush=True)
    procs: list = []
    before = load()
    t_start = time.perf_counter()
    try:
        if engine == "flink":
            os.environ.setdefault("JVM_ARGS", "-Xms256m -Xmx1g -XX:+UseSerialGC")
            extra = [] if interval is None else ["--checkpoint-interval", str(interval)]
            job = FlinkJob(write_config(s, tmp / "cfg.yaml"), tmp / "checkpoints",
                           "--parallelism", str(args.flink_parallelism), *extra)
            procs.append(job.start())
        else:
            for i in range(2 if engine == "faust2" else 1):  # one consumer group, a data folder each
                si = s.model_copy(update={"data_dir": tmp / f"w{i}"})
                procs.append(Worker(si, write_config(si, tmp / f"w{i}.yaml")).start())
        res = asyncio.run(until_caught_up(s, groups, args.timeout, alive=lambda: all(p.alive() for p in procs)))
    finally:
        for p in procs:
            p.stop()
    total = n_ev + n_act
    res.update(engine=label, events=total, groups=len(groups), load=f"{before}; after: {load()}",
               stall_restarts=sum(getattr(p, "stall_exits", 0) for p in procs))
    if res["t_done"] is None:
        res.update(secs=float("nan"), rate=float("nan"), startup=float("nan"))
        tail = "".join(line for p in procs for line in p.lines[-10:])
        print(f"{label}: NOT caught up within {args.timeout:.0f} s: {res['seen']}/{len(groups)} groups\n{tail}",
              flush=True)
        return res
    res.update(secs=res["t_done"] - t_start, startup=res["t_first"] - t_start,
               rate=total / (res["t_done"] - res["t_first"]))
    print(f"{label}: {total} events caught up {res['secs']:.1f} s after start (first output at "
          f"{res['startup']:.1f} s), {res['rate']:.0f} events/s after start-up; groups {res['raw']} records, "
          f"{res['distinct']} distinct; restarts after a stall exit {res['stall_restarts']}  [{res['load']}]",
          flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="minutes of market data behind (60: the hour)")
    ap.add_argument("--engines", nargs="+", default=["faust", "faust2", "flink"], choices=["faust", "faust2", "flink"])
    ap.add_argument("--flink-parallelism", type=int, default=1)
    ap.add_argument("--flink-intervals", type=float, nargs="+", default=[None],
                    help="checkpoint intervals (s) to run the Flink job at (default: the setting's)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per engine")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = ap.parse_args()
    if "flink" in args.engines and flink_ready():
        raise SystemExit(flink_ready())
    results = []
    with bench_settings("catchup") as base:
        for engine in args.engines:
            for interval in args.flink_intervals if engine == "flink" else [None]:
                results.append(run_engine(engine, base.kafka.bootstrap, args, interval))
    ref = next((r for r in results if r["engine"] == "faust"), results[0])
    print(f"\n{args.minutes:g} min of market data behind, {os.cpu_count()} cores")
    print(f"engine       events   s to caught up  s after 1st output  events/s  vs {ref['engine']} (s, events/s)")
    for r in results:
        print(f"{r['engine']:11s} {r['events']:8d}  {r['secs']:14.1f}  {r['secs'] - r['startup']:18.1f}  "
              f"{r['rate']:8.0f}  {r['secs'] / ref['secs']:5.2f}x {r['rate'] / ref['rate']:5.2f}x")


if __name__ == "__main__":
    main()
