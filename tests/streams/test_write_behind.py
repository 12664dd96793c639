"""Write-behind table views: the engine over them, flushed per batch, gives the same records as
the engine writing through, with one table write per changed key per batch."""

from __future__ import annotations

from collections import UserDict

import pytest

from schemas import encode
from schemas.settings import GroupConfig, RewardConfig
from streams.engine import SymbolEngine
from streams.write_behind import WriteBehind
from stream_cases import make_actions, market_events


class CountingTable(UserDict):
    """A dict that counts assignments and deletions (each is a changelog record in Faust)."""

    def __init__(self):
        super().__init__()
        self.writes = 0

    def __setitem__(self, key, value):
        self.writes += 1
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self.writes += 1
        super().__delitem__(key)


NAMES = ("book", "trades", "index", "pending", "agenda", "closed")


def _feed(events, actions):
    feed = sorted([(e.ts_event, 0, e) for e in events] + [(a.ts_event, 1, a) for a in actions],
                  key=lambda x: (x[0], x[1]))
    return [(kind, encode(ev), ts) for ts, kind, ev in feed]


def _run(feed, batch: int | None):
    tables = {n: CountingTable() for n in NAMES}
    views = {n: WriteBehind(t) for n, t in tables.items()} if batch else tables
    eng = SymbolEngine(RewardConfig(fee_bps=4.5), GroupConfig(group_size=4, grace_s=1.0), **views)
    out = []
    step = batch or 1
    for start in range(0, len(feed), step):
        for kind, raw, ts in feed[start:start + step]:
            if kind == 0:
                out += eng.on_market(raw, topic="market.events", wall_ns=ts)
            else:
                (routed,) = eng.route_action(raw, topic="agent.actions")
                out += eng.on_internal(routed.value, topic="internal", wall_ns=ts)
        if batch:
            for v in views.values():
                v.flush()
    return out, tables


def test_batched_engine_emits_the_same_and_writes_far_less(shared_data):
    events = market_events(shared_data, seconds=60)
    feed = _feed(events, make_actions(events))
    through, t_through = _run(feed, None)
    batched, t_batched = _run(feed, 500)
    assert [(e.topic, e.key, e.value) for e in batched] == [(e.topic, e.key, e.value) for e in through]
    assert any(e.topic == "learn.groups" for e in batched)
    for n in NAMES:  # the state left behind is the same
        assert dict(t_batched[n]) == dict(t_through[n]), n
    w_through = sum(t.writes for t in t_through.values())
    w_batched = sum(t.writes for t in t_batched.values())
    assert w_through > len(events) / 4  # writing through: a write per price change, trade, candidate
    assert w_batched * 10 < w_through, (w_batched, w_through)


def test_view_reads_its_own_writes_and_deletes_until_flushed():
    table = CountingTable()
    table.update({"a": 1, "b": 2})
    table.writes = 0
    v = WriteBehind(table)
    v["c"] = 3
    v["a"] = 10
    del v["b"]
    assert (v["a"], v["c"], "b" in v, v.get("b")) == (10, 3, False, None)
    assert sorted(v.items()) == [("a", 10), ("c", 3)] and len(v) == 2
    with pytest.raises(KeyError):
        del v["b"]
    assert dict(table) == {"a": 1, "b": 2} and table.writes == 0
    assert v.flush() == 3
    assert dict(table) == {"a": 10, "c": 3} and table.writes == 3
    assert v.flush() == 0
