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
    assert health(True, {}, 60.0)[0::2] == (200, 200)
    assert health(False, {}, 60.0)[0::2] == (200, 503)  # still recovering its tables
    live, body, ready, rbody = health(True, stuck, 60.0)
    assert (live, ready, rbody["status"]) == (200, 503, "stalled") and "market.events:2" in rbody["stalled"]
    stuck[TP]["stuck_s"] = 60.0
    assert health(True, stuck, 60.0)[0] == 503 and health(True, stuck, None)[0] == 200


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
