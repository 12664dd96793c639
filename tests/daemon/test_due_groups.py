"""The learner's order in a paced replay: a group is due once its symbol's market time is past
every horizon end (strictly, as the engine scores), in input order; the end makes the rest due."""

from __future__ import annotations

import asyncio

from daemon.service.due_groups import DueGroups

BTC, ETH = "binance|BTC/USDT", "binance|ETH/USDT"


def test_groups_come_due_when_their_symbol_passes_every_horizon_end():
    due = DueGroups()
    due.opened("a", BTC, [100, 150])
    due.opened("b", ETH, [120])
    due.opened("c", BTC, [130])
    due.observe(BTC, 140)  # past c's only horizon, not a's longest
    assert list(due.due) == ["c"]
    due.observe(ETH, 120)  # at the horizon end is not after it
    assert list(due.due) == ["c"]
    due.observe(BTC, 151)
    due.observe(ETH, 121)
    assert list(due.due) == ["c", "a", "b"]
    assert due.head() == "c" and not due.settled()
    for gid in ("c", "a", "b"):
        due.applied(gid)
    assert due.settled() and due.open_count == 0 and not due.knows("a")


def test_a_group_opened_after_its_horizon_has_passed_is_due_at_once_and_the_end_makes_the_rest_due():
    due = DueGroups()
    due.observe(BTC, 1_000)
    due.opened("late", BTC, [900])
    assert list(due.due) == ["late"]
    due.opened("x", ETH, [5_000])
    due.opened("y", BTC, [4_000])
    due.end()
    assert list(due.due) == ["late", "x", "y"]  # the rest in the order they were opened


def test_waiting_for_the_due_groups_ends_when_the_last_is_applied():
    async def body():
        due = DueGroups()
        due.opened("a", BTC, [10])
        due.observe(BTC, 11)
        assert not await due.wait_settled(0.01)
        waiter = asyncio.create_task(due.wait_settled(5))
        due.applied("a")
        assert await waiter
    asyncio.run(body())
