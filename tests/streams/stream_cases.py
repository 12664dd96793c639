"""Shared inputs for the streams tests: recorded Binance events and a deterministic set of actions,
plus the expected outcomes and groups from the pure functions on the *full* recorded path."""

from __future__ import annotations

import random
from pathlib import Path

from schemas import Action, BookTicker, MarketActionSpec, encode
from schemas.settings import GroupConfig, RewardConfig
from streams.capture import read_capture
from streams.grouping import close_group, window_end_ns
from streams.rewards import BookPath, horizon_end_ns, score_action, to_outcome

CAPTURE = "exchange_binance/spot/spot_btcusdt_20240808.gz"
S = 1_000_000_000


def market_events(shared: Path, *, seconds: float, shift_ns: int = 0, ingest_ns: int | None = None):
    evs = []
    first = None
    for ev in read_capture(shared / CAPTURE, shift_ns=shift_ns, ingest_ns=ingest_ns):
        first = ev.ts_event if first is None else first
        if ev.ts_event - first > seconds * S:
            break
        evs.append(ev)
    return evs


def make_actions(events, *, every_s: float = 2.0, group_size: int = 4, horizon_s: float = 5.0,
                 seed: int = 1, drop: set[tuple[int, int]] = frozenset(), exchange: str = "binance"):
    """A group every ``every_s`` of event time while ``horizon_s`` of data still follows.

    Candidates mix long/short/flat, sizes, stops and one invalid completion per few groups.
    ``drop`` removes (group number, candidate) pairs to make partial groups.
    """
    rng = random.Random(seed)
    t_first, t_last = events[0].ts_event, events[-1].ts_event
    sym = events[0].symbol
    actions = []
    t0 = t_first + 1 * S
    n = 0
    while t0 + horizon_s * S < t_last:
        gid = f"g{seed}-{n:04d}"
        for c in range(group_size):
            if (n, c) in drop:
                continue
            kw = dict(group_id=gid, candidate_index=c, group_size=group_size, policy_version=1, seed=c,
                      prompt_id=f"p{n}", symbol=sym, exchange=exchange, prompt=f"prompt {n}",
                      completion=f"completion {n}/{c}", ts_event=t0, ts_ingest=t0, key=gid)
            if c == 3 and n % 3 == 0:
                actions.append(Action(parsed=None, invalid_reason="unparseable", **kw))
                continue
            side = rng.choice(["long", "short", "flat"])
            stop = rng.choice([None, 0.5, 2.0])
            actions.append(Action(parsed=MarketActionSpec(side=side, size=rng.choice([0.5, 1.0]),
                                                          horizon_s=horizon_s * rng.choice([0.5, 1.0]),
                                                          stop_bps=stop), **kw))
        n += 1
        t0 += round(every_s * S)
    return actions


def live_feed(events, actions, first_offset: int = 0) -> list[tuple[int, int, bytes, int]]:
    """Market records and candidates encoded and interleaved by event time, the way a live feed
    delivers them: ``(ts_event, 0 market | 1 candidate, bytes, offset)``. A market record's
    offset is ``first_offset`` + its index in ``events`` (one partition, in capture order)."""
    market = [(e.ts_event, 0, encode(e), first_offset + i) for i, e in enumerate(events)]
    return sorted(market + [(a.ts_event, 1, encode(a), -1) for a in actions], key=lambda x: (x[0], x[1]))


def run_feed(engine, feed) -> list:
    """Each record through the engine as the worker would (candidates routed first); the emits."""
    out = []
    for ts, kind, raw, offset in feed:
        if kind == 0:
            out += engine.on_market(raw, topic="market.events", partition=0, offset=offset, wall_ns=ts)
        else:
            (routed,) = engine.route_action(raw, topic="agent.actions")
            out += engine.on_internal(routed.value, topic="internal", wall_ns=ts)
    return out


def expected(events, actions, reward: RewardConfig, groups: GroupConfig):
    """Outcomes by (group, candidate) and groups by id, from the pure functions on the full path."""
    book = BookPath([(e.ts_event, e.bid_price, e.bid_qty, e.ask_price, e.ask_qty)
                     for e in events if isinstance(e, BookTicker)])
    outcomes, by_group = {}, {}
    for a in actions:
        o = to_outcome(a, score_action(a, reward, book))
        outcomes[(a.group_id, a.candidate_index)] = o
        by_group.setdefault(a.group_id, []).append(a)
    grps = {}
    for gid, acts in by_group.items():
        outs = {a.candidate_index: outcomes[(gid, a.candidate_index)] for a in acts}
        t0 = min(a.ts_event for a in acts)
        end = window_end_ns(t0, [horizon_end_ns(a) for a in acts], groups.grace_s)
        reason = "all_in" if len(acts) == acts[0].group_size else "expired"
        grps[gid] = close_group(acts, outs, groups, close_reason=reason, window_end=end)
    return outcomes, grps


def comparable(ev) -> dict:
    """A record without its wall-clock stamps (ts_ingest), which legitimately differ."""
    d = ev.model_dump()
    d.pop("ts_ingest")
    return d
