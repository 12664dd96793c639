"""The topic catalogue: every topic's name, key, partitions, retention and dead-letter partner.

This is the one place that knows them. ``eigenloop topics ensure`` creates them from here;
producers, the streams worker and the sink look names up here. Names can carry a prefix
(``EIGENLOOP_KAFKA__TOPIC_PREFIX``) so tests and shadow runs get their own set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str  # what the record key is; it decides the partition
    partitions: int
    retention_ms: int | None  # None: keep forever
    compacted: bool = False
    dead_letter: str | None = "deadletter"
    description: str = ""
    config: dict[str, str] = field(default_factory=dict)
    # one partition, never overridden: consumers need a total order (see learn.groups)
    total_order: bool = False
    # which ``kafka.replication`` class sets its replication factor and min.insync.replicas
    replication: Literal["learning", "events"] = "events"

    def kafka_config(self) -> dict[str, str]:
        cfg = {"cleanup.policy": "compact" if self.compacted else "delete"}
        cfg["retention.ms"] = "-1" if self.retention_ms is None else str(self.retention_ms)
        cfg.update(self.config)
        return cfg


# The learning log (groups, updates, snapshots) is the model's source of truth: it is kept
# forever, because replay from any snapshot needs every group after it.
CATALOGUE: tuple[TopicSpec, ...] = (
    TopicSpec("market.events", "symbol", 6, 7 * DAY_MS, description="trades, book tickers, depth, stream gaps"),
    TopicSpec("social.events", "subject or post uri", 3, 7 * DAY_MS, description="Jetstream posts and engagements"),
    TopicSpec("agent.prompts", "group_id", 6, 30 * DAY_MS, description="the context of each group"),
    TopicSpec("agent.actions", "group_id", 6, 30 * DAY_MS, description="every candidate the policy sampled"),
    TopicSpec("agent.outcomes", "group_id", 6, 30 * DAY_MS, description="reward per candidate"),
    # One partition: the learner applies groups in log order, and replay must see the same order
    # to reproduce the checksums. A group closes every few seconds per symbol, far below what
    # one partition carries.
    TopicSpec("learn.groups", "group_id", 1, None, description="closed GRPO groups, the learner's input",
              total_order=True, replication="learning"),
    TopicSpec("learn.updates", "block", 6, None, description="one record per block weight change",
              replication="learning"),
    TopicSpec("learn.snapshots", "snapshot_id", 1, None, description="snapshot markers with consumed offsets",
              total_order=True, replication="learning"),
    TopicSpec("learn.guard", "policy_version", 1, None, description="collapse guard actions", total_order=True,
              replication="learning"),
    TopicSpec("deadletter", "source topic", 3, 30 * DAY_MS, dead_letter=None,
              description="undecodable or out-of-schema input with the reason"),
)

BY_NAME: dict[str, TopicSpec] = {t.name: t for t in CATALOGUE}


def topic_name(base: str, prefix: str = "") -> str:
    """The physical topic name for a catalogue name under an optional prefix: the one rule for
    catalogue topics, so producers, consumers, the streams engines and ``topics ensure`` agree.

    >>> topic_name("learn.groups", "shadow.")
    'shadow.learn.groups'
    """
    if base not in BY_NAME:
        raise KeyError(f"unknown topic {base!r}; the catalogue has {sorted(BY_NAME)}")
    return f"{prefix}{base}"


def physical_name(name: str, prefix: str = "") -> str:
    """``topic_name`` for a catalogue name; any other name (a test's or a tool's own topic) is
    taken as it is, so clients can be handed either."""
    return topic_name(name, prefix) if name in BY_NAME else name


def catalogue(prefix: str = "", partitions: int | None = None) -> list[TopicSpec]:
    """The catalogue under a prefix, optionally with every partition count overridden."""
    out = []
    for t in CATALOGUE:
        out.append(TopicSpec(
            name=topic_name(t.name, prefix), key=t.key,
            partitions=t.partitions if t.total_order else (partitions or t.partitions),
            retention_ms=t.retention_ms, compacted=t.compacted, total_order=t.total_order,
            dead_letter=None if t.dead_letter is None else topic_name(t.dead_letter, prefix),
            description=t.description, config=dict(t.config), replication=t.replication,
        ))
    return out
