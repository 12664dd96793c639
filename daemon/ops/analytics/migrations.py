"""Versioned, idempotent migrations, recorded in ``<db>.schema_migrations``.

Each migration is a numbered list of statements that are each safe to run twice (``IF NOT
EXISTS``), so a migration interrupted half-way is simply run again; its row is written only
after all its statements succeeded. After the numbered ones, ``sync_columns`` adds any column
a record gained since its table was created (additive schema evolution, the only kind the
codec allows) and records that as an ``auto`` row with the column list's hash.

Aggregates fed by materialised views see every insert, not merges, so they are exact only if
no event is inserted twice: the sink guarantees that (see ``daemon.ops.analytics.sink``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

from daemon.ops.analytics.ddl import KAFKA_COLUMNS, TABLES
from daemon.ops.analytics.store import Store


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: Callable[[str], list[str]]


def _event_tables(db: str) -> list[str]:
    return [t.create_sql(db) for t in TABLES]


def _lag_and_aggregates(db: str) -> list[str]:
    return [
        # the sink's own lag, one row per assigned partition each time it commits (rate-limited)
        f"""CREATE TABLE IF NOT EXISTS {db}.consumer_lag (
    ts DateTime64(3, 'UTC'), consumer_group LowCardinality(String), topic LowCardinality(String),
    partition UInt16, committed Int64, end_offset Int64, lag Int64
) ENGINE = MergeTree PARTITION BY toYYYYMM(ts) ORDER BY (consumer_group, topic, partition, ts)
TTL toDateTime(ts) + INTERVAL 30 DAY""",
        f"""CREATE TABLE IF NOT EXISTS {db}.market_minute (
    exchange LowCardinality(String), symbol LowCardinality(String), minute DateTime('UTC'),
    open AggregateFunction(argMin, Float64, DateTime64(9, 'UTC')),
    close AggregateFunction(argMax, Float64, DateTime64(9, 'UTC')),
    high SimpleAggregateFunction(max, Float64), low SimpleAggregateFunction(min, Float64),
    volume SimpleAggregateFunction(sum, Float64), trades SimpleAggregateFunction(sum, UInt64),
    quotes SimpleAggregateFunction(sum, UInt64), spread_bps AggregateFunction(avg, Float64)
) ENGINE = AggregatingMergeTree PARTITION BY toYYYYMM(minute) ORDER BY (exchange, symbol, minute)""",
        f"""CREATE TABLE IF NOT EXISTS {db}.reward_minute (
    symbol LowCardinality(String), minute DateTime('UTC'),
    n SimpleAggregateFunction(sum, UInt64), valid SimpleAggregateFunction(sum, UInt64),
    reward_sum SimpleAggregateFunction(sum, Float64), reward_min SimpleAggregateFunction(min, Float64),
    reward_max SimpleAggregateFunction(max, Float64), reward_q AggregateFunction(quantiles(0.1, 0.5, 0.9), Float64)
) ENGINE = AggregatingMergeTree PARTITION BY toYYYYMM(minute) ORDER BY (symbol, minute)""",
        f"""CREATE TABLE IF NOT EXISTS {db}.advantage_hist (
    day Date, task LowCardinality(String), status LowCardinality(String), bucket Float32, n UInt64
) ENGINE = SummingMergeTree PARTITION BY toYYYYMM(day) ORDER BY (day, task, status, bucket)""",
        f"""CREATE TABLE IF NOT EXISTS {db}.block_loss_minute (
    block UInt32, minute DateTime('UTC'), updates SimpleAggregateFunction(sum, UInt64),
    loss AggregateFunction(avg, Float64), grad_norm AggregateFunction(avg, Float64),
    last_policy_version SimpleAggregateFunction(max, Int64)
) ENGINE = AggregatingMergeTree PARTITION BY toYYYYMM(minute) ORDER BY (block, minute)""",
        f"""CREATE TABLE IF NOT EXISTS {db}.policy_timeline (
    policy_version Int64, first_seen SimpleAggregateFunction(min, DateTime64(9, 'UTC')),
    last_seen SimpleAggregateFunction(max, DateTime64(9, 'UTC')), updates SimpleAggregateFunction(sum, UInt64),
    blocks SimpleAggregateFunction(groupUniqArrayArray, Array(UInt32)), mean_loss AggregateFunction(avg, Float64)
) ENGINE = AggregatingMergeTree ORDER BY policy_version""",
        f"""CREATE TABLE IF NOT EXISTS {db}.lag_minute (
    consumer_group LowCardinality(String), topic LowCardinality(String), partition UInt16, minute DateTime('UTC'),
    max_lag SimpleAggregateFunction(max, Int64), last_lag AggregateFunction(argMax, Int64, DateTime64(3, 'UTC'))
) ENGINE = AggregatingMergeTree PARTITION BY toYYYYMM(minute) ORDER BY (consumer_group, topic, partition, minute)
TTL minute + INTERVAL 90 DAY""",
    ]


def _views(db: str) -> list[str]:
    return [
        f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.mv_market_minute_trades TO {db}.market_minute AS
SELECT exchange, symbol, toStartOfMinute(ts_event) AS minute, argMinState(price, ts_event) AS open,
       argMaxState(price, ts_event) AS close, max(price) AS high, min(price) AS low, sum(qty) AS volume,
       toUInt64(count()) AS trades, toUInt64(0) AS quotes
FROM {db}.market_trades GROUP BY exchange, symbol, minute""",
        f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.mv_market_minute_quotes TO {db}.market_minute AS
