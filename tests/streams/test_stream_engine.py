"""The stream processor without Kafka: recorded data through ``SymbolEngine`` with dict tables
gives exactly the pure functions' outcomes and groups on the full recorded path."""

from __future__ import annotations

import pytest

from schemas import Action, BookTicker, GRPOGroup, Outcome, decode, encode
from schemas.settings import GroupConfig, RewardConfig
from streams.engine import SymbolEngine, tick_record
from stream_cases import comparable, expected, live_feed, make_actions, market_events, run_feed

S = 1_000_000_000


def _engine(reward, groups, **kw):
    return SymbolEngine(reward, groups, pending={}, agenda={}, closed={}, **kw)


def _run(engine, events, actions, first_offset: int = 0):
    """Interleave by event time the way a live feed would deliver them."""
    return run_feed(engine, live_feed(events, actions, first_offset))


@pytest.mark.parametrize("kind", ["pnl", "risk_adjusted"])
def test_engine_matches_pure_functions_on_recorded_data(shared_data, kind):
    events = market_events(shared_data, seconds=60)
    actions = make_actions(events, drop={(2, 1), (4, 0), (4, 1), (4, 2)})
    reward = RewardConfig(kind=kind, fee_bps=4.5, slippage_model="spread", slippage_bps=0.5)
    groups = GroupConfig(group_size=4, grace_s=1.0, partial="keep", min_partial=2)
    eng = _engine(reward, groups)
    out = _run(eng, events, actions)
    # the last groups end after the data: an idle tick closes them once wall time passes
    last_wall = events[-1].ts_event + 30 * S
    eng.idle_due(last_wall)
    for _sym, sk, now in eng.idle_due(last_wall):
        out += eng.on_internal(tick_record(sk, now), topic="internal", wall_ns=last_wall)
    got_o = {(o.group_id, o.candidate_index): o for e in out if e.topic == "agent.outcomes"
             for o in [decode(e.value)]}
    got_g = [decode(e.value) for e in out if e.topic == "learn.groups"]
    want_o, want_g = expected(events, actions, reward, groups)
    assert set(got_o) == set(want_o)
    for k, o in want_o.items():
        assert comparable(got_o[k]) == comparable(o), k
    assert sorted(g.group_id for g in got_g) == sorted(want_g)  # each exactly once
    for g in got_g:
        assert comparable(g) == comparable(want_g[g.group_id]), g.group_id
    statuses = {g.group_id: g.status for g in got_g}
    assert statuses["g1-0002"] == "partial" and statuses["g1-0004"] == "skipped"
    assert any(o.exit_reason == "stop" for o in got_o.values())
    assert not eng.pending and not eng.agenda


def test_replayed_input_after_restart_is_idempotent(shared_data):
    events = market_events(shared_data, seconds=20)
    actions = make_actions(events)
    reward, groups = RewardConfig(), GroupConfig(group_size=4, grace_s=1.0)
    eng = _engine(reward, groups)
    half = len(events) // 2
    first = _run(eng, events[:half], [a for a in actions if a.ts_event <= events[half].ts_event])
    # "restart": same tables, a fresh clock, and the last 2000 events and all actions delivered again
    eng2 = SymbolEngine(reward, groups, book=eng.book, index=eng.index, pending=eng.pending,
                        agenda=eng.agenda, closed=eng.closed)
    second = _run(eng2, events[half - 2000:], actions, first_offset=half - 2000)
    groups_out = [decode(e.value).group_id for e in first + second if e.topic == "learn.groups"]
    assert len(groups_out) == len(set(groups_out))
    _, want = expected(events, actions, reward, groups)
    closed = {decode(e.value).group_id: decode(e.value) for e in first + second if e.topic == "learn.groups"}
    for gid, g in closed.items():
        assert comparable(g) == comparable(want[gid])


