"""Streams throughput: events/s through the reward and group path versus raw aiokafka
consumption and a no-op Faust agent on the same topics, what the worker writes to its changelogs,
its restart time, and the p99 window-close lag of idle windows.

    .venv/bin/python benchmarks/streams_throughput.py [--seconds 600]

The broker: as every eigenloop command finds it (``EIGENLOOP_KAFKA__BOOTSTRAP``, the config file,
the local broker of ``eigenloop kafka start``), else a throwaway one (``benchmarks/bench_kafka.py``).
It writes to a fresh topic prefix, so it can run beside anything else on the broker.

1. Loads ``--seconds`` of the recorded spot BTCUSDT capture (book tickers + trades) and a group of
   G candidates every 2 s, all into ``market.events`` / ``agent.actions``.
2. Raw: one aiokafka consumer reads both topics from the start; events/s from first to last record.
3. Worker: ``eigenloop streams worker`` (a real process) is started on the same topics; events/s
   from its "ready" line to the arrival of the last group (every group is complete, so each
   closes on event time, no idle timer involved).
4. No-op Faust agent (``benchmarks/faust_noop_agent.py``, a real process, same App settings,
   ``json.loads`` per record and nothing else) on the same topics: the ceiling for any Faust
   worker per process on this machine. The worker is reported as a fraction of it.
5. Lag: ``--idle-groups`` live groups with one candidate missing, decided at wall-clock now, on a
   stream that then stays silent: lag = group.ts_ingest - window end (wall clock), p50/p99.
6. Changelogs: records and bytes (key + value) the worker wrote to all its changelog topics, per
   market event fed.
7. Restart: the worker is killed (-9) and started again with the whole feed (``--seconds`` of
   market data; the default 600 is the 10 minutes the target names) behind it: seconds from the
   process start to its "ready" line.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests" / "streams")]

from aiokafka import AIOKafkaConsumer  # noqa: E402

from benchmarks.bench_kafka import bench_settings  # noqa: E402
from daemon.eventlog.admin import ensure_topics  # noqa: E402
from daemon.eventlog.connection import client_kwargs, topic  # noqa: E402
from streams.app import faust_app_id  # noqa: E402
from schemas import Action, MarketActionSpec  # noqa: E402
from schemas.settings import GroupConfig, Settings, StreamsSettings  # noqa: E402
from stream_cases import live_feed, make_actions, market_events, run_feed  # noqa: E402
from worker_harness import Collector, Worker, produce, write_config  # noqa: E402


async def raw_rate(settings: Settings, total: int) -> float:
    inputs = (topic(settings, "market.events"), topic(settings, "agent.actions"))
    # assigned, not subscribed: no consumer group to join (a join on a fresh broker once hung here
    # for minutes on "coordinator not available")
    c = AIOKafkaConsumer(auto_offset_reset="earliest", enable_auto_commit=False, **client_kwargs(settings))
    await c.start()
    n, t_first = 0, None
    try:
        tps = await partitions(settings, lambda t: t in inputs)
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        while n < total:
            batch = await c.getmany(timeout_ms=500, max_records=5000)
            for msgs in batch.values():
                if msgs and t_first is None:
                    t_first = time.perf_counter()
                n += len(msgs)
        return n / (time.perf_counter() - t_first)
    finally:
        await c.stop()


def engine_rate(settings: Settings, events, actions) -> float:
    """Events/s of the reward and group path alone: decode + engine over dict tables, in this
    process, no Kafka and no Faust (an upper bound for any worker built on it)."""
    from streams.engine import SymbolEngine

    feed = live_feed(events, actions)
    eng = SymbolEngine(settings.reward, settings.groups, pending={}, agenda={},
                       closed={})
    t = time.perf_counter()
    run_feed(eng, feed)
    return len(feed) / (time.perf_counter() - t)


def noop_agent_rate(config: Path, total: int, timeout: float = 600.0) -> float:
    """Events/s of a Faust agent that only decodes JSON (``benchmarks/faust_noop_agent.py``)."""
    import os
    import threading

    env = dict(os.environ, EIGENLOOP_CONFIG=str(config), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "faust_noop_agent.py"), str(total)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    done = threading.Event()

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "noop agent:" in line:  # faust routes the worker's stdout through its logging
                done.set()
        done.set()  # the process ended

    threading.Thread(target=pump, daemon=True).start()
    try:
        if not done.wait(timeout) or not any("noop agent:" in line for line in lines):
            raise SystemExit("the no-op agent did not finish:\n" + "".join(lines[-40:]))
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    line = next(line for line in lines if "noop agent:" in line)
    return total / float(line.split("noop agent:")[1].split(" in ")[1].split()[0])


async def partitions(settings: Settings, wanted) -> list:
    """Every partition of the topics on the broker for which ``wanted(name)`` holds."""
    from aiokafka import TopicPartition
    from aiokafka.client import AIOKafkaClient

    client = AIOKafkaClient(**client_kwargs(settings))
    await client.bootstrap()
    try:
        meta = await client.fetch_all_metadata()
    finally:
        await client.close()
    return [TopicPartition(t, q) for t in sorted(meta.topics()) if wanted(t)
            for q in sorted(meta.partitions_for_topic(t) or ())]


async def changelog_written(settings: Settings) -> dict[str, tuple[int, int]]:
    """Records and bytes (key + value) in each of the worker's changelog topics, by topic."""
    app_id = faust_app_id(settings)
    tps = await partitions(settings, lambda t: t.startswith(app_id) and t.endswith("-changelog"))
    out = {tp.topic: (0, 0) for tp in tps}
    if not tps:
        return out
    c = AIOKafkaConsumer(enable_auto_commit=False, auto_offset_reset="earliest", **client_kwargs(settings))
    await c.start()
    try:
        c.assign(tps)
        ends = await c.end_offsets(tps)
        todo = {tp for tp in tps if ends[tp] > 0}
        while todo:
            for tp, msgs in (await c.getmany(*todo, timeout_ms=500, max_records=10000)).items():
                n, b = out[tp.topic]
                out[tp.topic] = (n + len(msgs), b + sum(len(m.key or b"") + len(m.value or b"") for m in msgs))
                if msgs and msgs[-1].offset + 1 >= ends[tp]:
                    todo.discard(tp)
        return out
    finally:
        await c.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=600.0, help="seconds of capture to feed")
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--idle-groups", type=int, default=20)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="streams-bench-"))
    with bench_settings("bench", data_dir=tmp, groups=GroupConfig(group_size=args.group_size, grace_s=1.0),
                        streams=StreamsSettings(idle_tick_s=0.25)) as settings:
        measure(args, settings, tmp)


