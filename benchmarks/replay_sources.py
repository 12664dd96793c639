"""Throughput of the sources against the local replay (server and sources in one process).

    python benchmarks/replay_sources.py --speed 20 --seconds 30 --symbols BTC/USDT ETH/USDT

Prints one JSON object: records per second by type, process CPU seconds, peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from collections import Counter

from daemon.sources.market import MarketSource
from daemon.sources.social import JetstreamSource
from daemon.tools.capture_servers import ReplayCluster


async def main(args: argparse.Namespace) -> dict[str, object]:
    counts: Counter[str] = Counter()
    dead: Counter[str] = Counter()

    async def sink(event) -> None:
        counts[event.type] += 1

    async def dead_letter(event) -> None:
        dead[event.reason[:60]] += 1

    async with ReplayCluster(args.data, speed=args.speed, symbols=args.symbols, markets=args.markets,
                             depth="order_book" in args.channels) as cluster:
        settings = cluster.sources_settings()
        market = MarketSource.from_settings(settings, sink, dead_letter=dead_letter, channels=args.channels)
        social = JetstreamSource.from_settings(settings, sink, dead_letter=dead_letter)
        async with market, social:
            cpu0, t0 = time.process_time(), time.perf_counter()
            await asyncio.sleep(args.seconds)  # a benchmark runs for a fixed time: nothing to wait on
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            states = [f"{s.exchange}:{s.symbol}:{s.channel} up={s.up} drops={s.drops}" for s in market.states]
    return {
        "speed": args.speed, "seconds": round(wall, 2), "cpu_s": round(cpu, 2),
        "records_per_s": {k: round(v / wall, 1) for k, v in sorted(counts.items())},
        "total_per_s": round(sum(counts.values()) / wall, 1), "dead_letters": dict(dead),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "streams": states,
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--speed", type=float, default=20.0)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--symbols", nargs="+", default=["BTC/USDT", "ETH/USDT"])
    p.add_argument("--markets", nargs="+", default=["spot", "usdm"])
    p.add_argument("--channels", nargs="+", default=["trades", "bids_asks"])
    print(json.dumps(asyncio.run(main(p.parse_args())), indent=1))
