"""Prometheus metrics of the event log (one definition per process)."""

from prometheus_client import Counter, Histogram

PRODUCED = Counter("eigenloop_events_produced_total", "Events delivered to Kafka", ["topic"])
PRODUCE_FAILED = Counter("eigenloop_events_produce_failed_total", "Events Kafka did not accept", ["topic"])
CONSUMED = Counter("eigenloop_events_consumed_total", "Events decoded from Kafka", ["topic"])
DEAD_LETTERS = Counter("eigenloop_dead_letters_total", "Records sent to the dead-letter topic", ["source"])
DELIVERY_SECONDS = Histogram("eigenloop_produce_delivery_seconds", "Send to broker acknowledgement",
                             buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5))