def measure(args: argparse.Namespace, settings: Settings, tmp: Path) -> None:
    asyncio.run(ensure_topics(settings, keep_all=True))  # the capture's timestamps are months old
    events = market_events(args.data, seconds=args.seconds)
    actions = make_actions(events, group_size=args.group_size)
    # a probe scored at once (invalid, so due at t0 = the first event): its outcome marks the moment
    # the worker starts processing, which excludes consumer-group join time from the rate
    probe = Action(group_id="probe", candidate_index=0, group_size=1, policy_version=0, seed=0, prompt_id="probe",
                   symbol=events[0].symbol, exchange="binance", prompt="", completion="", parsed=None,
                   invalid_reason="probe", ts_event=events[0].ts_event, key="probe")
    actions = [probe, *actions]
    n_groups = len({a.group_id for a in actions})  # includes the probe
    total = len(events) + len(actions)
    print(f"feeding {len(events)} market events + {len(actions)} candidates ({n_groups} groups)")
    asyncio.run(produce(settings, [("market.events", e) for e in events] + [("agent.actions", a) for a in actions]))

    raw = asyncio.run(raw_rate(settings, total))
    alone = engine_rate(settings, events, actions)
    config = write_config(settings, tmp / "cfg.yaml")
    noop = noop_agent_rate(config, total)
    worker = Worker(settings, config).start()
    try:
        worker.wait_ready(120)
        t_ready = time.perf_counter()

        async def groups_in():
            async with Collector(settings, ["learn.groups", "agent.outcomes"]) as c:
                if not await c.until(lambda r: any(o.group_id == "probe" for o in r["agent.outcomes"]), 600):
                    raise SystemExit("the worker processed nothing within 600 s of its ready line")
                t_start = time.perf_counter()
                ok = await c.until(lambda r: len({g.group_id for g in r["learn.groups"]}) >= n_groups, 600)
                return ok, t_start, time.perf_counter()

        ok, t_start, t_done = asyncio.run(groups_in())
        if not ok:
            raise SystemExit("the worker did not close every group within 600 s")
        rate = total / (t_done - t_start)
        print(f"worker: ready -> first output {t_start - t_ready:.1f} s (group join), then {t_done - t_start:.1f} s")

        async def idle_lags():
            t_last = events[-1].ts_event
            async with Collector(settings, ["learn.groups"]) as c:
                lags = []
                for k in range(args.idle_groups):
                    t0 = max(time.time_ns(), t_last)
                    gid = f"idle-{k}"
                    acts = [Action(group_id=gid, candidate_index=i, group_size=3, policy_version=1, seed=i,
                                   prompt_id=gid, symbol=events[0].symbol, exchange="binance", prompt="idle",
                                   completion=str(i), ts_event=t0, key=gid,
                                   parsed=MarketActionSpec(side=side, size=1.0, horizon_s=0.5))
                            for i, side in ((0, "long"), (1, "short"))]
                    await produce(settings, [("agent.actions", a) for a in acts])
                    await c.until(lambda r: any(g.group_id == gid for g in r["learn.groups"]), 30)
                    g = next(g for g in c.records["learn.groups"] if g.group_id == gid)
                    lags.append((g.ts_ingest - g.window_end_ns) / 1e9)
                return lags

        lags = sorted(asyncio.run(idle_lags()))
        written = asyncio.run(changelog_written(settings))
        # a crash with the whole feed behind the worker: what a supervisor's restart costs. The
        # broker hands the partitions over only once the dead member's session has timed out
        # (streams.session_timeout_s), so also a clean stop (the member leaves the group): that
        # restart is the worker's own cost, its state recovery
        worker.kill9()
        t_start = time.perf_counter()
        worker.start()
        worker.wait_ready(300)
        restart_s = time.perf_counter() - t_start
        worker.stop()
        t_start = time.perf_counter()
        worker.start()
        worker.wait_ready(300)
        clean_restart_s = time.perf_counter() - t_start
        rebuilt = [line.split("] ")[-1].strip() for line in worker.lines if "market state of" in line]
    finally:
        worker.stop()
    p99 = lags[min(len(lags) - 1, int(round(0.99 * (len(lags) - 1))))]
    n_market = len(events)
    records = sum(n for n, _ in written.values())
    nbytes = sum(b for _, b in written.values())
    print(f"raw aiokafka consumption : {raw:10.0f} events/s")
    print(f"no-op Faust agent (json.loads): {noop:10.0f} events/s")
    print(f"streams worker (rewards+groups): {rate:10.0f} events/s")
    print(f"ratio worker/no-op agent : {rate / noop:10.3f}  (target >= 0.9)")
    print(f"ratio worker/raw         : {rate / raw:10.3f}")
    print(f"engine alone, no Kafka/Faust: {alone:10.0f} events/s (ratio to raw {alone / raw:.3f}: the ceiling "
          f"for any worker on these functions)")
    print(f"idle window-close lag    : p50 {statistics.median(lags):.3f} s, p99 {p99:.3f} s, max {lags[-1]:.3f} s "
          f"over {len(lags)} windows  (target p99 <= 0.3 s)")
    print(f"changelog writes         : {records} records, {nbytes} bytes for {n_market} market events: "
          f"{records / n_market:.3f} records and {nbytes / n_market:.0f} bytes per market event "
          f"(target <= 0.05 records)")
    for topic, (n, b) in sorted(written.items()):
        print(f"  {topic.removeprefix(faust_app_id(settings) + '-'):40s} {n:8d} records {b:10d} bytes")
    print(f"restart to ready, {args.seconds:.0f} s of market data behind: after kill -9 {restart_s:.2f} s "
          f"(includes the session timeout, {settings.streams.session_timeout_s:.0f} s), after a clean stop "
          f"{clean_restart_s:.2f} s (target <= 5 s)")
    for line in rebuilt:
        print(f"  {line}")


if __name__ == "__main__":
    main()
