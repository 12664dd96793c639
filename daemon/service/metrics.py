"""The daemon's Prometheus metrics (scraped at /metrics)."""

from prometheus_client import Counter, Gauge, Histogram

EVENTS_IN = Counter("eigenloop_events_in_total", "Market and social records received", ["kind"])
ACTIONS = Counter("eigenloop_actions_total", "Candidate actions emitted")
INVALID_ACTIONS = Counter("eigenloop_invalid_actions_total", "Candidates that did not parse")
DECISIONS_SKIPPED = Counter("eigenloop_decisions_skipped_total", "Decisions replaced while the model was busy")
PACE_SETTLE_TIMEOUTS = Counter("eigenloop_pace_settle_timeouts_total",
                               "Paced decisions taken before every group due by then was applied (a lost group)")
GROUPS_IN = Counter("eigenloop_groups_consumed_total", "Closed groups read from learn.groups", ["status"])
GROUPS_DROPPED = Counter("eigenloop_groups_dropped_total", "Groups not learned from because of backpressure")
UPDATES = Counter("eigenloop_block_updates_total", "Block weight updates applied", ["block"])
POLICY_VERSION = Gauge("eigenloop_policy_version", "The resident model's policy version")
LEARNER_LAG = Gauge("eigenloop_learner_lag_groups", "Groups in learn.groups not yet applied")
REWARD_EWMA = Gauge("eigenloop_reward_ewma", "Exponentially weighted mean reward of applied groups")
GROUP_TO_WEIGHTS = Histogram("eigenloop_group_to_weights_seconds", "From a group's close to its weights applied",
                             buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
REFUSED_STEPS = Counter("eigenloop_learner_refused_steps_total",
                        "Learner steps refused for non-finite advantages, loss or gradients (groups dead-lettered)")
STEP_SECONDS = Histogram("eigenloop_learner_step_seconds", "Compute time of one learner step",
                         buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5))
SNAPSHOTS = Counter("eigenloop_snapshots_total", "Snapshots written")
SNAPSHOT_LOAD_FAILURES = Counter("eigenloop_snapshot_load_failures_total",
                                 "Snapshots skipped on start because they did not load (the next older one is loaded instead)")
ORDERS = Counter("eigenloop_orders_total", "Orders sent to an executor", ["executor", "result"])
KILL_SWITCH = Gauge("eigenloop_kill_switch", "1 while the kill switch stops new orders")
WS_RECONNECTS = Gauge("eigenloop_ws_reconnects", "Websocket reconnects across all streams")
DEAD_LETTERS = Counter("eigenloop_daemon_dead_letters_total", "Dead letters written by the daemon", ["source"])
SIDE_PROBABILITY = Gauge("eigenloop_policy_side_probability",
                         "Exact probability that the policy writes each side for the fixed probe prompt at each "
                         "imbalance (learners.probe)", ["imbalance", "side"])
IMBALANCE_GAP = Gauge("eigenloop_policy_imbalance_gap",
                      "[P(long) - P(short)] at imbalance +0.8 minus at -0.8: 0 when the policy ignores its input")
CUDA_AVAILABLE = Gauge("eigenloop_learner_cuda_available", "1 when the resident model is on a CUDA device")
LOOP_LAG = Gauge("eigenloop_event_loop_lag_seconds",
                 "How late the event loop woke a task that asked to sleep one tick (worst of the last minute)")
