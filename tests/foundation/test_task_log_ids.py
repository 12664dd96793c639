"""Ids bound with ``daemon.logging.bind_task`` stay with the asyncio task that bound them."""

from __future__ import annotations

import asyncio

from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from daemon.logging import bind_task, get_logger

log = get_logger(__name__)


async def _stream(symbol: str, ready: asyncio.Event, go: asyncio.Event) -> None:
    bind_task(task="market", symbol=symbol)
    ready.set()
    await go.wait()  # both tasks have bound their ids before either logs
    log.info("tick")

    async def child() -> None:
        log.info("child tick")

    await asyncio.create_task(child())


def test_each_task_logs_its_own_ids_and_its_children_inherit_them():
    async def body() -> None:
        go = asyncio.Event()
        ready = [asyncio.Event(), asyncio.Event()]
        tasks = [asyncio.create_task(_stream(sym, r, go)) for sym, r in zip(("BTC/USDT", "ETH/USDT"), ready)]
        for r in ready:
            await r.wait()
        go.set()
        await asyncio.gather(*tasks)
        log.info("parent")

    with capture_logs(processors=[merge_contextvars]) as logs:
        asyncio.run(body())
    by_event = {(e["event"], e.get("symbol")) for e in logs}
    assert by_event == {("tick", "BTC/USDT"), ("tick", "ETH/USDT"), ("child tick", "BTC/USDT"),
                        ("child tick", "ETH/USDT"), ("parent", None)}
    assert all(e.get("task") == "market" for e in logs if e["event"] != "parent")
