"""/healthz is real liveness: the event loop turns, the parts the daemon exists for run, and the
model has weights. No broker: the parts are real asyncio tasks and a real HttpServer."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import torch

from daemon.service import metrics
from daemon.service.executors import KillSwitch
from daemon.service.heartbeat import LoopHeartbeat, liveness, model_loaded
from daemon.service.http import HttpServer


async def _until(predicate, timeout: float = 10.0, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(step)


def test_a_frozen_loop_fails_liveness_until_it_turns_again():
    async def go():
        hb = LoopHeartbeat(tick_s=0.02)
        hb.start()
        first = hb.last_tick
        await _until(lambda: hb.last_tick > first)
        time.sleep(1.0)  # the fault under test: synchronous work that freezes the loop for a second
        frozen = liveness(hb, {}, True, stall_s=0.5)
        assert not frozen["ok"] and frozen["failing"] == ["event_loop"]
        assert frozen["loop_stalled_s"] >= 1.0
        await _until(lambda: liveness(hb, {}, True, stall_s=0.5)["ok"])
        # the freeze stays visible as lag (and as the metric) after the loop recovered
        assert hb.lag_s >= 0.9
        assert metrics.LOOP_LAG._value.get() >= 0.9
        await hb.stop()
        assert not liveness(hb, {}, True, stall_s=0.5)["ok"]  # a heartbeat that stopped is a dead loop

    asyncio.run(go())


def test_healthz_answers_503_naming_a_dead_part(tmp_path):
    async def go():
        hb = LoopHeartbeat(tick_s=0.02)
        hb.start()

        async def learner():
            raise RuntimeError("a learner bug")

        async def actor():
            await asyncio.Event().wait()

        tasks = {"learner": asyncio.create_task(learner()), "actor": asyncio.create_task(actor())}
        await asyncio.wait([tasks["learner"]])
        model = torch.nn.Linear(2, 2)

        def health():
            return liveness(hb, {n: not t.done() for n, t in tasks.items()}, model_loaded(model), stall_s=30)

        server = HttpServer("127.0.0.1", 0, health=health, ready=None, kill_switch=KillSwitch(tmp_path / "KILL"),
                            snapshot=None, admin_token="t0ken-for-the-admin-routes")
        port = await server.start()
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                    assert r.status == 503
                    body = await r.json()
            assert body["failing"] == ["learner"] and body["tasks"] == {"learner": False, "actor": True}
            assert body["model_loaded"] is True
        finally:
            tasks["actor"].cancel()
            await server.stop()
            await hb.stop()
        assert tasks["learner"].exception() is not None

    asyncio.run(go())


def test_model_loaded_is_a_check_of_the_weights():
    assert model_loaded(torch.nn.Linear(2, 2))
    assert not model_loaded(torch.nn.Module())  # a placeholder without weights
    assert not model_loaded(None)
