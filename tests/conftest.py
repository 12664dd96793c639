"""Shared fixtures: one real Kafka broker per test session, isolated topic sets per test.

The broker is the one named by ``EIGENLOOP_KAFKA_BOOTSTRAP`` (``make test`` starts one and
sets it), else the fixture starts its own under a temporary data folder and stops it at the end.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("EIGENLOOP_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> str:
    env = os.environ.get("EIGENLOOP_KAFKA_BOOTSTRAP")
    if env:
        yield env
        return
    from daemon import kafka_local

    data_dir = tmp_path_factory.mktemp("kafka-session")
    info = kafka_local.start(data_dir)
    os.environ["EIGENLOOP_KAFKA_BOOTSTRAP"] = info.bootstrap
    try:
        yield info.bootstrap
    finally:
        os.environ.pop("EIGENLOOP_KAFKA_BOOTSTRAP", None)
        kafka_local.stop(data_dir)


def make_settings(bootstrap: str, data_dir: Path, prefix: str | None = None, **overrides):
    from schemas.settings import KafkaSettings, Settings

    prefix = prefix if prefix is not None else f"t{uuid.uuid4().hex[:10]}."
    return Settings(data_dir=data_dir, kafka=KafkaSettings(bootstrap=bootstrap, topic_prefix=prefix), **overrides)


@pytest.fixture
def kafka_settings(kafka_bootstrap: str, tmp_path: Path):
    """Settings on the session broker with a fresh topic prefix, catalogue topics created."""
    from daemon.eventlog.admin import ensure_topics

    s = make_settings(kafka_bootstrap, tmp_path)
    asyncio.run(ensure_topics(s, partitions=3, keep_all=True))  # tests produce months-old captures
    return s


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"recorded data not found at {SHARED_DATA}; the checkout needs ../shared beside it")
    return SHARED_DATA