SELECT exchange, symbol, toStartOfMinute(ts_event) AS minute, toUInt64(count()) AS quotes,
       avgState(if(bid_price > 0, (ask_price - bid_price) / ((ask_price + bid_price) / 2) * 1e4, 0.)) AS spread_bps
FROM {db}.market_quotes GROUP BY exchange, symbol, minute""",
        f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.mv_reward_minute TO {db}.reward_minute AS
SELECT symbol, toStartOfMinute(ts_event) AS minute, toUInt64(count()) AS n, toUInt64(countIf(valid)) AS valid,
       sum(reward) AS reward_sum, min(reward) AS reward_min, max(reward) AS reward_max,
       quantilesState(0.1, 0.5, 0.9)(reward) AS reward_q
FROM {db}.outcomes GROUP BY symbol, minute""",
        f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.mv_advantage_hist TO {db}.advantage_hist AS
SELECT toDate(ts_event) AS day, task, status,
       toFloat32(greatest(-3., least(3., floor(adv * 4) / 4))) AS bucket, toUInt64(count()) AS n
FROM {db}.groups ARRAY JOIN advantages AS adv GROUP BY day, task, status, bucket""",
        f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.mv_block_loss_minute TO {db}.block_loss_minute AS
SELECT toUInt32(block) AS block, toStartOfMinute(ts_event) AS minute, toUInt64(count()) AS updates,
       avgState(loss) AS loss, avgState(grad_norm) AS grad_norm, max(policy_version) AS last_policy_version
FROM {db}.block_updates GROUP BY block, minute""",
        f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.mv_policy_timeline TO {db}.policy_timeline AS
SELECT policy_version, min(ts_event) AS first_seen, max(ts_event) AS last_seen, toUInt64(count()) AS updates,
       groupUniqArray(toUInt32(block)) AS blocks, avgState(loss) AS mean_loss
FROM {db}.block_updates GROUP BY policy_version""",
        f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.mv_lag_minute TO {db}.lag_minute AS
SELECT consumer_group, topic, partition, toStartOfMinute(ts) AS minute, max(lag) AS max_lag,
       argMaxState(lag, ts) AS last_lag
FROM {db}.consumer_lag GROUP BY consumer_group, topic, partition, minute""",
    ]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "event tables", _event_tables),
    Migration(2, "consumer lag and aggregate tables", _lag_and_aggregates),
    Migration(3, "materialised views", _views),
)


def _ensure_ledger(store: Store, db: str) -> None:
    store.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    store.command(f"""CREATE TABLE IF NOT EXISTS {db}.schema_migrations (
    version String, name String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree ORDER BY version""")


def applied(store: Store, db: str) -> set[str]:
    return {r[0] for r in store.query(f"SELECT version FROM {db}.schema_migrations FINAL").rows}


def sync_columns(store: Store, db: str) -> list[str]:
    """ADD COLUMN for fields the records gained after their tables were created."""
    have: dict[str, set[str]] = {}
    for table, column in store.query(
            f"SELECT table, name FROM system.columns WHERE database = '{db}'").rows:
        have.setdefault(table, set()).add(column)
    added = []
    for spec in TABLES:
        wanted = [(c.name, c.ch_type) for c in spec.columns()] + list(KAFKA_COLUMNS)
        for name, ch_type in wanted:
            if name not in have.get(spec.name, set()):
                store.command(f"ALTER TABLE {db}.{spec.name} ADD COLUMN IF NOT EXISTS `{name}` {ch_type}")
                added.append(f"{spec.name}.{name}")
    return added


def migrate(store: Store, db: str) -> list[str]:
    """Apply what is missing; returns the names of what was applied (empty when up to date)."""
    _ensure_ledger(store, db)
    done = applied(store, db)
    out = []
    for m in MIGRATIONS:
        if str(m.version) in done:
            continue
        for stmt in m.statements(db):
            store.command(stmt)
        store.insert(f"{db}.schema_migrations", [[str(m.version), m.name]], ["version", "name"])
        out.append(f"{m.version}: {m.name}")
    added = sync_columns(store, db)
    if added:
        digest = hashlib.sha256(",".join(sorted(added)).encode()).hexdigest()[:12]
        store.insert(f"{db}.schema_migrations", [[f"auto:{digest}", "added " + ", ".join(added)]],
                     ["version", "name"])
        out.append(f"auto:{digest}: added {', '.join(added)}")
    return out
