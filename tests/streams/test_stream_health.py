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
