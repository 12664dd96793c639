"""The ceiling for a Faust worker on this machine: one agent that does nothing but ``json.loads``
per record, on the same topics, broker and App settings as the streams worker (memory store, no
tables). ``benchmarks/streams_throughput.py`` runs it as a subprocess:

    .venv/bin/python benchmarks/faust_noop_agent.py TOTAL

(settings from ``EIGENLOOP_CONFIG`` like every eigenloop command; its own app id, so it has its
own consumer group). Prints ``noop agent: N events in T s`` once it has seen TOTAL records,
timed from the first record it was handed to the TOTAL-th.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

import faust  # noqa: E402

from daemon.eventlog.connection import bootstrap_for  # noqa: E402
from schemas.settings import load_settings  # noqa: E402
from schemas.topics import topic_name  # noqa: E402
from streams.app import create_app  # noqa: E402


def main() -> None:
    total = int(sys.argv[1])
    base = load_settings()
    settings = base.model_copy(update={"streams": base.streams.model_copy(
        update={"app_id": base.streams.app_id + "-noop"})})
    prefix = settings.kafka.topic_prefix
    app = create_app(settings, bootstrap_for(settings), partitions=1)
    topic = app.topic(topic_name("market.events", prefix), topic_name("agent.actions", prefix))
    seen = {"n": 0, "t0": 0.0}

    @app.agent(topic, name="noop")
    async def noop(stream: faust.StreamT) -> None:
        async for event in stream.events():
            json.loads(event.value)
            if seen["n"] == 0:
                seen["t0"] = time.perf_counter()
            seen["n"] += 1
            if seen["n"] == total:
                print(f"noop agent: {total} events in {time.perf_counter() - seen['t0']:.3f} s", flush=True)

    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
