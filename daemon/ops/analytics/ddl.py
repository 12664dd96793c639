"""ClickHouse tables derived from the event records in ``schemas``.

Columns come from the pydantic fields (``columns_for``), so a field added to a record shows up
as a column without anyone writing DDL; what cannot be derived — sort key, partitioning, TTL —
is stated per table in ``TABLES``.

Dedupe design: every event table is a ``ReplacingMergeTree`` whose sort key ends in
``event_id`` and whose other key parts are fixed by the event's content (symbol, group_id,
block, ...) or by the id itself (``id_time``, decoded from the UUIDv7 ``event_id``). Two copies
of one event therefore share a sort key and a partition, and merges keep one. Merges are
eventual, so the sink also skips ids already present before inserting (that keeps the
materialised views, which see inserts and not merges, exact); readers of base tables use
``FINAL`` for the remaining window.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal

from pydantic import BaseModel

from schemas import (Action, BlockUpdate, BookTicker, DeadLetter, DepthUpdate, Event, GRPOGroup, GuardAction,
                     MarketTrade, MarketWatermark, Outcome, Prompt, SnapshotMarker, SocialEngagement, SocialPost,
                     StreamGap, event_id_ms)

# Strings with few distinct values: dictionary-encoded, which makes them cheap to group by.
LOW_CARDINALITY = {"type", "source", "symbol", "exchange", "stream", "source_topic", "error_type"}
NS_TIMESTAMPS = {"ts_event", "ts_ingest"}


@dataclass(frozen=True)
class Column:
    name: str
    ch_type: str
    get: Callable[[Event], Any]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _scalar_type(tp: Any, name: str) -> str:
    """The ClickHouse type of one (non-optional) annotation."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if all(isinstance(a, str) for a in args):
            return "LowCardinality(String)"
        return "Int64"
    if origin is list:
        return f"Array({_scalar_type(args[0], name)})"
    if origin is tuple:
        return f"Tuple({', '.join(_scalar_type(a, name) for a in args)})"
    if origin is dict:
        return f"Map({_scalar_type(args[0], name)}, {_scalar_type(args[1], name)})"
    if tp is bool:
        return "Bool"
    if tp is int:
        if name in NS_TIMESTAMPS or name.endswith("_ns"):
            return "DateTime64(9, 'UTC')"
        if name.endswith("_us"):
            return "DateTime64(6, 'UTC')"
        return "Int64"
    if tp is float:
        return "Float64"
    if tp is str:
        return "LowCardinality(String)" if name in LOW_CARDINALITY else "String"
    raise TypeError(f"{name}: no ClickHouse mapping for {tp!r}")