def test_a_replay_ending_in_quotes_of_one_millisecond_leaves_the_book_path_as_it_was(shared_data):
    """State ahead of the committed offset (a kill after the changelog was flushed): records
    between the two are delivered again. Quotes that share the last stored quote's timestamp must
    not be appended a second time: the volatility of the risk-adjusted reward sees every step."""
    events = market_events(shared_data, seconds=40)
    actions = make_actions(events, every_s=1.0)
    reward = RewardConfig(kind="risk_adjusted", fee_bps=4.5, slippage_model="spread", slippage_bps=0.5)
    groups = GroupConfig(group_size=4, grace_s=1.0)
    quotes = [i for i, e in enumerate(events) if isinstance(e, BookTicker)]
    # exchanges stamping in milliseconds send several price changes per timestamp: make the
    # quote before the cut share the timestamp of the one at the cut (prices differ)
    a, b = next((a, b) for a, b in zip(quotes[len(quotes) // 3:], quotes[len(quotes) // 3 + 1:])
                if (events[a].bid_price, events[a].ask_price) != (events[b].bid_price, events[b].ask_price)
                and all(not isinstance(e, BookTicker) for e in events[a + 1:b]))
    events[a] = events[a].model_copy(update={"ts_event": events[b].ts_event})
    for i in range(a + 1, b):
        events[i] = events[i].model_copy(update={"ts_event": max(events[i].ts_event, events[b].ts_event)})
    cut = b + 1
    eng = _engine(reward, groups)
    t_cut = events[cut - 1].ts_event
    first = _run(eng, events[:cut], [a for a in actions if a.ts_event < t_cut])
    eng2 = SymbolEngine(reward, groups, book=eng.book, index=eng.index, pending=eng.pending,
                        agenda=eng.agenda, closed=eng.closed)
    second = _run(eng2, events[cut - 30:], [a for a in actions if a.ts_event >= t_cut], first_offset=cut - 30)
    _, want = expected(events, actions, reward, groups)
    got = {decode(e.value).group_id: decode(e.value) for e in first + second if e.topic == "learn.groups"}
    assert len(got) > 20
    for gid, g in got.items():
        assert comparable(g) == comparable(want[gid]), gid
    clean = _engine(reward, groups)
    _run(clean, events, actions)
    sk = "binance|" + events[0].symbol
    span = (events[0].ts_event, events[-1].ts_event)
    assert eng2.book_path(sk, *span).ts == clean.book_path(sk, *span).ts  # no quote twice


def test_candidates_far_behind_the_market_are_scored_on_a_held_book(shared_data):
    """Catch-up: all market data is processed before the candidates are routed. Expiry held (as
    the worker does while candidates are in flight), they are scored on the full path; released,
    the buckets expire and the oldest candidates would be scored on nothing."""
    events = market_events(shared_data, seconds=150)
    actions = make_actions(events, every_s=5.0)
    reward, groups = RewardConfig(fee_bps=4.5, slippage_model="spread", slippage_bps=0.5), GroupConfig(group_size=4)
    _, want = expected(events, actions, reward, groups)
    outs = {}
    for hold in (True, False):
        eng = _engine(reward, groups)
        eng.hold_expiry = hold
        out = _run(eng, events, [])
        out += _run(eng, [], actions)
        outs[hold] = {decode(e.value).group_id: decode(e.value) for e in out if e.topic == "learn.groups"}
    assert set(outs[True]) == set(want)
    for gid, g in outs[True].items():
        assert comparable(g) == comparable(want[gid]), gid
    first = actions[0].group_id
    assert outs[False][first].rewards != want[first].rewards  # why the hold exists


def test_a_candidate_first_after_a_restart_does_not_score_restored_ones_early(shared_data):
    events = market_events(shared_data, seconds=30)
    actions = make_actions(events, every_s=3.0, group_size=3)  # no invalid candidate (scored at t0)
    reward, groups = RewardConfig(), GroupConfig(group_size=3, grace_s=1.0)
    eng = _engine(reward, groups)
    # the market up to just after the first group's t0 is in the state; its candidates are pending
    t_cut = actions[0].ts_event + S // 2
    k = next(i for i, e in enumerate(events) if e.ts_event > t_cut)
    out = _run(eng, events[:k], [a for a in actions if a.ts_event <= t_cut])
    assert not any(e.topic == "agent.outcomes" for e in out) and eng.pending
    # restart (fresh clock); a later candidate is delivered before any market record
    eng2 = SymbolEngine(reward, groups, book=eng.book, index=eng.index, pending=eng.pending,
                        agenda=eng.agenda, closed=eng.closed)
    later = next(a for a in actions if a.ts_event > actions[0].ts_event + 6 * S)
    (routed,) = eng2.route_action(encode(later), topic="agent.actions")
    early = eng2.on_internal(routed.value, topic="internal", wall_ns=later.ts_event)
    assert early == [], "restored candidates were scored before their quotes were replayed"
    # the rest of the market arrives: everything is scored on the full path
    rest = _run(eng2, events[k:], [], first_offset=k)
    _, want = expected(events, actions, reward, groups)
    got = {decode(e.value).group_id: decode(e.value) for e in rest if e.topic == "learn.groups"}
    assert actions[0].group_id in got
    assert comparable(got[actions[0].group_id]) == comparable(want[actions[0].group_id])


def test_malformed_and_out_of_schema_input_is_dead_lettered():
    eng = _engine(RewardConfig(), GroupConfig())
    (dl,) = eng.on_market(b"{not json", topic="t.market.events", partition=1, offset=7, wall_ns=0)
    d = decode(dl.value)
    assert dl.topic == "deadletter" and d.reason.startswith("value: not valid JSON") and d.offset == 7
    a = Action(group_id="g", candidate_index=0, group_size=2, policy_version=0, seed=0, prompt_id="p",
               symbol="X", prompt="", completion="")
    (dl,) = eng.on_market(encode(a), topic="t.market.events", wall_ns=0)
    assert "does not belong" in decode(dl.value).reason
    (dl,) = eng.route_action(b'{"type": "agent.action", "schema_version": 1}', topic="t.agent.actions")
    assert decode(dl.value).error_type == "DecodeError"
    g = GRPOGroup(group_id="g", symbol="X", policy_version=0, prompt="", completions=[], candidate_indices=[],
                  rewards=[], advantages=[], group_size=2)
    (dl,) = eng.route_action(encode(g), topic="t.agent.actions")
    assert decode(dl.value).error_type == "OutOfSchema" and isinstance(decode(dl.value).raw, str)
    assert Outcome  # imported for type clarity in failures


def test_without_idle_closing_a_watermark_closes_the_last_groups_in_event_time(shared_data):
    from schemas import MarketWatermark

    actions = make_actions(market_events(shared_data, seconds=20))
    events = market_events(shared_data, seconds=15)  # the data ends inside the last horizons
    actions = [a for a in actions if a.ts_event <= events[-1].ts_event]
    reward, groups = RewardConfig(), GroupConfig(group_size=4, grace_s=1.0)
    eng = _engine(reward, groups, idle_close=False)
    out = _run(eng, events, actions)
    # a paced replay's input pauses while the loop works: wall time must close nothing
    assert eng.idle_due(events[-1].ts_event + 3600 * S) == []
    assert eng.pending  # the groups whose horizons outlast the data are still open
    last = events[-1]
    wm = MarketWatermark(exchange=last.exchange, symbol=last.symbol, ts_event=last.ts_event + 10 * S,
                         reason="end of replay")
    out += eng.on_market(encode(wm), topic="market.events", offset=len(events), wall_ns=last.ts_event)
    got_g = [decode(e.value) for e in out if e.topic == "learn.groups"]
    _, want_g = expected(events, actions, reward, groups)
    assert sorted(g.group_id for g in got_g) == sorted(want_g)
    for g in got_g:
        assert comparable(g) == comparable(want_g[g.group_id]), g.group_id
        assert g.close_reason == "all_in"
    assert not eng.pending and not eng.agenda
