"""Prometheus metrics of the event log (one definition per process)."""

from prometheus_client import Counter, Gauge, Histogram

PRODUCED = Counter("eigenloop_events_produced_total", "Events delivered to Kafka", ["topic"])
PRODUCE_FAILED = Counter("eigenloop_events_produce_failed_total",
                         "Delivery attempts Kafka did not accept (send_retrying re-sends them)", ["topic"])
CONSUMED = Counter("eigenloop_events_consumed_total", "Events decoded from Kafka", ["topic"])
DEAD_LETTERS = Counter("eigenloop_dead_letters_total", "Records sent to the dead-letter topic", ["source"])
ACK_INTERVAL_SECONDS = Histogram("eigenloop_produce_ack_interval_seconds",
                                 "Mean time between broker acknowledgements, sampled over 64 records",
                                 buckets=(1e-5, 1e-4, 1e-3, 0.01, 0.1, 1))
# send_retrying's records from hand-over to acknowledgement (daemon/eventlog/delivery.py); the two
# gauges are computed when scraped
RESENT = Counter("eigenloop_events_resent_total", "Events re-sent after their delivery failed", ["topic"])
PRODUCE_FATAL = Counter("eigenloop_produce_fatal_total",
                        "Deliveries that failed for good (not retriable); the process stops", ["topic"])
AWAITING_DELIVERY = Gauge("eigenloop_events_awaiting_delivery",
                          "Events handed to the producer and not yet acknowledged by Kafka")
OLDEST_UNDELIVERED_SECONDS = Gauge("eigenloop_produce_oldest_undelivered_seconds",
                                   "Age of the oldest event handed to the producer and not yet acknowledged")
