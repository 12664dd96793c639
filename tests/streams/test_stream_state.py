"""The engine's state records (``streams.state``) and the idle tick record (``schemas.stream``):
stored forms round-trip through JSON, the forms a previous release left in the tables still
read (and an engine on them emits what an uninterrupted one does), a form no worker wrote fails
with an error naming table and key, and ticks decode through their record while a corrupt one
is dead-lettered and counted."""

from __future__ import annotations

import json

import pytest

from schemas import decode, encode
from schemas.codec import RECORD_TYPES, DecodeError
from schemas.settings import GroupConfig, RewardConfig
from schemas.stream import StreamTick, decode_internal
from streams.engine import SymbolEngine, idle_tick, tick_record
from streams.state import (AGENDA, BOOK, CLOSED, INDEX, PENDING, SCORED, STATE_FORMAT, AgendaEntry, BucketSpan,
                           ClosedGroups, GroupDue, PendingCandidate, PendingGroup, Quote, StateFormatError,
                           StoredRecords)
from stream_cases import comparable, expected, live_feed, make_actions, market_events, run_feed

S = 1_000_000_000
SK = "binance|BTCUSDT"
REWARD = RewardConfig(fee_bps=4.5, slippage_model="spread", slippage_bps=0.5)
GROUPS = GroupConfig(group_size=4, grace_s=1.0, partial="keep", min_partial=2)


class JsonTable(dict):
    """What a Faust table with JSON values gives back: whatever was written, through JSON."""

    def __setitem__(self, key, value):
        super().__setitem__(key, json.loads(json.dumps(value)))


def _groups(emits) -> dict:
    return {g.group_id: g for g in (decode(e.value) for e in emits if e.topic == "learn.groups")}


def _pending() -> PendingGroup:
    g = PendingGroup.first(SK, 2, PendingCandidate('{"a": 2}', 7 * S), 5 * S, 100)
    return g.with_candidate(0, PendingCandidate('{"a": 0}', 9 * S), 4 * S, 200)


def _first_form(g: PendingGroup) -> dict:
    """A pending group as the release before these records wrote it."""
    return {"sk": g.state_key, "t0": g.t0_ns, "a": {str(i): c.action_json for i, c in g.candidates.items()},
            "he": {str(i): c.horizon_end_ns for i, c in g.candidates.items()}, "o": {}, "last": g.last_arrival_wall_ns}


@pytest.mark.parametrize("form, record", [
    (PENDING, _pending()),
    (PENDING, PendingGroup(SK, 1, {1: PendingCandidate("{}", 2)}, 3, {1: '{"o": 1}'})),
    (CLOSED, ClosedGroups({"g1": 5 * S, "g2": 6 * S})),
    (AGENDA, AgendaEntry.of({"g1": GroupDue(3, 9, 4), "g2": GroupDue(2, 11, 5)})),
    (INDEX, BucketSpan(17, 23)),
    (BOOK, (Quote(1, 100.5, 2.0, 100.6, 3.0, 41), Quote(2, 100.4, 1.0, 100.6, 3.0, 42))),
    (SCORED, {0: '{"reward": 1.5}', 3: '{"reward": -50.0}'}),
], ids=lambda v: type(v).__name__ if not isinstance(v, tuple) else "quotes")
def test_every_stored_form_round_trips_through_json(form, record):
    stored = json.loads(json.dumps(form.to_json(record)))
    assert form.from_json(stored) == record
    view = StoredRecords(JsonTable(), form)
    view["k"] = record
    assert view["k"] == record and view.get("k") == record and view.get("missing") is None
    assert list(view.items()) == [("k", record)] and "k" in view and len(view) == 1


def test_records_are_frozen_and_new_ones_are_built_on_change():
    g = _pending()
    with pytest.raises(AttributeError):
        g.t0_ns = 0  # type: ignore[misc]
    assert g.t0_ns == 4 * S and list(g.candidates) == [2, 0]  # arrival order, kept by the stored form
    assert list(PENDING.from_json(json.loads(json.dumps(PENDING.to_json(g)))).candidates) == [2, 0]
    closed = ClosedGroups({"old": 1 * S}).with_closed("new", 700 * S, retention_ns=600 * S)
    assert "new" in closed and "old" not in closed
    entry = AgendaEntry.of({"a": GroupDue(5, 9, 1), "b": GroupDue(3, 12, 2)})
    assert (entry.due_ns, entry.expiry_ns, entry.grace_end_wall_ns) == (3, 9, 1)
    assert AgendaEntry.of({}) is None


