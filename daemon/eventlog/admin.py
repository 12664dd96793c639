"""Idempotent topic creation from the catalogue through the Kafka admin API."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from daemon.eventlog.connection import client_kwargs
from schemas.settings import Settings
from schemas.topics import catalogue


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
            resp = await admin.create_topics([
                NewTopic(name=t.name, num_partitions=t.partitions, replication_factor=1,
                         topic_configs={**t.kafka_config(), **({"retention.ms": "-1"} if keep_all else {})})
                for t in missing
            ])
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
