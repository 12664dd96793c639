"""Topic replication per class, from settings or from the cluster's size. No broker: the suite's
Kafka is a single local broker, so the topic requests are checked before they are sent."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from daemon.errors import ConfigError
from daemon.eventlog import admin
from daemon.eventlog.admin import new_topics, replication_for
from schemas.settings import KafkaSettings, Replication, Settings, TopicReplication
from schemas.topics import BY_NAME, CATALOGUE, catalogue


def _by_name(requests):
    return {r.name: (r.replication_factor, r.topic_configs["min.insync.replicas"]) for r in requests}


def test_learning_log_is_its_own_class():
    learning = {t.name for t in CATALOGUE if t.replication == "learning"}
    assert learning == {"learn.groups", "learn.updates", "learn.snapshots", "learn.guard"}
    assert all(t.replication == r.replication for t, r in zip(CATALOGUE, catalogue("p.", 3)))


def test_one_broker_gets_one_replica():
    got = _by_name(new_topics(catalogue(), KafkaSettings(), brokers=1))
    assert set(got.values()) == {(1, "1")}


def test_a_cluster_gets_three_replicas_and_two_in_sync():
    got = _by_name(new_topics(catalogue(), KafkaSettings(), brokers=5))
    assert set(got.values()) == {(3, "2")}
    # smaller clusters: every broker, and writes survive one of them down
    assert replication_for(BY_NAME["learn.groups"], KafkaSettings(), brokers=2) == (2, 1)


def test_configured_factor_per_class():
    kafka = KafkaSettings(replication=TopicReplication(learning=Replication(factor=5, min_insync=3),
                                                       events=Replication(factor=2)))
    got = _by_name(new_topics(catalogue("prod."), kafka, brokers=6, keep_all=True))
    assert got["prod.learn.groups"] == (5, "3")
    assert got["prod.learn.snapshots"] == (5, "3")
    assert got["prod.market.events"] == (2, "1")
    assert got["prod.deadletter"] == (2, "1")
    groups = next(r for r in new_topics(catalogue(), kafka, brokers=6, keep_all=True) if r.name == "learn.groups")
    assert groups.num_partitions == 1 and groups.topic_configs["retention.ms"] == "-1"


def test_factor_above_the_cluster_is_a_clear_error():
    kafka = KafkaSettings(replication=TopicReplication(learning=Replication(factor=3)))
    with pytest.raises(ConfigError, match=r"kafka.replication.learning.factor=3 but the cluster has 1 broker"):
        new_topics(catalogue(), kafka, brokers=1)
    with pytest.raises(ConfigError, match="min_insync=2 is above the replication factor 1"):
        replication_for(BY_NAME["market.events"],
                        KafkaSettings(replication=TopicReplication(events=Replication(min_insync=2))), brokers=1)
    with pytest.raises(ValidationError, match="min_insync"):
        Replication(factor=2, min_insync=3)


def test_settings_from_env(monkeypatch):
    from schemas.settings import load_settings

    monkeypatch.setenv("EIGENLOOP_KAFKA__REPLICATION__LEARNING__FACTOR", "4")
    s = load_settings()
    assert s.kafka.replication.learning.factor == 4 and s.kafka.replication.events.factor is None


class _FakeAdmin:
    """Stands in for AIOKafkaAdminClient: a three-broker cluster with no topics yet."""

    requests: list = []

    def __init__(self, **kw):
        pass

    async def start(self):
        pass

    async def close(self):
        pass

    async def list_topics(self):
        return []

    async def describe_cluster(self):
        return {"brokers": [{"node_id": i} for i in range(3)]}

    async def create_topics(self, requests):
        _FakeAdmin.requests = list(requests)
        return SimpleNamespace(topic_errors=[(r.name, 0, "") for r in requests])


def test_ensure_topics_asks_the_cluster(monkeypatch):
    monkeypatch.setattr(admin, "AIOKafkaAdminClient", _FakeAdmin)
    s = Settings(kafka=KafkaSettings(bootstrap="127.0.0.1:1"))
    created, _ = asyncio.run(admin.ensure_topics(s))
    assert len(created) == len(CATALOGUE)
    got = _by_name(_FakeAdmin.requests)
    assert got["learn.groups"] == (3, "2")


def test_streams_worker_topics_follow_their_class_on_the_real_broker(kafka_settings):
    """The worker's re-keying topic (and, through ``create_app``, its changelogs) get
    ``kafka.replication.streams``: the one-broker suite cluster resolves to one copy, and a
    factor the cluster cannot hold stops the worker before it creates anything."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from daemon.eventlog.connection import client_kwargs
    from streams.app import create_app, prepare_topics
    from schemas.topics import topic_name

    prefix = kafka_settings.kafka.topic_prefix
    kw = client_kwargs(kafka_settings)
    internal = f"{prefix}streams-internal-test"
    market, actions = topic_name("market.events", prefix), topic_name("agent.actions", prefix)
    with pytest.raises(ValueError, match=r"kafka.replication.streams.factor=3 but the cluster has 1 broker"):
        asyncio.run(prepare_topics(kw, market, internal, actions, Replication(factor=3)))

    # the changelogs exist, with their source's partitions, before the worker starts
    changelogs = {f"{prefix}streams-test-cursors-changelog": "market.events",
                  f"{prefix}streams-test-action-cursors-changelog": "agent.actions"}
    layout = asyncio.run(prepare_topics(kw, market, internal, actions, kafka_settings.kafka.replication.streams,
                                        changelogs=changelogs))
    assert (layout.partitions, layout.replication) == (3, 1)
    partitions = asyncio.run(_partition_counts(kw, [*changelogs, internal]))
    assert partitions == {internal: 3, f"{prefix}streams-test-cursors-changelog": 3,
                          f"{prefix}streams-test-action-cursors-changelog": layout.action_partitions}

    async def described(name: str = internal):
        # a created topic reaches the broker's config view a moment after CreateTopics answers:
        # ask until it is there (error 0) or the deadline passes
        client = AIOKafkaAdminClient(**kw)
        await client.start()
        try:
            deadline = asyncio.get_running_loop().time() + 15
            while True:
                got = await client.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
                if all(r[0] == 0 for resp in got for r in resp.resources):
                    return got
                assert asyncio.get_running_loop().time() < deadline, f"{name} never described: {got}"
                await asyncio.sleep(0.1)
        finally:
            await client.close()

    configs = {c[0]: c[1] for c in described_configs(asyncio.run(described()))}
    assert configs["min.insync.replicas"] == "1"
    changelog = {c[0]: c[1] for c in described_configs(asyncio.run(described(next(iter(changelogs)))))}
    assert changelog["cleanup.policy"] == "compact" and changelog["min.insync.replicas"] == "1"

    app = create_app(kafka_settings, kafka_settings.kafka.bootstrap, layout.partitions, replication=3)
    assert app.conf.topic_replication_factor == 3


async def _partition_counts(kw: dict, names: list[str]) -> dict[str, int]:
    from aiokafka.client import AIOKafkaClient

    client = AIOKafkaClient(**kw)
    await client.bootstrap()
    try:
        cluster = await client.fetch_all_metadata()
        return {n: len(cluster.partitions_for_topic(n) or ()) for n in names}
    finally:
        await client.close()


def described_configs(responses):
    """(name, value) of every config entry in aiokafka's DescribeConfigs responses."""
    for resp in responses:
        for resource in resp.resources:
            yield from ((entry[0], entry[1]) for entry in resource[4])
