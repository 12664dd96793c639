"""Group latency of the Flink job per checkpoint interval, against the Faust worker, in one run.

    .venv/bin/python benchmarks/flink_latency.py [--intervals 5 0.5] [--live-seconds 60] [--backlog-seconds 120]

Needs `make flink-setup`. The broker is found as every benchmark finds it (``bench_kafka``); each
engine run gets a fresh topic prefix. Runs, in this order: the Faust worker, then the Flink job at
each ``--intervals`` value (seconds between checkpoints; the first is the baseline of the ratios).

Each run has two phases on the recorded spot BTCUSDT capture:

1. **Backlog** (``--backlog-seconds`` of capture and a group of 8 candidates every 2 s, in the
   topics before the engine starts): throughput in events/s from the outputs' emission stamps
   (``benchmarks.flink_vs_faust.rate``: start-up excluded) and CPU seconds per 1,000 events.
2. **Live** (the next ``--live-seconds`` of the capture, sent at its recorded pace with event time
   shifted to now, and a group of 8 every second, horizons 0.5-1 s): the latency of each group
   from its *closing input* (the later of its last candidate and the first market event at or
   past its last horizon, i.e. the record that lets it close all_in) being sent to the group
   being readable under ``isolation.level=read_committed``, p50/p99; and the engine's CPU
   (cores: CPU seconds of its whole process tree / wall seconds).

For Flink, also the checkpoints: count and duration (``checkpointDuration`` of the job
manager's "Completed checkpoint" log lines) over the whole run. The machine's load is printed
with each run: on a shared 2-core machine every figure moves with whatever else runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import psutil
from aiokafka import AIOKafkaConsumer

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests" / "streams"), str(REPO / "tests" / "flink")]

from benchmarks.bench_kafka import bench_settings  # noqa: E402
from benchmarks.flink_vs_faust import collect_groups, fresh_settings, load, rate  # noqa: E402
from daemon.eventlog import EventProducer  # noqa: E402
from daemon.eventlog.connection import client_kwargs, topic  # noqa: E402
from schemas import decode  # noqa: E402
from flink_harness import FlinkJob, flink_ready  # noqa: E402
from stream_cases import make_actions, market_events  # noqa: E402
from streams.rewards import horizon_end_ns  # noqa: E402
from worker_harness import Worker, produce, write_config  # noqa: E402

GROUP_SIZE = 8
CHECKPOINT_LINE = re.compile(r"Completed checkpoint \d+ .*checkpointDuration=(\d+) ms")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its live descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else ():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "CPU model unknown"


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] if s else float("nan")


def inputs(data: Path, backlog_s: float, live_s: float):
    """(backlog events, backlog actions, live events, live actions); live ones in recorded time."""
    now = time.time_ns()
    events = market_events(data, seconds=backlog_s + live_s, ingest_ns=now)
    cut = events[0].ts_event + round(backlog_s * 1e9)
    backlog = [e for e in events if e.ts_event <= cut]
    live = [e for e in events if e.ts_event > cut]
    b_actions = [a.model_copy(update={"ts_ingest": now}) for a in make_actions(backlog, group_size=GROUP_SIZE)]
    l_actions = make_actions(live, every_s=1.0, group_size=GROUP_SIZE, horizon_s=1.0, seed=7)
    return backlog, b_actions, live, l_actions


async def live_phase(settings, live, actions, pid: int) -> tuple[list[float], float, int]:
    """Send the live feed at its recorded pace; (group latencies s, engine cores, groups open)."""
    items = sorted([(e.ts_event, 0, e) for e in live] + [(a.ts_event, 1, a) for a in actions],
                   key=lambda x: (x[0], x[1]))
    t_first = items[0][0]
    start_wall = time.time_ns() + 1_000_000_000
    shift = start_wall - t_first
    sent_market: list[tuple[int, int]] = []  # (ts_event shifted, wall ns sent)
    sent_candidate: dict[str, int] = {}  # group -> wall ns its last candidate was sent
    ends: dict[str, int] = {}  # group -> its last horizon end (shifted)
    for a in actions:
        ends[a.group_id] = max(ends.get(a.group_id, 0), horizon_end_ns(a) + shift)
    seen: dict[str, int] = {}

    async def send_all():
        async with EventProducer(settings) as p:
            for ts, kind, ev in items:
                delay = (start_wall + (ts - t_first) - time.time_ns()) / 1e9
                if delay > 0:
                    await asyncio.sleep(delay)  # the recorded pace, not synchronisation
                now = time.time_ns()
                ev = ev.model_copy(update={"ts_event": ts + shift, "ts_ingest": now})
                if kind == 0:
                    await p.send("market.events", ev)
                    sent_market.append((ev.ts_event, now))
                else:
                    await p.send("agent.actions", ev)
                    sent_candidate[ev.group_id] = now
            await p.flush()

    async def watch(c: AIOKafkaConsumer, until_ns: int):
        # each record stamped as soon as the consumer hands it over (a short poll)
        while time.time_ns() < until_ns and len(seen) < len(ends):
            batch = await c.getmany(timeout_ms=20)
            now = time.time_ns()
            for msgs in batch.values():
                for m in msgs:
                    gid = decode(m.value).group_id
                    if gid in ends:  # the backlog's groups (read first) are not live ones
                        seen.setdefault(gid, now)

    c = AIOKafkaConsumer(topic(settings, "learn.groups"), auto_offset_reset="earliest", enable_auto_commit=False,
                         isolation_level="read_committed", **client_kwargs(settings))
    await c.start()
    try:
        cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
        sender = asyncio.create_task(send_all())
        watcher = asyncio.create_task(watch(c, start_wall + (items[-1][0] - t_first) + 30_000_000_000))
        await sender
        cores = (cpu_seconds(pid) - cpu0) / (time.perf_counter() - wall0)
        await watcher
    finally:
        await c.stop()
    lat = []
    for gid, end in ends.items():
        if gid not in seen:
            continue
        closing_market = next((w for ts, w in sent_market if ts >= end), None)
        if closing_market is None:
            continue  # no market event past its horizon was sent: it closes by the idle timer
        lat.append((seen[gid] - max(closing_market, sent_candidate[gid])) / 1e9)
    return lat, cores, len(ends) - len(seen)


def one_run(name: str, base, tmp: Path, data, interval: float | None, timeout: float) -> dict:
    backlog, b_actions, live, l_actions = data
    s = fresh_settings(base.kafka.bootstrap, tmp, GROUP_SIZE)
    asyncio.run(produce(s, [("market.events", e) for e in backlog] + [("agent.actions", a) for a in b_actions]))
    before = load()
    if interval is None:
        proc = Worker(s, write_config(s, tmp / "cfg.yaml")).start()
        proc.wait_ready(180)
        log_dir = None
    else:
        os.environ.setdefault("JVM_ARGS", "-Xms256m -Xmx1g -XX:+UseSerialGC")
        proc = FlinkJob(write_config(s, tmp / "cfg.yaml"), tmp / "checkpoints", "--checkpoint-interval", str(interval))
        proc.start().wait_submitted(300)
        log_dir = tmp / "log"  # streams.flink_job puts the JVM's log beside the checkpoints
    try:
        pid = proc.proc.pid
        cpu0 = cpu_seconds(pid)
        outputs = asyncio.run(collect_groups(s, {a.group_id for a in b_actions}, timeout, proc.alive))
        backlog_cpu = cpu_seconds(pid) - cpu0
        r, secs = rate(backlog, b_actions, outputs)
        lat, cores, missing = asyncio.run(live_phase(s, live, l_actions, pid))
    finally:
        proc.stop()
    ckpt = []
    if log_dir is not None:
        for f in log_dir.glob("*.log*"):
            ckpt += [float(m.group(1)) for m in CHECKPOINT_LINE.finditer(f.read_text(errors="replace"))]
    res = dict(name=name, rate=r, secs=secs, cpu_per_k=1000 * backlog_cpu / (len(backlog) + len(b_actions)),
               lat=lat, cores=cores, missing=missing, ckpt=ckpt, load=f"{before}; after: {load()}")
    ck = (f", checkpoints {len(ckpt)}: duration p50 {pct(ckpt, .5):.0f} ms p99 {pct(ckpt, .99):.0f} ms"
          if ckpt else "")
    print(f"{name:12s} backlog {r:6.0f} events/s, {res['cpu_per_k']:.2f} CPU s per 1k events; live: latency p50 "
          f"{pct(lat, .5):.3f} s p99 {pct(lat, .99):.3f} s over {len(lat)} groups ({missing} not closed), "
          f"{cores:.2f} cores{ck}  [{res['load']}]", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--intervals", type=float, nargs="+", default=[5.0, 0.5],
                    help="Flink checkpoint intervals, seconds; the first is the baseline")
    ap.add_argument("--backlog-seconds", type=float, default=120.0)
    ap.add_argument("--live-seconds", type=float, default=60.0)
    ap.add_argument("--no-faust", action="store_true")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = ap.parse_args()
    if flink_ready():
        raise SystemExit(flink_ready())
    data = inputs(args.data, args.backlog_seconds, args.live_seconds)
    print(f"backlog: {len(data[0])} market events + {len(data[1])} candidates; live: {len(data[2])} market "
          f"events + {len(data[3])} candidates over {args.live_seconds:.0f} s; {os.cpu_count()} cores, {cpu_model()}")
    runs = ([] if args.no_faust else [("faust", None)]) + [(f"flink {i:g}s", i) for i in args.intervals]
    results = []
    with bench_settings("flat") as base:
        for name, interval in runs:
            results.append(one_run(name, base, Path(tempfile.mkdtemp(prefix="flink-latency-")), data, interval,
                                   args.timeout))
    flink = [r for r in results if r["name"].startswith("flink")]
    baseline = flink[0]
    faust = next((r for r in results if r["name"] == "faust"), None)
    print("\nrun          p50 s   p99 s   events/s  cores(live)  vs " + baseline["name"]
          + (" (p50, events/s, cores)" + ("  vs faust (p50, events/s)" if faust else "")))
    for r in results:
        line = (f"{r['name']:12s} {pct(r['lat'], .5):6.3f}  {pct(r['lat'], .99):6.3f}  {r['rate']:8.0f}  "
                f"{r['cores']:10.2f}   {pct(r['lat'], .5) / pct(baseline['lat'], .5):5.2f}x "
                f"{r['rate'] / baseline['rate']:5.2f}x {r['cores'] / baseline['cores']:5.2f}x")
        if faust:
            line += f"   {pct(r['lat'], .5) / pct(faust['lat'], .5):6.2f}x {r['rate'] / faust['rate']:5.2f}x"
        print(line)
    if any(r["ckpt"] for r in flink):
        print("checkpoint duration p50 / p99 ms: "
              + ", ".join(f"{r['name']} {pct(r['ckpt'], .5):.0f} / {pct(r['ckpt'], .99):.0f}" for r in flink))


if __name__ == "__main__":
    main()
