"""Idempotent topic creation from the catalogue through the Kafka admin API.

Replication comes from ``kafka.replication`` per topic class. Unset, it follows the cluster:
one broker (the local broker of ``eigenloop run`` and the tests) can only hold one copy; a real
cluster gets three, and writes need two of them (``min.insync.replicas``), so one broker can be
lost, or restarted for an upgrade, without losing the learning log or stopping writes.
"""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from daemon.errors import ConfigError
from daemon.eventlog.connection import client_kwargs
from schemas.settings import KafkaSettings, Settings
from schemas.topics import TopicSpec, catalogue

def replication_for(spec: TopicSpec, kafka: KafkaSettings, brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) of one topic on a cluster of ``brokers``."""
    configured = getattr(kafka.replication, spec.replication)
    try:
        return configured.resolve(brokers, f"kafka.replication.{spec.replication}")
    except ValueError as e:
        raise ConfigError(str(e)) from e


def new_topics(specs: list[TopicSpec], kafka: KafkaSettings, brokers: int, keep_all: bool = False) -> list[NewTopic]:
    """The create requests for ``specs``: partitions, replication and topic configs."""
    out = []
    for t in specs:
        factor, min_insync = replication_for(t, kafka, brokers)
        configs = {**t.kafka_config(), "min.insync.replicas": str(min_insync),
                   **({"retention.ms": "-1"} if keep_all else {})}
        out.append(NewTopic(name=t.name, num_partitions=t.partitions, replication_factor=factor,
                            topic_configs=configs))
    return out


async def ensure_topics(settings: Settings, partitions: int | None = None,
                        prefix: str | None = None, keep_all: bool = False) -> tuple[list[str], list[str]]:
    """Create the catalogue topics that are missing. Returns (created, already present).

    Safe to run concurrently and repeatedly: a topic another process created in between is
    counted as present, not as an error.

    ``keep_all``: no time-based retention, for topics fed recorded captures directly (tests,
    benchmarks). Record timestamps are ``ts_ingest``; a capture's are months old, so with the
    catalogue's retention the broker deletes them on its next retention check, mid-run.
    """
    specs = catalogue(settings.kafka.topic_prefix if prefix is None else prefix, partitions)
    admin = AIOKafkaAdminClient(**client_kwargs(settings), request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in specs if t.name not in existing]
        created: list[str] = []
        if missing:
            brokers = len((await admin.describe_cluster())["brokers"])
            resp = await admin.create_topics(new_topics(missing, settings.kafka, brokers, keep_all))
            for err in resp.topic_errors:
                name, code = err[0], err[1]
                if code == 0:
                    created.append(name)
                elif for_code(code) is TopicAlreadyExistsError:
                    continue  # created concurrently by another process: the desired end state
                else:
                    message = err[2] if len(err) > 2 else ""
                    raise for_code(code)(f"creating {name}: {message}")
        present = [t.name for t in specs if t.name not in created]
        return created, present
    finally:
        await admin.close()
