"""Where the broker is and how to talk to it (bootstrap, SASL/TLS) for every Kafka client."""

from __future__ import annotations

from typing import Any

from daemon.eventlog.broker_address import resolve_bootstrap
from schemas.kafka_security import aiokafka_kwargs
from schemas.settings import Settings
from schemas.topics import physical_name, topic_name


def bootstrap_for(settings: Settings) -> str:
    """Configured bootstrap, else EIGENLOOP_KAFKA_BOOTSTRAP, else the local broker's address."""
    return resolve_bootstrap(settings.kafka.bootstrap, settings.data_dir)


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments shared by aiokafka producers, consumers and admin clients."""
    return {"bootstrap_servers": bootstrap_for(settings), **security_kwargs(settings)}


def security_kwargs(settings: Settings) -> dict[str, Any]:
    """The aiokafka security arguments (protocol, SASL, TLS context) of ``kafka.*``, no address;
    ``schemas.kafka_security`` is the one mapping of those settings, for every client."""
    return aiokafka_kwargs(settings.kafka)


def topic(settings: Settings, base: str) -> str:
    """The physical name of a catalogue topic under this deployment's prefix."""
    return topic_name(base, settings.kafka.topic_prefix)


def physical(settings: Settings, name: str) -> str:
    """A catalogue name under this deployment's prefix; any other name as it is."""
    return physical_name(name, settings.kafka.topic_prefix)
