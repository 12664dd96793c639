"""How the Kafka benchmarks find their broker: like every ``eigenloop`` command.

The settings are loaded the normal way (``EIGENLOOP_*`` environment, ``EIGENLOOP_CONFIG``), so
``EIGENLOOP_KAFKA__BOOTSTRAP`` (or the tests' ``EIGENLOOP_KAFKA_BOOTSTRAP``), a config file's
``kafka.*`` and the local broker of ``eigenloop kafka start`` all work. With none of them, a
throwaway broker is started for the run and stopped after it, so a benchmark runs as the README
writes it. Topics go under a fresh prefix: a benchmark can run beside anything else on a broker.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

from daemon.ops import kafka_local

from daemon.eventlog import broker_address
from daemon.eventlog.connection import bootstrap_for
from schemas.settings import Settings, load_settings


@contextlib.contextmanager
def bench_settings(name: str, **updates: Any) -> Iterator[Settings]:
    """The loaded settings with a resolved ``kafka.bootstrap``, a fresh ``kafka.topic_prefix`` and
    the top-level ``updates`` applied. The broker is looked up before ``updates`` (a benchmark's
    own ``data_dir`` has no broker); with none, a throwaway one runs until the block ends."""
    base = load_settings()
    try:
        bootstrap = bootstrap_for(base)
    except broker_address.BrokerError:
        bootstrap = None  # none configured or running: a throwaway one below
    tmp = None if bootstrap is not None else Path(tempfile.mkdtemp(prefix="eigenloop-bench-kafka-"))
    try:
        if tmp is not None:
            bootstrap = kafka_local.start(tmp).bootstrap
            print(f"no Kafka broker configured or running: started a throwaway one at {bootstrap}", flush=True)
        kafka = base.kafka.model_copy(update={"bootstrap": bootstrap,
                                              "topic_prefix": f"{name}{uuid.uuid4().hex[:8]}."})
        yield base.model_copy(update={"kafka": kafka, **updates})
    finally:
        if tmp is not None:
            kafka_local.stop(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
