"""Topics and tables of the streams worker. Read this file to see the whole topology.

Inputs: ``market.events`` (keyed by symbol) and ``agent.actions`` (keyed by group_id). Actions
are re-keyed by symbol into the internal ``<app>-actions-by-symbol`` topic, which has as many
partitions as ``market.events``, so one agent sees a symbol's market data, its candidates and its
timer ticks on the same partition, in order, and its table keys stay local.

Outputs: ``agent.outcomes`` and ``learn.groups`` (keyed by group_id) and ``deadletter``.

Tables (changelog-backed, memory store): pending candidates and the closed-group memory. The
agenda of due times is derived from the pending candidates, in memory. The market state (tumbling ``BUCKET_S`` buckets of event time per
``exchange|symbol``, expired by the engine in event time after ``streams.market_window_s``) is
not a table: it is a pure function of the recent market log, kept in memory and rebuilt from
the log when a market partition is assigned (``streams.rebuild``), so a quote costs no
changelog write. See ``streams.engine`` for the shapes.
Each agent also keeps its input cursors in a table of its own (``streams.cursor``): the
symbols agent's is co-partitioned with market data, the router's with ``agent.actions``.
"""

from __future__ import annotations

from dataclasses import dataclass

import faust

from schemas.settings import Settings
from schemas.topics import topic_name
from streams.engine import SymbolEngine

BUCKET_S = 1.0


@dataclass
class Topology:
    market: faust.TopicT
    actions: faust.TopicT
    internal: faust.TopicT
    symbol_inputs: faust.TopicT  # market + internal, consumed by one agent
    outputs: dict[str, faust.TopicT]  # by catalogue name, plus "internal"
    pending: faust.TableT
    closed: faust.TableT
    cursors: faust.TableT  # symbols agent: "topic|partition" -> next offset (streams.cursor)
    action_cursors: faust.TableT  # route-actions agent: the same for agent.actions


# every table, with the catalogue topic it is co-partitioned with
TABLES = {"pending-candidates": "market.events", "closed-groups": "market.events",
          "input-cursors": "market.events", "action-input-cursors": "agent.actions"}


def changelog_topics(settings: Settings) -> dict[str, str]:
    """Each table's changelog topic (Faust names it ``<app id>-<table>-changelog``), with the
    catalogue topic whose partition count it must have."""
    app_id = f"{settings.kafka.topic_prefix}{settings.streams.app_id}"
    return {f"{app_id}-{table}-changelog": source for table, source in TABLES.items()}


def internal_topic(settings: Settings) -> str:
    """The worker's own repartition topic. Not a catalogue topic (``schemas.topics``): like the
    changelogs Faust names, it belongs to the app and is named after the app's id."""
    return f"{settings.kafka.topic_prefix}{settings.streams.app_id}-actions-by-symbol"


def declare(app: faust.App, settings: Settings, partitions: int, action_partitions: int) -> Topology:
    prefix = settings.kafka.topic_prefix
    name = lambda base: topic_name(base, prefix)  # noqa: E731
    internal_name = internal_topic(settings)
    market = app.topic(name("market.events"))
    actions = app.topic(name("agent.actions"))
    internal = app.topic(internal_name, partitions=partitions, internal=True)
    symbol_inputs = app.topic(name("market.events"), internal_name)
    outputs = {base: app.topic(name(base)) for base in ("agent.outcomes", "learn.groups", "deadletter")}
    outputs["internal"] = internal

    def table(tname: str, n: int = partitions) -> faust.TableT:
        return app.Table(tname, partitions=n)  # json keys and values (no key_type/value_type)

    counts = {"market.events": partitions, "agent.actions": action_partitions}
    tables = {tname: table(tname, counts[source]) for tname, source in TABLES.items()}
    return Topology(
        market=market, actions=actions, internal=internal, symbol_inputs=symbol_inputs, outputs=outputs,
        pending=tables["pending-candidates"], closed=tables["closed-groups"], cursors=tables["input-cursors"],
        action_cursors=tables["action-input-cursors"],
    )


def engine_for(topo: Topology, settings: Settings) -> SymbolEngine:
    return SymbolEngine(
        settings.reward, settings.groups, pending=topo.pending, closed=topo.closed, bucket_s=BUCKET_S,
        market_window_s=settings.streams.market_window_s, idle_after_s=settings.streams.idle_tick_s,
        idle_close=settings.streams.idle_close,
    )
