"""The sink on the real broker and the real chdb engine: a crash between insert and commit,
then a restart, leaves every event exactly once, in the tables and in the view aggregates."""

from __future__ import annotations

import asyncio

import pytest

from daemon.ops.analytics.access import reader
from daemon.ops.analytics.sink import SinkStats, run_sink
from schemas.settings import Settings

from .helpers import build_log, counts_of, produce

pytestmark = pytest.mark.kafka


class Crash(Exception):
    """Stands for the process dying after a batch was inserted, before its offsets were committed."""


def _counts(settings: Settings, tables: list[str]) -> dict[str, tuple[int, int]]:
    """Per table: (rows as stored, without FINAL; distinct event ids)."""
    with reader(settings) as store:
        out = {}
        for t in tables:
            key = "origin" if t == "dead_letters" else "event_id"
            n, u = store.query(f"SELECT count(), uniqExact({key}) FROM eigenloop.{t}").rows[0]
            out[t] = (n, u)
        return out


def test_restarted_sink_leaves_no_duplicates(analytics_settings: Settings):
    s = analytics_settings
    log = build_log(30)
    expected = counts_of(log)
    garbage = 2
    expected.tables["dead_letters"] = garbage

    async def scenario() -> tuple[SinkStats, SinkStats]:
        await produce(s, log, garbage=garbage)

        async def crash_after_first_insert(stats: SinkStats) -> None:
            raise Crash()

        with pytest.raises(Crash):
            await run_sink(s, asyncio.Event(), serve=False, before_commit=crash_after_first_insert)
        first = SinkStats()

        stop = asyncio.Event()
        target = sum(expected.tables.values())

        async def stop_when_all_in(stats: SinkStats) -> None:
            # the restarted sink re-reads the uncommitted batch: inserted + skipped covers the log
            if stats.total + first.total >= target or stats.total + stats.duplicates >= target:
                stop.set()

        second = await asyncio.wait_for(run_sink(s, stop, serve=False, before_commit=stop_when_all_in), 90)
        return first, second

    _, second = asyncio.run(scenario())
    assert second.duplicates > 0, "the restart should have re-read the batch the crash left uncommitted"
    got = _counts(s, list(expected.tables))
    for table, n in expected.tables.items():
        assert got[table] == (n, n), f"{table}: stored {got[table][0]} rows, {got[table][1]} ids, want {n}"
    with reader(s) as store:
        # the views saw inserts, not merges: exact only because nothing was inserted twice
        assert store.query("SELECT sum(n) FROM eigenloop.reward_minute").rows[0][0] == expected.outcomes
        assert store.query("SELECT sum(updates) FROM eigenloop.policy_timeline").rows[0][0] == \
            expected.tables["block_updates"]
        assert store.query("SELECT sum(trades) FROM eigenloop.market_minute").rows[0][0] == \
            expected.tables["market_trades"]
        reasons = {r[0] for r in store.query("SELECT reason FROM eigenloop.dead_letters").rows}
        assert all("not valid JSON" in r for r in reasons)
        lag = store.query("SELECT count() FROM eigenloop.consumer_lag").rows[0][0]
        assert lag > 0
