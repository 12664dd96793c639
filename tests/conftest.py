"""Shared fixtures: one real Kafka broker per test session, isolated topic sets per test.

The broker is the one named by ``EIGENLOOP_KAFKA_BOOTSTRAP`` (``make test`` starts one and
sets it), else the fixture starts its own under a temporary data folder and stops it at the end.
"""

from __future__ import annotations

import asyncio
import gzip
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
    from daemon.ops import kafka_local

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


class TinyCaptures:
    """Writes small Binance captures (``<stamp> <combined-stream JSON>``, gzip) whose receive
    stamps are in a chosen unit, so a test can compare one recording spelled in ns and in µs.

    ``stamps_ns`` are the recorded instants of the lines, in ns; gaps from 1 ms to 4 s, all
    whole microseconds so that the µs spelling is exact. Lines cycle bookTicker, trade,
    markPrice (USD-M only; readers must skip it) and depth."""

    stamps_ns = [1_680_652_800_000_000_000 + d  # 2023-04-05 00:00:00 UTC + d
                 for d in (0, 1_000_000, 1_250_000, 250_000_000, 1_000_000_000, 4_000_123_000, 4_000_124_000,
                           4_500_000_000)]

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def payload(i: int, symbol: str = "BTCUSDT") -> str:
        low, price = symbol.lower(), 100.0 + i
        return [
            f'{{"stream":"{low}@bookTicker","data":{{"u":{i},"s":"{symbol}","b":"{price}","B":"1.5",'
            f'"a":"{price + 0.1}","A":"2.5"}}}}',
            f'{{"stream":"{low}@trade","data":{{"e":"trade","s":"{symbol}","t":{i},"p":"{price}","q":"0.1",'
            f'"m":true}}}}',
            f'{{"stream":"{low}@markPrice@1s","data":{{"e":"markPriceUpdate","s":"{symbol}","p":"{price}"}}}}',
            f'{{"stream":"{low}@depth@0ms","data":{{"e":"depthUpdate","s":"{symbol}","U":{i},"u":{i},"b":[],"a":[]}}}}',
        ][i % 4]

    def write(self, rel: str, ns_per_unit: int | list[int] = 1, symbol: str = "BTCUSDT") -> Path:
        """``rel`` under the root, stamps divided by ``ns_per_unit`` (one per line, or one for all:
        1 ns, 1000 µs, 1_000_000 ms, ...)."""
        units = ns_per_unit if isinstance(ns_per_unit, list) else [ns_per_unit] * len(self.stamps_ns)
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "wt") as fh:
            for i, (t, unit) in enumerate(zip(self.stamps_ns, units)):
                fh.write(f"{t // unit} {self.payload(i, symbol)}\n")
        return path


@pytest.fixture
def tiny_captures(tmp_path: Path) -> TinyCaptures:
    return TinyCaptures(tmp_path)
