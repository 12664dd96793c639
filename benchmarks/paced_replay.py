"""What pacing the replay by the loop costs: frames per second through ccxt.pro into the market
source, paced (one line in flight, each acknowledged) against the same source reading the
unpaced replay as fast as it can (``speed=inf``), in one process.

    .venv/bin/python benchmarks/paced_replay.py [--span 20] [--symbols BTC/USDT]

The unpaced baseline plays the whole capture of the symbols and loses what ccxt collapses (book
tickers that arrive faster than a stream reads them); the paced run plays the first ``--span``
seconds and loses nothing. Prints one JSON object: frames/s and records per frame for each, and
the paced/unpaced rate ratio. The daemon's own work per frame (Kafka, context, decisions) comes
on top of the paced rate in ``eigenloop run``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections import Counter
from pathlib import Path

from daemon.sources.market import MarketSource
from daemon.sources.pace import PaceLink
from daemon.tools.capture_servers import ReplayCluster


async def paced(args: argparse.Namespace) -> dict[str, float]:
    counts: Counter[str] = Counter()
    ended = asyncio.Event()

    async def sink(event) -> None:
        counts[event.type] += 1

    async def on_end(frames: int) -> None:
        ended.set()

    async with ReplayCluster(args.data, speed=None, symbols=args.symbols, markets=args.markets, social=False,
                             span_s=args.span) as cluster:
        source = MarketSource(cluster.exchanges, sink)
        link = PaceLink(cluster.pace_url, [source], actor_idle=lambda: True, on_end=on_end)
        await source.start()
        await link.start()
        await cluster.binance.wait_subscribed([], 30)
        t0 = time.perf_counter()
        await ended.wait()
        wall = time.perf_counter() - t0
        frames = cluster.lockstep.released
        await link.stop()
        await source.stop()
    return {"frames": frames, "wall_s": round(wall, 2), "frames_per_s": round(frames / wall, 1),
            "records_per_frame": round(sum(counts.values()) / frames, 4)}


async def unpaced(args: argparse.Namespace) -> dict[str, float]:
    counts: Counter[str] = Counter()

    async def sink(event) -> None:
        counts[event.type] += 1

    async with ReplayCluster(args.data, speed=math.inf, symbols=args.symbols, markets=args.markets,
                             social=False) as cluster:
        source = MarketSource(cluster.exchanges, sink)
        await source.start()
        t0 = time.perf_counter()
        await cluster.wait_finished()
        wall = time.perf_counter() - t0
        frames = sum(cluster.binance.cursors.values())
        await source.stop()
    return {"frames": frames, "wall_s": round(wall, 2), "frames_per_s": round(frames / wall, 1),
            "records_per_frame": round(sum(counts.values()) / frames, 4)}


async def main(args: argparse.Namespace) -> dict[str, object]:
    p, u = await paced(args), await unpaced(args)
    return {"paced": p, "unpaced": u, "paced_over_unpaced_rate": round(p["frames_per_s"] / u["frames_per_s"], 3)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--span", type=float, default=20.0, help="seconds of recorded time, paced")
    ap.add_argument("--symbols", nargs="+", default=["BTC/USDT"])
    ap.add_argument("--markets", nargs="+", default=["spot"])
    print(json.dumps(asyncio.run(main(ap.parse_args()))))