def test_the_forms_a_previous_release_stored_still_read():
    g = _pending()
    assert PENDING.from_json(_first_form(g)) == g
    with_outcomes = {**_first_form(g), "o": {"2": '{"reward": 1.0}'}}
    assert PENDING.from_json(with_outcomes).stored_outcomes == {2: '{"reward": 1.0}'}
    assert CLOSED.from_json({"g1": 5 * S, "g2": 6 * S}) == ClosedGroups({"g1": 5 * S, "g2": 6 * S})
    assert CLOSED.from_json({}) == ClosedGroups()
    agenda = {"due": 2, "expiry": 9, "grace": 4, "groups": {"g1": [3, 9, 4], "g2": [2, 11, 5]}}
    assert AGENDA.from_json(agenda) == AgendaEntry.of({"g1": GroupDue(3, 9, 4), "g2": GroupDue(2, 11, 5)})
    assert INDEX.from_json([17, 23]) == BucketSpan(17, 23)
    assert BOOK.from_json([[1, 100.5, 2.0, 100.6, 3.0]])[0].offset == -1  # quotes stored before offsets
    assert PENDING.to_json(g)["v"] == STATE_FORMAT


@pytest.mark.parametrize("stored, says", [
    ({"v": STATE_FORMAT + 1, "state_key": SK}, "not one this worker reads"),
    ({"v": STATE_FORMAT, "state_key": SK}, "unreadable stored form"),
    ([1, 2], "expected a JSON object"),
])
def test_a_form_this_worker_cannot_read_fails_naming_table_and_key(stored, says):
    engine = SymbolEngine(REWARD, GROUPS, pending={"g-7": stored}, closed={})
    with pytest.raises(StateFormatError, match=rf"pending-candidates\['g-7'\]: .*{says}"):
        engine.restore_agenda()


def test_an_engine_on_tables_of_the_previous_release_emits_what_an_uninterrupted_one_does(shared_data):
    """A restart on changelogs the previous release wrote: the pending and closed tables hold the
    forms without ``"v"``; the groups equal an uninterrupted engine's and the pure functions'."""
    events = market_events(shared_data, seconds=40)
    actions = make_actions(events, every_s=1.0)
    feed = live_feed(events, actions)
    whole = SymbolEngine(REWARD, GROUPS, pending=JsonTable(), closed=JsonTable())
    want = run_feed(whole, feed)
    cut = len(feed) // 2
    first = SymbolEngine(REWARD, GROUPS, pending=JsonTable(), closed=JsonTable())
    before = run_feed(first, feed[:cut])
    assert first.pending and first.closed
    pending = JsonTable({gid: _first_form(g) for gid, g in first.pending.items()})
    closed = JsonTable({sk: dict(c.window_ends) for sk, c in first.closed.items()})
    restarted = SymbolEngine(REWARD, GROUPS, pending=pending, closed=closed)
    restarted.restore_agenda()
    for ts, kind, raw, offset in feed[:cut]:
        if kind == 0:
            restarted.rebuild_record(raw, topic="market.events", partition=0, offset=offset, wall_ns=0)
    after = run_feed(restarted, feed[cut:])
    got, uninterrupted = _groups(before + after), _groups(want)
    _, pure = expected(events, actions, REWARD, GROUPS)
    assert sorted(got) == sorted(uninterrupted) and len(got) > 20
    for gid, g in got.items():
        assert comparable(g) == comparable(uninterrupted[gid]) == comparable(pure[gid]), gid
    assert all(v.get("v") == STATE_FORMAT for v in restarted.closed.store.values())  # rewritten in the new form


