"""Faust worker vs PyFlink job: events/s through the reward and group path, parallelism 1 and 2.

    EIGENLOOP_KAFKA_BOOTSTRAP=host:port .venv/bin/python benchmarks/flink_vs_faust.py [--seconds 120]

(or `make bench-flink`; without the variable the broker of ``eigenloop kafka start`` is used).
Needs `make flink-setup`. Each run gets a fresh topic prefix, so it can run beside other work.

Input: ``--seconds`` of each recorded Binance spot capture in ../shared/data (BTCUSDT and
ETHUSDT, two days each; the second day's files are relabelled ``<SYMBOL>-D2`` so that there are
four independent symbols for the parallel runs to spread over), plus a group of G candidates
every 2 s of event time per symbol. Everything is in the topics before an engine starts.

Rate: both engines stamp every outcome and group with the wall time at which they emitted it
(``ts_ingest``). Rate = input events between each symbol's first and last output (in event
time) / (last output's stamp - first output's stamp), so start-up (JVM, Python workers,
consumer-group joins) is excluded for both. Faust runs ``P`` worker processes in one consumer
group (at-least-once); Flink runs one local mini-cluster at parallelism ``P`` (exactly-once
sinks, checkpoints at ``streams.flink_checkpoint_interval_s``, the production defaults; group
latency per interval: ``benchmarks/flink_latency.py``). The machine's load is printed: on a
shared 2-core machine the figures move with whatever else runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests" / "streams"), str(REPO / "tests" / "flink")]

from daemon.eventlog.admin import ensure_topics  # noqa: E402
from daemon.eventlog.connection import bootstrap_for, topic  # noqa: E402
from schemas.settings import GroupConfig, KafkaSettings, Settings, StreamsSettings  # noqa: E402
from streams.capture import read_capture  # noqa: E402
from flink_harness import CommittedCollector, FlinkJob, flink_ready  # noqa: E402
from stream_cases import make_actions  # noqa: E402
from worker_harness import Worker, produce, write_config  # noqa: E402

CAPTURES = {  # file -> symbol label
    "spot_btcusdt_20240808.gz": None, "spot_ethusdt_20240808.gz": None,
    "spot_btcusdt_20240809.gz": "-D2", "spot_ethusdt_20240809.gz": "-D2",
}
S = 1_000_000_000


class RunFailed(RuntimeError):
    """One engine/parallelism run did not close every group; the others still run."""


def recorded_input(data: Path, seconds: float, group_size: int):
    """Market events and candidates of four symbols, ingested now (retention keeps them)."""
    now = time.time_ns()
    events, actions = [], []
    for n, (name, suffix) in enumerate(CAPTURES.items()):
        evs, first = [], None
        for ev in read_capture(data / "exchange_binance" / "spot" / name, ingest_ns=now):
            first = ev.ts_event if first is None else first
            if ev.ts_event - first > seconds * S:
                break
            if suffix:
                ev = ev.model_copy(update={"symbol": ev.symbol + suffix, "key": ev.symbol + suffix})
            evs.append(ev)
        events += evs
        actions += [a.model_copy(update={"ts_ingest": now})
                    for a in make_actions(evs, group_size=group_size, seed=n + 1)]
    return events, actions


def rate(events, actions, outputs) -> tuple[float, float]:
    """(events/s, seconds measured) from the outputs' emission stamps, see the module doc."""
    stamps = [o.ts_ingest for o in outputs]
    t0, t1 = min(stamps), max(stamps)
    symbol_of = {a.group_id: a.symbol for a in actions}
    span: dict[str, list[int]] = {}
    for o in outputs:
        sym = symbol_of[o.group_id]
        lo, hi = span.get(sym, (o.ts_event, o.ts_event))
        span[sym] = [min(lo, o.ts_event), max(hi, o.ts_event)]
    n = sum(1 for e in [*events, *actions] if e.symbol in span and span[e.symbol][0] < e.ts_event <= span[e.symbol][1])
    return n / ((t1 - t0) / 1e9), (t1 - t0) / 1e9


def fresh_settings(bootstrap: str, tmp: Path, group_size: int) -> Settings:
    s = Settings(data_dir=tmp, kafka=KafkaSettings(bootstrap=bootstrap, topic_prefix=f"fvf{uuid.uuid4().hex[:8]}."),
                 groups=GroupConfig(group_size=group_size, grace_s=1.0), streams=StreamsSettings(idle_tick_s=0.25))
    asyncio.run(ensure_topics(s, keep_all=True))  # the capture's timestamps are months old
    return s


