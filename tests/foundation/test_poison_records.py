"""Poison records: ``decode`` raises nothing but ``DecodeError``, and the schemas refuse values
that would poison the learner or the market state."""

from __future__ import annotations

import json
import re

import pytest
from pydantic import ValidationError

from schemas import GRPOGroup, decode, decode_as, decode_dict, encode
from schemas.codec import DecodeError
from schemas.learn import MAX_CANDIDATES, MAX_COMPLETION_CHARS, MAX_PROMPT_CHARS
from schemas.market import BookTicker, DepthUpdate, MarketTrade

DEEP = 100_000  # far past the interpreter's recursion limit
HUGE_INT = "9" * 5000  # past Python's 4,300-digit int parsing limit


def group(**kw) -> GRPOGroup:
    base = dict(group_id="g", symbol="BTCUSDT", policy_version=0, prompt="M BTCUSDT r1=+1>",
                completions=["long 1 h5", "short 1 h5", "flat 0 h5"], candidate_indices=[0, 1, 2],
                rewards=[1.0, -1.0, 0.0], advantages=[1.0, -1.0, 0.0], group_size=3)
    return GRPOGroup(**{**base, **kw})


def general_path(ev) -> bytes:
    """The record with spaces after separators: the fast path's regex does not match it."""
    return json.dumps(json.loads(encode(ev))).encode()


def with_raw(raw: bytes, field: str, text: str) -> bytes:
    """``raw`` (compact JSON) with ``field``'s value replaced by ``text`` verbatim."""
    d = json.loads(raw)
    d[field] = "__SLOT__"
    return json.dumps(d, separators=(",", ":")).encode().replace(b'"__SLOT__"', text.encode())


# --- decode never raises anything but DecodeError ------------------------------------------------

@pytest.mark.parametrize("raw", [
    b"[" * DEEP + b"]" * DEEP,
    b'{"a":' + b"[" * DEEP + b"]" * DEEP + b"}",
    b"{" * DEEP,
    ("[" * DEEP + "]" * DEEP),
], ids=["bare-array", "in-object", "unclosed-objects", "str"])
def test_deep_nesting_is_a_decode_error(raw):
    with pytest.raises(DecodeError) as e:
        decode(raw)
    assert e.value.reason.startswith("value:")


@pytest.mark.parametrize("field", ["window_end_ns", "policy_version", "schema_version", "ts_event", "rewards"])
@pytest.mark.parametrize("path", ["fast", "general"])
def test_a_5000_digit_integer_is_a_decode_error(field, path):
    raw = encode(group()) if path == "fast" else general_path(group())
    text = f"[{HUGE_INT},0,0]" if field == "rewards" else HUGE_INT
    bad = with_raw(raw, field, text)
    if path == "general":
        bad = bad.replace(b",", b", ", 1)
    with pytest.raises(DecodeError):
        decode(bad)


def test_deep_nesting_inside_a_record_is_a_decode_error_on_both_paths():
    deep = "[" * DEEP + "]" * DEEP
    for raw in (encode(group()), general_path(group())):
        with pytest.raises(DecodeError):
            decode(with_raw(raw, "prompt", deep))


@pytest.mark.parametrize("raw", [
    b"\xff\xfe{}", b'{"type":"learn.group"\xff}', '"\\ud800"', b"", b"null", b"42", b"NaN", 42, 4.2, [b"{}"],
], ids=["bom", "bad-utf8", "lone-surrogate", "empty", "null", "number", "nan", "int", "float", "list"])
def test_odd_values_are_decode_errors(raw):
    with pytest.raises(DecodeError):
        decode(raw)


def test_decode_dict_and_decode_as_only_raise_decode_errors():
    d = json.loads(encode(group()))
    d["window_end_ns"] = 10 ** 5000  # past the digit limit: json.dumps of it fails inside decode_dict
    with pytest.raises(DecodeError):
        decode_dict(d)
    nested: list = []
    for _ in range(DEEP):
        nested = [nested]
    with pytest.raises(DecodeError):
        decode_dict({**json.loads(encode(group())), "prompt": nested})
    with pytest.raises(DecodeError):
        decode_as(b"[" * DEEP + b"]" * DEEP, GRPOGroup)
    with pytest.raises(DecodeError):
        decode_as(encode(group()), MarketTrade)


def test_a_valid_group_still_decodes_on_both_paths():
    g = group()
    assert decode(encode(g)) == g
    assert decode(general_path(g)) == g


# --- GRPOGroup refuses what would poison a step --------------------------------------------------

