"""The stall watch and the worker's probe answers, without Kafka."""

from __future__ import annotations

from streams.health import StallWatch, health

TP = ("market.events", 2)


def test_a_partition_is_stalled_only_when_input_waits_and_nothing_moves():
    watch = StallWatch(stall_after_s=10)
    high = {TP: 100}
    assert watch.observe({TP: 50}, high.get, now=0.0) == {}
    assert watch.observe({TP: 50}, high.get, now=9.0) == {}  # not long enough
    assert watch.observe({TP: 50}, high.get, now=10.0) == {TP: {"processed": 50, "highwater": 100, "stuck_s": 10.0}}
    assert watch.observe({TP: 60}, high.get, now=11.0) == {}  # it moved
    assert watch.observe({TP: 60}, high.get, now=20.0) == {}
    assert watch.observe({TP: 60}, high.get, now=21.0)[TP]["stuck_s"] == 10.0
    # read to the end: an idle stream is not a stuck one, however long it stays quiet
    high[TP] = 61
    assert watch.observe({TP: 60}, high.get, now=100.0) == {}
    assert watch.observe({TP: 60}, high.get, now=500.0) == {}
    high[TP] = 70  # new input arrives: the clock starts from the last time it was caught up
    assert watch.observe({TP: 60}, high.get, now=505.0) == {}
    assert TP in watch.observe({TP: 60}, high.get, now=510.0)
    assert watch.observe({TP: 60}, lambda tp: None, now=600.0) == {}  # no watermark yet: cannot tell


def test_probes_fail_readiness_on_any_stall_and_liveness_only_past_the_exit_limit():
    stuck = {TP: {"processed": 1, "highwater": 9, "stuck_s": 30.0}}
    assert health(True, {}, 600.0, 60.0)[0::2] == (200, 200)  # nothing waits: idle, however long
    assert health(False, {}, 0.0, 60.0)[0::2] == (200, 503)  # still recovering its tables
    live, body, ready, rbody = health(True, stuck, 30.0, 60.0)
    assert (live, ready, rbody["status"]) == (200, 503, "stalled") and "market.events:2" in rbody["stalled"]
    stuck[TP]["stuck_s"] = 60.0
    assert health(True, stuck, 60.0, 60.0)[0] == 503 and health(True, stuck, 60.0, None)[0] == 200
    assert health(True, stuck, 2.0, 60.0)[0] == 200  # other input was processed 2 s ago: behind, not hung


def test_worker_health_trusts_the_broker_end_over_a_stale_consumer_watermark():
    from streams.health import WorkerHealth

    state = WorkerHealth(stall_after_s=10, exit_after_s=60)
    assert state.wants_ends(0.0) and not state.wants_ends(4.0) and state.wants_ends(5.0)
    assert state.highwater(TP, 51) == 51
    state.ends[TP] = 100  # the consumer stopped fetching at 51; the broker has 100
    assert state.highwater(TP, 51) == 100 and state.highwater(TP, None) == 100
    state.observe({TP: 50}, lambda tp: state.highwater(tp, 51), now=0.0)
    assert state.observe({TP: 50}, lambda tp: state.highwater(tp, 51), now=59.0) and not state.exit_due()
    state.observe({TP: 50}, lambda tp: state.highwater(tp, 51), now=60.0)
    assert state.exit_due() and state.probes()[0] == 503
    assert state.should_report(60.0) and not state.should_report(65.0)


def test_read_to_the_end_is_idle_and_a_partition_waiting_behind_a_backlog_is_not_a_hang():
    """A worker exits for its supervisor only when it is wedged: a partition stalled *and* no input
    processed anywhere, both for ``exit_after_s``. After a 20x replay the router's and the internal
    topic's partitions waited 30 s and more behind the market backlog while the worker processed
    thousands of records a second, and a worker that exited there was restarted into the same work."""
    from streams.health import WorkerHealth

    actions, market = ("agent.actions", 0), ("market.events", 1)
    state = WorkerHealth(stall_after_s=5, exit_after_s=10, ready=True)
    ends = {actions: 40, market: 10_000}
    processed = {actions: 20, market: 0}
    for now in range(0, 31):  # catch-up: the market moves every second, the router's partition waits
        processed[market] += 100
        assert (actions in state.observe(processed, ends.get, now=float(now))) == (now >= 5)
        assert not state.exit_due() and state.probes()[0] == 200, now
    assert state.stalled[actions]["stuck_s"] == 30.0 and state.probes()[2] == 503  # not ready meanwhile
    # the backlog is done and everything is read to the end: idle, not stalled, for good
    processed.update({actions: 39, market: 9_999})
    for now in (31.0, 100.0, 1000.0, 5000.0):
        assert state.observe(processed, ends.get, now=now) == {}
        assert not state.exit_due() and state.probes()[0::2] == (200, 200)
    # input arrives and nothing at all is processed from then on: wedged exit_after_s after the
    # partition was last seen read to the end
    ends[actions] = 50
    assert state.observe(processed, ends.get, now=5009.0) and not state.exit_due()
    state.observe(processed, ends.get, now=5010.0)
    assert state.exit_due() and state.probes()[0] == 503