def test_the_idle_tick_is_a_record_of_the_internal_topic():
    tick = decode_internal(tick_record(SK, 42 * S))
    assert isinstance(tick, StreamTick)
    assert (tick.exchange, tick.symbol, tick.event_time_ns, tick.key) == ("binance", "BTCUSDT", 42 * S, "BTCUSDT")
    assert StreamTick.TYPE not in RECORD_TYPES  # never on a catalogue topic
    with pytest.raises(DecodeError, match="unknown record type 'streams.tick'"):
        decode(tick_record(SK))
    old = json.dumps({"type": "streams.tick", "sk": SK, "now": 7}).encode()  # left in the topic by an upgrade
    assert (decode_internal(old).symbol, decode_internal(old).event_time_ns) == ("BTCUSDT", 7)


def test_a_tick_closes_an_idle_window_and_a_corrupt_one_is_dead_lettered(shared_data):
    events = market_events(shared_data, seconds=12)
    actions = [a for a in make_actions(market_events(shared_data, seconds=20)) if a.ts_event <= events[-1].ts_event]
    engine = SymbolEngine(REWARD, GROUPS, pending={}, closed={})
    run_feed(engine, live_feed(events, actions))
    assert engine.pending
    wall = events[-1].ts_event + 30 * S
    closed = engine.on_internal(tick_record(SK, events[-1].ts_event + 20 * S), topic="internal", wall_ns=wall)
    assert {e.topic for e in closed} >= {"learn.groups"} and not engine.pending
    bad = [b'{"event_id":"x","type":"streams.tick","schema_version":1,"exchange":"binance"}',
           encode(idle_tick(SK))[:-5], b'{"type": "streams.tick", "sk": 7}', b"\xff"]
    for n, raw in enumerate(bad, 1):
        (dl,) = engine.on_internal(raw, topic="t-actions-by-symbol", partition=2, offset=n, wall_ns=wall)
        letter = decode(dl.value)
        assert dl.topic == "deadletter" and letter.error_type == "DecodeError" and letter.offset == n
        assert letter.raw_bytes() == raw and engine.counters["dead_letters"] == n
    assert "symbol: Field required" in decode(engine.on_internal(bad[0], topic="t", wall_ns=wall)[0].value).reason


def test_keyed_state_in_stored_forms_restores_also_from_the_previous_forms(shared_data):
    """The PyFlink job's layout: every mapping holds stored forms (``StoredRecords`` over its
    ``MapState``), scored outcomes included. A checkpoint taken before the records existed holds
    the previous forms; an engine restored from it emits the groups an uninterrupted one does."""
    events = market_events(shared_data, seconds=40)
    actions = make_actions(events, every_s=1.0)
    feed = live_feed(events, actions)
    forms = {"book": BOOK, "index": INDEX, "scored": SCORED, "agenda": AGENDA}

    def engine(state: dict) -> SymbolEngine:
        return SymbolEngine(REWARD, GROUPS, pending=state["pending"], closed=state["closed"],
                            **{name: StoredRecords(state[name], form) for name, form in forms.items()})

    whole = engine({name: JsonTable() for name in (*forms, "pending", "closed")})
    want = run_feed(whole, feed)
    cut = len(feed) // 2
    state = {name: JsonTable() for name in (*forms, "pending", "closed")}
    before = run_feed(engine(state), feed[:cut])
    assert all(state.values())
    first = engine(state)
    previous = {  # the forms a checkpoint of the previous release holds
        "pending": {gid: _first_form(g) for gid, g in first.pending.items()},
        "closed": {sk: dict(c.window_ends) for sk, c in first.closed.items()},
        "agenda": {sk: {"due": e.due_ns, "expiry": e.expiry_ns, "grace": e.grace_end_wall_ns,
                        "groups": {g: [d.due_ns, d.window_end_ns, d.grace_end_wall_ns] for g, d in e.groups.items()}}
                   for sk, e in first.agenda.items()},
        "book": dict(state["book"]), "index": dict(state["index"]), "scored": dict(state["scored"]),
    }
    after = run_feed(engine({name: JsonTable(v) for name, v in previous.items()}), feed[cut:])
    got = _groups(before + after)
    assert sorted(got) == sorted(_groups(want)) and len(got) > 20
    for gid, g in got.items():
        assert comparable(g) == comparable(_groups(want)[gid]), gid
    outcomes = [(o.group_id, o.candidate_index) for o in (decode(e.value) for e in before + after)
                if o.type == "agent.outcome"]
    assert len(outcomes) == len(set(outcomes))  # restored scored outcomes are not emitted again