def _split_optional(tp: Any) -> tuple[list[Any], bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args, len(args) != len(typing.get_args(tp))
    return [tp], False


def _getter(path: tuple[str, ...]) -> Callable[[Event], Any]:
    if len(path) == 1:
        key = path[0]
        return lambda ev: getattr(ev, key)

    def get(ev: Event) -> Any:
        obj: Any = ev
        for part in path:
            obj = getattr(obj, part)
        return obj
    return get


def _json_getter(path: tuple[str, ...]) -> Callable[[Event], Any]:
    inner = _getter(path)

    def get(ev: Event) -> str:
        v = inner(ev)
        return "" if v is None else json.dumps(v.model_dump(mode="json"), separators=(",", ":"))
    return get


def _model_columns(model: type[BaseModel], prefix: tuple[str, ...]) -> list[Column]:
    cols: list[Column] = []
    for fname, finfo in model.model_fields.items():
        path = prefix + (fname,)
        name = "_".join(path)
        args, optional = _split_optional(finfo.annotation)
        if any(_is_model(a) for a in args):
            if len(args) == 1 and not optional:
                # a nested record: flattened into prefixed columns, which stay queryable
                cols.extend(_model_columns(args[0], path))
            else:
                # a tagged union of records (e.g. Action.parsed): kept whole as JSON text
                cols.append(Column(name, "String", _json_getter(path)))
            continue
        if len(args) != 1:
            raise TypeError(f"{name}: unions of scalars are not mapped")
        ch = _scalar_type(args[0], fname)
        if optional:
            # ClickHouse cannot wrap composite types in Nullable; they get an empty default
            ch = ch if ch.startswith(("Array", "Map", "Tuple")) else f"Nullable({ch.replace('LowCardinality(String)', 'String')})"
        cols.append(Column(name, ch, _getter(path)))
    return cols


def columns_for(record: type[Event]) -> list[Column]:
    """Every column of a record's table, plus the columns the sink adds."""
    cols = _model_columns(record, ())
    cols.append(Column("id_time", "DateTime64(3, 'UTC')", id_time_ms))
    return cols


def id_time_ms(ev: Event) -> int:
    """When the event was born, from its UUIDv7 id; the envelope time for foreign ids."""
    try:
        return event_id_ms(ev.event_id)
    except ValueError:
        return ev.ts_ingest // 1_000_000


def dead_letter_origin(ev: Event) -> str:
    """What a dead letter is about. A consumer that crashes after dead-lettering a record and
    reads it again writes a second DeadLetter with a fresh event_id for the same input; the
    input's Kafka coordinates are what make the two one. Input from outside Kafka (offset -1)
    has only its event_id."""
    assert isinstance(ev, DeadLetter)
    return f"{ev.source_topic}:{ev.partition}:{ev.offset}" if ev.offset >= 0 else ev.event_id


# Columns the sink fills from the Kafka record rather than from the event.
KAFKA_COLUMNS = (("kafka_topic", "LowCardinality(String)"), ("kafka_partition", "UInt16"), ("kafka_offset", "UInt64"))


@dataclass(frozen=True)
class TableSpec:
    name: str
    record: type[Event]
    order_by: str
    partition_by: str = "toYYYYMM(id_time)"
    ttl: str | None = None
    # the column whose equal values are one event; the sort key ends in it
    identity: str = "event_id"
    derived: tuple[Column, ...] = ()

    def columns(self) -> list[Column]:
        return columns_for(self.record) + list(self.derived)

    def create_sql(self, db: str) -> str:
        cols = [f"    `{c.name}` {c.ch_type}" for c in self.columns()]
        cols += [f"    `{n}` {t}" for n, t in KAFKA_COLUMNS]
        # event_id lookups (the sink's pre-insert dedupe) skip granules through this index
        cols.append("    INDEX idx_event_id event_id TYPE bloom_filter(0.01) GRANULARITY 4")
        sql = (f"CREATE TABLE IF NOT EXISTS {db}.{self.name} (\n" + ",\n".join(cols) + "\n)\n"
               f"ENGINE = ReplacingMergeTree\nPARTITION BY {self.partition_by}\nORDER BY ({self.order_by})")
        if self.ttl:
            sql += f"\nTTL {self.ttl}"
        return sql


_HOURLY = "toStartOfHour(id_time)"
# Sort keys put what reports filter by first (symbol, block, policy_version) and end in event_id.
# Market data partitions by day and expires with its topic's retention: raw ticks are only kept
# long enough to rebuild the per-minute aggregates.
TABLES: tuple[TableSpec, ...] = (
    TableSpec("market_trades", MarketTrade, f"exchange, symbol, {_HOURLY}, event_id",
              partition_by="toDate(id_time)", ttl="toDateTime(id_time) + INTERVAL 7 DAY"),
    TableSpec("market_quotes", BookTicker, f"exchange, symbol, {_HOURLY}, event_id",
              partition_by="toDate(id_time)", ttl="toDateTime(id_time) + INTERVAL 7 DAY"),
    TableSpec("market_depth", DepthUpdate, f"exchange, symbol, {_HOURLY}, event_id",
              partition_by="toDate(id_time)", ttl="toDateTime(id_time) + INTERVAL 1 DAY"),
    TableSpec("stream_gaps", StreamGap, "exchange, symbol, event_id"),
    TableSpec("market_watermarks", MarketWatermark, "exchange, symbol, event_id"),
    TableSpec("social_posts", SocialPost, f"{_HOURLY}, event_id", partition_by="toDate(id_time)",
              ttl="toDateTime(id_time) + INTERVAL 7 DAY"),
    TableSpec("social_engagements", SocialEngagement, f"{_HOURLY}, event_id", partition_by="toDate(id_time)",
              ttl="toDateTime(id_time) + INTERVAL 7 DAY"),
    TableSpec("prompts", Prompt, "symbol, prompt_id, event_id"),
    TableSpec("actions", Action, "symbol, group_id, candidate_index, event_id"),
    TableSpec("outcomes", Outcome, "symbol, group_id, candidate_index, event_id"),
    TableSpec("groups", GRPOGroup, "symbol, group_id, event_id"),
    TableSpec("block_updates", BlockUpdate, "block, step, event_id"),
    TableSpec("snapshots", SnapshotMarker, "policy_version, event_id"),
    TableSpec("guard_actions", GuardAction, "policy_version, event_id"),
    TableSpec("dead_letters", DeadLetter, "source_topic, origin", identity="origin",
              derived=(Column("origin", "String", dead_letter_origin),)),
)

BY_RECORD: dict[type[Event], TableSpec] = {t.record: t for t in TABLES}
