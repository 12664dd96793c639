"""Has the Flink job read all of a market partition? The idle-stream clock needs to know.

The engine's wall-clock estimate of event time (``streams.engine.Clock.idle_now``) may only be
used on a stream that has *nothing left to read*: with a backlog, a symbol that is merely
waiting its turn would look idle and its candidates would be scored before their quotes
arrive. The Faust worker asks its own consumer for that. In Flink the sources and the keyed
operator are separate tasks, so the operator asks Kafka instead (librdkafka, through
``confluent-kafka``, which speaks Kafka 4's protocol versions):

- the partition's end offset, against the highest offset this subtask has processed from it
  (exact at parallelism 1, and for the subtask that got the partition's last record), or
- the offset the job's Kafka source committed for its consumer group: sources commit on
  checkpoint completion, and a completed checkpoint means every record before that offset has
  passed through every subtask. That covers the other subtasks, one checkpoint later.

Answers are cached for ``ttl_s`` per partition; any failure answers "unknown" (None), which the
operator treats as "not caught up": windows then close on the watermark alone.
"""

from __future__ import annotations

import logging
import time

from schemas.kafka_security import librdkafka_config as security_config

log = logging.getLogger(__name__)


def librdkafka_config(bootstrap: str, group_id: str, kafka) -> dict[str, str]:
    """Client settings for librdkafka from ``schemas.settings.KafkaSettings``."""
    return {"bootstrap.servers": bootstrap, "group.id": group_id, "enable.auto.commit": "false",
            **security_config(kafka)}


class LagProbe:
    """``caught_up((topic, partition), highest_processed_offset)`` -> True / False / None."""

    def __init__(self, config: dict[str, str], ttl_s: float = 0.25, timeout_s: float = 2.0):
        self.config, self.ttl_s, self.timeout_s = dict(config), ttl_s, timeout_s
        self._consumer = None
        self._cache: dict[tuple[str, int], tuple[float, int | None, int | None]] = {}

    def caught_up(self, tp: tuple[str, int], processed: int | None) -> bool | None:
        end, committed = self._offsets(tp)
        if end is None:
            return None
        if processed is not None and processed + 1 >= end:
            return True
        return committed is not None and committed >= end

    def _offsets(self, tp: tuple[str, int]) -> tuple[int | None, int | None]:
        now = time.monotonic()
        hit = self._cache.get(tp)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1], hit[2]
        end = committed = None
        try:
            from confluent_kafka import Consumer, TopicPartition

            if self._consumer is None:
                self._consumer = Consumer(self.config)
            part = TopicPartition(tp[0], int(tp[1]))
            end = self._consumer.get_watermark_offsets(part, timeout=self.timeout_s, cached=False)[1]
            offset = self._consumer.committed([part], timeout=self.timeout_s)[0].offset
            committed = offset if offset >= 0 else None  # negative: nothing committed yet
        except Exception as e:  # noqa: BLE001 - unknown lag only delays idle windows to the watermark
            log.warning("lag probe for %s failed: %r", tp, e)
        self._cache[tp] = (now, end, committed)
        return end, committed

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
