"""Helpers for the analytics tests: a small but complete learning log on the real broker, and
a way to run the real ``eigenloop`` CLI as another process against the same settings."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from schemas import (Action, BlockUpdate, BookTicker, GRPOGroup, MarketTrade, Outcome, Prompt, SnapshotMarker,
                     deterministic_event_id)
from schemas.settings import Settings

REPO = Path(__file__).resolve().parents[2]
# the installed console script, as an SRE runs it
EIGENLOOP = [str(Path(sys.executable).parent / "eigenloop")]


@dataclass
class LogCounts:
    """Rows each table must end with, once, whatever the sink went through."""

    tables: dict[str, int]

    @property
    def outcomes(self) -> int:
        return self.tables["outcomes"]


def build_log(n_groups: int, group_size: int = 4, blocks: int = 2, seed: int = 7,
              version_offset: int = 0) -> list[tuple[str, object]]:
    """(catalogue topic, event) pairs of a plausible run: prompts, candidates, rewards, closed
    groups (every fifth skipped for zero spread), block updates, a snapshot, market data."""
    rng = random.Random(seed)
    out: list[tuple[str, object]] = []
    for g in range(n_groups):
        v = version_offset + g
        gid = f"grp-{seed}-{g}"
        sym = ("BTC/USDT", "ETH/USDT")[g % 2]
        out.append(("agent.prompts", Prompt(prompt_id=gid, symbol=sym, text="ctx", policy_version=v, key=gid)))
        skipped = g % 5 == 4
        rewards = [0.5] * group_size if skipped else [rng.gauss(0.01 * g, 1.0) for _ in range(group_size)]
        for i, r in enumerate(rewards):
            a = Action(group_id=gid, candidate_index=i, group_size=group_size, policy_version=v, seed=i,
                       prompt_id=gid, symbol=sym, prompt="ctx", completion=f"long {i}", key=gid)
            out.append(("agent.actions", a))
            # outcomes carry content-derived ids, as the streams processor emits them
            oid = deterministic_event_id(a.ts_event // 1_000_000, gid, i)
            out.append(("agent.outcomes", Outcome(event_id=oid, group_id=gid, candidate_index=i, group_size=group_size,
                                                  action_event_id=a.event_id, symbol=sym, policy_version=v,
                                                  reward=r, key=gid)))
        mean = sum(rewards) / len(rewards)
        out.append(("learn.groups", GRPOGroup(
            group_id=gid, symbol=sym, policy_version=v, prompt="ctx", completions=["c"] * group_size,
            candidate_indices=list(range(group_size)), rewards=rewards,
            advantages=[0.0] * group_size if skipped else [r - mean for r in rewards], group_size=group_size,
            status="skipped" if skipped else "complete", skip_reason="zero_spread" if skipped else None, key=gid)))
        if not skipped:
            for b in range(blocks):
                out.append(("learn.updates", BlockUpdate(block=b, step=g, group_id=gid, loss=2.0 / (g + 1) + 0.1 * b,
                                                         grad_norm=0.3, checksum=f"{g:08x}", policy_version=v + 1,
                                                         key=str(b))))
        out.append(("market.events", MarketTrade(exchange="binance", symbol=sym, trade_id=str(g), price=100.0 + g,
                                                 qty=0.1, side="buy", key=sym)))
        out.append(("market.events", BookTicker(exchange="binance", symbol=sym, bid_price=99.9 + g, bid_qty=1.0,
                                                ask_price=100.1 + g, ask_qty=1.0, key=sym)))
    out.append(("learn.snapshots", SnapshotMarker(snapshot_id="s1", path="/x", policy_version=n_groups, step=n_groups,
                                                  checksum="abc", key="s1")))
    return out


def counts_of(log: list[tuple[str, object]]) -> LogCounts:
    from daemon.ops.analytics.ddl import BY_RECORD

    tables: dict[str, int] = {}
    for _, ev in log:
        name = BY_RECORD[type(ev)].name
        tables[name] = tables.get(name, 0) + 1
    return LogCounts(tables)


async def produce(settings: Settings, log: list[tuple[str, object]], garbage: int = 0) -> None:
    """Send the log; ``garbage`` undecodable records go to agent.actions (they must be dead-lettered)."""
    from daemon.eventlog import EventProducer

    async with EventProducer(settings) as p:
        for topic, ev in log:
            await p.send(topic, ev)  # type: ignore[arg-type]
        for i in range(garbage):
            await p.raw.send(p.physical("agent.actions"), b"{not json " + str(i).encode(), key=b"junk")
        await p.flush()


def produce_sync(settings: Settings, log: list[tuple[str, object]], garbage: int = 0) -> None:
    asyncio.run(produce(settings, log, garbage))


def cli_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "EIGENLOOP_DATA_DIR": str(settings.data_dir),
        "EIGENLOOP_KAFKA__BOOTSTRAP": settings.kafka.bootstrap or "",
        "EIGENLOOP_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "EIGENLOOP_ANALYTICS__DSN": settings.analytics.dsn,
        "EIGENLOOP_ANALYTICS__FLUSH_S": str(settings.analytics.flush_s),
        "EIGENLOOP_LOG_LEVEL": "warning",
    })
    env.pop("EIGENLOOP_CONFIG", None)
    return env


def run_cli(settings: Settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EIGENLOOP, *args], cwd=REPO, env=cli_env(settings), capture_output=True, text=True,
                          timeout=timeout)
