"""DDL derived from the records, and migrations that are versioned and idempotent (real chdb)."""

from __future__ import annotations

from pathlib import Path

from daemon.ops.analytics.ddl import BY_RECORD, TABLES, columns_for
from daemon.ops.analytics.migrations import MIGRATIONS, migrate
from daemon.ops.analytics.store import open_chdb
from schemas import RECORD_TYPES, Action, DepthUpdate, Outcome, Prompt


def _types(record) -> dict[str, str]:
    return {c.name: c.ch_type for c in columns_for(record)}


def test_every_record_type_has_a_table_keyed_for_dedupe():
    assert set(RECORD_TYPES.values()) == set(BY_RECORD)
    for spec in TABLES:
        # ReplacingMergeTree collapses rows with equal sort keys: the identity must end the key
        assert spec.order_by.split(",")[-1].strip() == spec.identity, spec.name
        assert "ReplacingMergeTree" in spec.create_sql("db")


def test_pydantic_fields_map_to_clickhouse_types():
    action = _types(Action)
    assert action["ts_event"] == "DateTime64(9, 'UTC')"
    assert action["policy_version"] == "Int64"
    assert action["invalid_reason"] == "Nullable(String)"
    assert action["parsed"] == "String"  # a tagged union of records: kept whole as JSON
    assert action["choices"] == "Array(String)"
    assert action["task"] == "LowCardinality(String)"  # a Literal
    assert action["executed"] == "Bool"
    outcome = _types(Outcome)
    assert outcome["components_pnl_bps"] == "Float64"  # nested record flattened
    assert outcome["entry_price"] == "Nullable(Float64)"
    assert outcome["horizon_end_ns"] == "DateTime64(9, 'UTC')"
    assert _types(DepthUpdate)["bids"] == "Array(Tuple(Float64, Float64))"
    assert _types(Prompt)["features"] == "Map(String, Float64)"


def test_union_column_holds_json(tmp_path: Path):
    from schemas import MarketActionSpec

    a = Action(group_id="g", candidate_index=0, group_size=2, policy_version=0, seed=1, prompt_id="p",
               symbol="BTC/USDT", prompt="x", completion="y", parsed=MarketActionSpec(side="long", size=0.5, horizon_s=5))
    get = next(c.get for c in columns_for(Action) if c.name == "parsed")
    assert '"side":"long"' in get(a)


def test_migrations_apply_once_and_add_new_columns(tmp_path: Path):
    store = open_chdb(tmp_path / "chdb")
    try:
        first = migrate(store, "eigenloop")
        assert [line.split(":")[0] for line in first] == [str(m.version) for m in MIGRATIONS]
        assert migrate(store, "eigenloop") == []  # idempotent: nothing left to do
        tables = {r[0] for r in store.query("SELECT name FROM system.tables WHERE database = 'eigenloop'").rows}
        assert {t.name for t in TABLES} <= tables
        assert {"reward_minute", "advantage_hist", "block_loss_minute", "policy_timeline", "lag_minute",
                "consumer_lag", "market_minute", "mv_reward_minute", "mv_lag_minute"} <= tables
        # a record that gained a field since its table was created: the column is added
        store.command("ALTER TABLE eigenloop.outcomes DROP COLUMN exit_reason")
        again = migrate(store, "eigenloop")
        assert len(again) == 1 and again[0].startswith("auto:") and "outcomes.exit_reason" in again[0]
        assert migrate(store, "eigenloop") == []
        versions = [r[0] for r in store.query("SELECT version FROM eigenloop.schema_migrations FINAL").rows]
        assert len(versions) == len(MIGRATIONS) + 1
    finally:
        store.close()
