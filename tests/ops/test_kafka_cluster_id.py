"""The local broker's KRaft cluster id never starts with "-": kafka-storage would read it as an option."""

from __future__ import annotations

import uuid

from daemon.ops import kafka_local


def test_a_cluster_id_that_would_start_with_a_dash_is_drawn_again(monkeypatch):
    # 0xF8 puts 0b111110 (62, "-" in URL-safe base64) first; one in 64 random UUIDs does that
    draws = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x10" + bytes(15))])
    monkeypatch.setattr(kafka_local.uuid, "uuid4", lambda: next(draws))
    cluster_id = kafka_local.random_cluster_id()
    assert cluster_id == "EAAAAAAAAAAAAAAAAAAAAA" and len(cluster_id) == 22
