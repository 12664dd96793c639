"""Every record type round-trips; an old-version record still reads; errors name the field."""

from __future__ import annotations

import json

import pytest

import schemas as s
from schemas.codec import RECORD_TYPES


def samples() -> list[s.Event]:
    spec = s.MarketActionSpec(side="long", size=0.5, horizon_s=5.0, stop_bps=20.0)
    return [
        s.MarketTrade(exchange="binance", symbol="BTC/USDT", trade_id="42", price=61685.99, qty=0.00017, side="sell",
                      source="binance:spot", key="BTC/USDT"),
        s.BookTicker(exchange="binance", symbol="BTC/USDT", bid_price=1.0, bid_qty=2.0, ask_price=1.1, ask_qty=3.0,
                     update_id=7),
        s.DepthUpdate(exchange="binance", symbol="BTC/USDT", bids=[(1.0, 2.0), (0.9, 1.0)], asks=[(1.1, 3.0)],
                      is_snapshot=True),
        s.StreamGap(exchange="binance", symbol="BTC/USDT", stream="trades", reason="closed 1006", gap_start_ns=5),
        s.MarketWatermark(exchange="binance", symbol="BTC/USDT", reason="end of replay"),
        s.SocialPost(did="did:plc:x", uri="at://did:plc:x/app.bsky.feed.post/1", text="héllo ✓", langs=["en"],
                     time_us=1),
        s.SocialEngagement(did="did:plc:y", kind="repost", subject_uri="at://did:plc:x/app.bsky.feed.post/1",
                           time_us=2),
        s.Prompt(prompt_id="p", symbol="BTC/USDT", text="BTC im=+0.7", features={"imbalance": 0.7},
                 policy_version=3),
        s.Action(group_id="g", candidate_index=1, group_size=8, policy_version=3, seed=11, prompt_id="p",
                 symbol="BTC/USDT", prompt="BTC im=+0.7", completion="long 0.5 h5 s20", parsed=spec),
        s.Action(group_id="g", candidate_index=2, group_size=8, policy_version=3, seed=11, prompt_id="p",
                 symbol="BTC/USDT", prompt="x", completion="lonk", invalid_reason="side: unknown 'lonk'"),
        s.Action(group_id="h", candidate_index=0, group_size=4, policy_version=0, seed=1, prompt_id="q",
                 task="social", symbol="bsky", prompt="pick", completion="pick 2",
                 parsed=s.SocialActionSpec(pick=2, horizon_s=30.0), choices=["a", "b", "c"]),
        s.Outcome(group_id="g", candidate_index=1, group_size=8, action_event_id="e", symbol="BTC/USDT",
                  policy_version=3, reward=1.5, components=s.RewardComponents(pnl_bps=2.0, fees_bps=0.5)),
        s.GRPOGroup(group_id="g", symbol="BTC/USDT", policy_version=3, prompt="p", completions=["a", "b"],
                    candidate_indices=[0, 1], rewards=[1.0, 0.0], advantages=[0.7, -0.7], group_size=2),
        s.BlockUpdate(block=1, step=9, group_id="g", loss=0.3, grad_norm=1.2, checksum="ab" * 32,
                      policy_version=4),
        s.SnapshotMarker(snapshot_id="snap-1", path="/x", policy_version=4, step=9,
                         offsets={"learn.groups:0": 10}, checksum="cd"),
        s.GuardAction(action="raise_temperature", reason="entropy 0.2 < 0.5 for 3 windows", policy_version=4,
                      value=1.2),
        s.DeadLetter.from_input(b"\xff\xfe{", source_topic="market.events", reason="value: not valid JSON"),
    ]


def test_every_record_type_is_covered():
    assert {type(e).TYPE for e in samples()} == set(RECORD_TYPES)


@pytest.mark.parametrize("event", samples(), ids=lambda e: f"{e.type}")
def test_round_trip(event: s.Event):
    raw = s.encode(event)
    back = s.decode(raw)
    assert type(back) is type(event)
    assert back == event
    assert json.loads(raw)["schema_version"] == type(event).VERSION


