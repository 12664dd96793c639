"""Kafka event log I/O: producer, readers, dead-lettering, transactions, topic admin."""

from daemon.eventlog.connection import bootstrap_for, client_kwargs, topic
from daemon.eventlog.delivery import DeliveryFatal
from daemon.eventlog.producer import EventProducer
from daemon.eventlog.reader import DeadLetterer, GroupReader, Position, offsets_for_timestamp, read_range
from daemon.eventlog.transactional import TransactionalPipe

__all__ = ["DeadLetterer", "DeliveryFatal", "EventProducer", "GroupReader", "Position", "TransactionalPipe",
           "bootstrap_for", "client_kwargs", "offsets_for_timestamp", "read_range", "topic"]
