"""Prometheus counters of the sources.

Collectors are created through ``_counter`` so that importing this module twice (tests that
reload modules, two daemons in one process) reuses the registered collector instead of
failing with "Duplicated timeseries". Other modules keep their own metrics; only the names
below belong to the sources.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter


def _counter(name: str, doc: str, labels: tuple[str, ...],
             registry: CollectorRegistry = REGISTRY) -> Counter:
    try:
        return Counter(name, doc, labels, registry=registry)
    except ValueError:  # already registered by an earlier import
        existing = registry._names_to_collectors.get(name) or registry._names_to_collectors.get(f"{name}_total")
        if not isinstance(existing, Counter):
            raise
        return existing


# source: "binance:spot", "binanceusdm:linear", "bluesky:jetstream"
EVENTS_IN = _counter("eigenloop_source_events", "Normalised events emitted by a source.", ("source", "type"))
RECONNECTS = _counter("eigenloop_source_reconnects", "Websocket stream drops followed by a reconnect attempt.",
                      ("source", "stream"))
MALFORMED = _counter("eigenloop_source_malformed_frames", "Frames that could not be parsed or normalised "
                     "(each one also goes to the dead letters).", ("source",))
SKIPPED = _counter("eigenloop_source_skipped", "Well-formed input the sources do not model (deletes, follows, "
                   "identity events...), counted instead of dropped silently.", ("source", "reason"))
DUPLICATES = _counter("eigenloop_source_duplicates", "Repeated records suppressed by a source "
                      "(trade ids seen twice, Jetstream events replayed after a cursor rewind).", ("source",))


def sample(metric: str, **labels: str) -> float:
    """The current value of a counter sample (``..._total``), 0.0 when it has never moved."""
    value = REGISTRY.get_sample_value(f"{metric}_total", labels)
    return 0.0 if value is None else value