def test_previous_version_reads():
    """MarketTrade v1 had `amount` and no `exchange`; a v2 reader upgrades it."""
    v1 = {"event_id": s.new_event_id(), "type": "market.trade", "schema_version": 1, "ts_event": 1, "ts_ingest": 2,
          "source": "binance", "key": "BTC/USDT", "symbol": "BTC/USDT", "trade_id": "1", "price": 10.0,
          "amount": 0.25, "side": "buy"}
    ev = s.decode(json.dumps(v1).encode())
    assert isinstance(ev, s.MarketTrade)
    assert ev.schema_version == 2 and ev.qty == 0.25 and ev.exchange == "binance"
    assert ev.event_id == v1["event_id"]


@pytest.mark.parametrize("group_id, members", [("g1", ["g1"]), ("g1+g2+g3", ["g1", "g2", "g3"])])
def test_block_update_v1_names_its_groups_in_v2(group_id, members):
    """BlockUpdate v1 joined a coalesced batch's ids into ``group_id``; v2 lists them."""
    v1 = {"event_id": s.new_event_id(), "type": "learn.update", "schema_version": 1, "ts_event": 1, "ts_ingest": 2,
          "source": "learner", "key": "0", "block": 0, "step": 3, "group_id": group_id, "loss": 0.5,
          "grad_norm": 0.1, "checksum": "ab" * 32, "policy_version": 3, "coalesced": len(members)}
    ev = s.decode(json.dumps(v1).encode())
    assert isinstance(ev, s.BlockUpdate) and ev.schema_version == 2
    assert ev.group_ids == members and ev.group_id == group_id and ev.event_id == v1["event_id"]


def test_a_block_update_written_without_group_ids_names_its_one_group():
    u = s.BlockUpdate(block=0, step=1, group_id="g", loss=0.0, grad_norm=0.0, checksum="c", policy_version=1)
    assert u.group_ids == ["g"] and s.decode(s.encode(u)) == u


def test_newer_version_is_rejected_with_reason():
    raw = s.encode(samples()[0]).replace(b'"schema_version":2', b'"schema_version":9')
    with pytest.raises(s.DecodeError, match="schema_version: market.trade v9 is newer"):
        s.decode(raw)


def test_validation_is_strict_and_names_the_field():
    d = json.loads(s.encode(samples()[0]))
    d["price"] = "61685.99"  # a string where a number belongs: strict, no coercion
    with pytest.raises(s.DecodeError, match=r"price"):
        s.decode(json.dumps(d))
    d = json.loads(s.encode(samples()[0]))
    d["surprise"] = 1
    with pytest.raises(s.DecodeError, match=r"surprise"):
        s.decode(json.dumps(d))
    d = json.loads(s.encode(samples()[0]))
    d["side"] = "up"
    with pytest.raises(s.DecodeError, match=r"side"):
        s.decode(json.dumps(d))


@pytest.mark.parametrize("raw,reason", [
    (b"\x00\x01garbage", "not valid JSON"),
    (b"[1,2]", "expected a JSON object"),
    (b'{"type":"nope","schema_version":1}', "unknown record type"),
    (None, "tombstone"),
])
def test_malformed_bytes_give_reasons(raw, reason):
    with pytest.raises(s.DecodeError, match=reason):
        s.decode(raw)


def test_dead_letter_keeps_raw_bytes():
    raw = b"\xff\x00not json"
    dl = s.DeadLetter.from_input(raw, source_topic="t", reason="r")
    assert dl.raw_encoding == "base64"
    assert s.decode(s.encode(dl)).raw_bytes() == raw
    text = s.DeadLetter.from_input(b'{"a":', source_topic="t", reason="r")
    assert text.raw_encoding == "utf-8" and text.raw_bytes() == b'{"a":'


def test_event_ids_are_time_ordered_and_unique():
    ids = [s.new_event_id() for _ in range(20000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert s.event_id_ms(ids[0]) <= s.event_id_ms(ids[-1])
    a = s.deterministic_event_id(1000, "g", 1)
    assert a == s.deterministic_event_id(1000, "g", 1) != s.deterministic_event_id(1000, "g", 2)