async def collect_groups(settings: Settings, group_ids: set[str], timeout: float, alive) -> list:
    """Every outcome and group, deduplicated by event_id, once all of ``group_ids`` are read."""
    topics = {b: topic(settings, b) for b in ("agent.outcomes", "learn.groups")}
    async with CommittedCollector(settings, topics) as c:
        ok = await c.until(lambda r: {g.group_id for g in r["learn.groups"]} >= group_ids, timeout, alive=alive)
        if not ok:
            closed = {g.group_id for g in c.records["learn.groups"]}
            raise RunFailed(f"only {len(closed)}/{len(group_ids)} groups within {timeout:.0f} s, "
                            f"open: {sorted(set(group_ids) - closed)[:10]}")
        unique = {}
        for rec in c.records["agent.outcomes"] + c.records["learn.groups"]:
            unique.setdefault(rec.event_id, rec)  # Faust is at-least-once: dedupe by event_id
        return list(unique.values())


def run_faust(bootstrap: str, events, actions, parallelism: int, group_size: int, timeout: float) -> list:
    tmp = Path(tempfile.mkdtemp(prefix="fvf-faust-"))
    s = fresh_settings(bootstrap, tmp, group_size)
    asyncio.run(produce(s, [("market.events", e) for e in events] + [("agent.actions", a) for a in actions]))
    workers = []
    try:
        for i in range(parallelism):  # one consumer group; each worker its own data folder
            si = s.model_copy(update={"data_dir": tmp / f"w{i}"})
            workers.append(Worker(si, write_config(si, tmp / f"w{i}.yaml")).start())
        for w in workers:
            w.wait_ready(180)
        try:
            return asyncio.run(collect_groups(s, {a.group_id for a in actions}, timeout,
                                        alive=lambda: all(w.alive() for w in workers)))
        except RunFailed as e:
            raise RunFailed(f"{e}; last worker lines:\n" + "".join(l for w in workers for l in w.lines[-15:]))
    finally:
        for w in workers:
            w.stop()


def run_flink(bootstrap: str, events, actions, parallelism: int, group_size: int, timeout: float) -> list:
    tmp = Path(tempfile.mkdtemp(prefix="fvf-flink-"))
    s = fresh_settings(bootstrap, tmp, group_size)
    asyncio.run(produce(s, [("market.events", e) for e in events] + [("agent.actions", a) for a in actions]))
    os.environ.setdefault("JVM_ARGS", "-Xms256m -Xmx1g -XX:+UseSerialGC")  # full JIT, unlike the tests
    job = FlinkJob(write_config(s, tmp / "cfg.yaml"), tmp / "checkpoints", "--parallelism", str(parallelism))
    try:
        job.start().wait_submitted(300)
        try:
            return asyncio.run(collect_groups(s, {a.group_id for a in actions}, timeout, alive=job.alive))
        except RunFailed as e:
            raise RunFailed(f"{e}; job output:\n{job.tail(15)}")
    finally:
        job.stop()


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min) {five:.1f} (5 min) on {os.cpu_count()} cores"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0, help="seconds of each capture to feed")
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--parallelism", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--engines", nargs="+", default=["faust", "flink"], choices=["faust", "flink"])
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = ap.parse_args()
    if "flink" in args.engines and flink_ready():
        raise SystemExit(flink_ready())
    bootstrap = bootstrap_for(Settings())
    events, actions = recorded_input(args.data, args.seconds, args.group_size)
    print(f"input: {len(events)} market events + {len(actions)} candidates "
          f"({len({a.group_id for a in actions})} groups of {args.group_size}) over {len(CAPTURES)} symbols")
    results = []
    for engine in args.engines:
        for p in args.parallelism:
            before = load()
            try:
                outputs = (run_faust if engine == "faust" else run_flink)(bootstrap, events, actions, p,
                                                                          args.group_size, args.timeout)
            except RunFailed as e:
                print(f"{engine:5s} parallelism {p}: FAILED: {e}", flush=True)
                results.append((engine, p, float("nan"), 0.0, before, load()))
                continue
            r, secs = rate(events, actions, outputs)
            results.append((engine, p, r, secs, before, load()))
            print(f"{engine:5s} parallelism {p}: {r:8.0f} events/s over {secs:5.1f} s  "
                  f"[before: {before}; after: {load()}]", flush=True)
    print("\nengine  parallelism  events/s")
    for engine, p, r, *_ in results:
        print(f"{engine:6s}  {p:11d}  {r:8.0f}")


if __name__ == "__main__":
    main()
