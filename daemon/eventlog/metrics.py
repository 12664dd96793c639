"""Prometheus metrics of the event log (one definition per process)."""

from prometheus_client import Counter, Histogram

PRODUCED = Counter("eigenloop_events_produced_total", "Events delivered to Kafka", ["topic"])
PRODUCE_FAILED = Counter("eigenloop_events_produce_failed_total", "Events Kafka did not accept", ["topic"])
CONSUMED = Counter("eigenloop_events_consumed_total", "Events decoded from Kafka", ["topic"])
DEAD_LETTERS = Counter("eigenloop_dead_letters_total", "Records sent to the dead-letter topic", ["source"])
ACK_INTERVAL_SECONDS = Histogram("eigenloop_produce_ack_interval_seconds",
                                 "Mean time between broker acknowledgements, sampled over 64 records",
                                 buckets=(1e-5, 1e-4, 1e-3, 0.01, 0.1, 1))