@pytest.mark.parametrize("kw, where", [
    ({"rewards": [float("nan"), 0.0, 0.0]}, "rewards[0]"),
    ({"rewards": [1.0, float("inf"), 0.0]}, "rewards[1]"),
    ({"advantages": [1.0, -1.0, float("-inf")]}, "advantages[2]"),
    ({"advantages": [float("nan")] * 3}, "advantages[0]"),
    ({"advantages": [1.0, -1.0]}, "differ in length"),
    ({"rewards": [1.0, -1.0, 0.0, 2.0]}, "differ in length"),
    ({"candidate_indices": [0, 1]}, "differ in length"),
    ({"completions": ["long 1 h5"]}, "differ in length"),
    ({"prompt": "x" * (MAX_PROMPT_CHARS + 1)}, "prompt"),
    ({"completions": ["x" * (MAX_COMPLETION_CHARS + 1), "b", "c"]}, "completions[0]"),
    ({"completions": ["a"] * (MAX_CANDIDATES + 1), "candidate_indices": list(range(MAX_CANDIDATES + 1)),
      "rewards": [0.0] * (MAX_CANDIDATES + 1), "advantages": [0.0] * (MAX_CANDIDATES + 1)}, "completions"),
], ids=["nan-reward", "inf-reward", "-inf-advantage", "nan-advantages", "short-advantages", "long-rewards",
        "short-indices", "short-completions", "long-prompt", "long-completion", "too-many-candidates"])
def test_group_validation_rejects(kw, where):
    with pytest.raises(ValidationError) as e:
        group(**kw)
    assert where in str(e.value)
    # and the same values as a record are a DecodeError whose reason names the field (json.dumps
    # writes NaN and Infinity as the literals a lenient producer would)
    raw = json.dumps({**json.loads(encode(group())), **kw}).encode()
    with pytest.raises(DecodeError, match=re.escape(where.split("[")[0])):
        decode(raw)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_json_numbers_are_decode_errors(literal):
    for raw in (encode(group()), general_path(group())):
        with pytest.raises(DecodeError, match="advantages"):
            decode(with_raw(raw, "advantages", f"[1.0,{literal},0.0]"))


def test_group_bounds_admit_the_largest_allowed_group():
    n = MAX_CANDIDATES
    g = group(prompt="x" * MAX_PROMPT_CHARS, completions=["y" * MAX_COMPLETION_CHARS] * n,
              candidate_indices=list(range(n)), rewards=[0.0] * n, advantages=[0.0] * n, group_size=n)
    assert decode(encode(g)) == g


# --- market events are finite ---------------------------------------------------------------------

def trade(**kw) -> MarketTrade:
    return MarketTrade(**{**dict(exchange="binance", symbol="BTCUSDT", trade_id="1", price=100.0, qty=1.0,
                                 side="buy"), **kw})


def ticker(**kw) -> BookTicker:
    return BookTicker(**{**dict(exchange="binance", symbol="BTCUSDT", bid_price=99.0, bid_qty=1.0,
                                ask_price=101.0, ask_qty=2.0), **kw})


def depth(**kw) -> DepthUpdate:
    return DepthUpdate(**{**dict(exchange="binance", symbol="BTCUSDT", bids=[(99.0, 1.0)], asks=[(101.0, 2.0)]),
                          **kw})


INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize("make, kw", [
    (trade, {"price": INF}), (trade, {"qty": INF}), (trade, {"price": NAN}), (trade, {"qty": NAN}),
    (ticker, {"bid_price": INF}), (ticker, {"bid_qty": INF}), (ticker, {"ask_price": NAN}),
    (ticker, {"ask_qty": INF}),
    (depth, {"bids": [(99.0, 1.0), (NAN, 1.0)]}), (depth, {"asks": [(101.0, INF)]}),
    (depth, {"bids": [(-INF, 1.0)]}),
])
def test_market_events_reject_non_finite_values(make, kw):
    with pytest.raises(ValidationError, match="finite"):
        make(**kw)


@pytest.mark.parametrize("make, field, text", [
    (trade, "price", "1e999"), (trade, "qty", "Infinity"), (ticker, "ask_price", "1e999"),
    (ticker, "bid_qty", "NaN"), (depth, "bids", "[[NaN,1.0]]"), (depth, "asks", "[[101.0,1e999]]"),
])
def test_market_records_with_non_finite_numbers_are_decode_errors(make, field, text):
    with pytest.raises(DecodeError):
        decode(with_raw(encode(make()), field, text))


def test_market_constraints_still_hold():
    with pytest.raises(ValidationError):
        trade(price=0.0)
    with pytest.raises(ValidationError):
        ticker(bid_qty=-1.0)
    for ev in (trade(), ticker(), depth()):
        assert decode(encode(ev)) == ev
