"""Consume → produce in transactions: outputs and offsets commit together."""

from __future__ import annotations

import asyncio

import pytest

from daemon.eventlog import EventProducer, TransactionalPipe, read_range
from schemas import Outcome, Prompt


def prompt(i: int) -> Prompt:
    return Prompt(prompt_id=f"p{i}", symbol="S", text=f"t{i}", policy_version=0, key=f"g{i}")


async def double(events):
    return [("agent.outcomes", Outcome(group_id=e.prompt_id, candidate_index=0, group_size=1, action_event_id=e.event_id,
                                       symbol=e.symbol, policy_version=0, reward=float(e.text[1:]), key=e.prompt_id))
            for e in events]


@pytest.mark.kafka
def test_pipe_outputs_once_and_resumes_after_restart(kafka_settings):
    group = kafka_settings.kafka.topic_prefix + "pipe"

    async def go():
        async with EventProducer(kafka_settings) as p:
            for i in range(200):
                await p.send("agent.prompts", prompt(i))
            await p.flush()
        pipe = TransactionalPipe(kafka_settings, ["agent.prompts"], group, "tx-test-1", double)
        await pipe.start()
        try:
            while pipe.processed < 200:
                await pipe.run_once()
        finally:
            await pipe.stop()
        # a restarted pipe (same transactional id) sees nothing new: offsets were committed
        # in the same transactions as the outputs
        async with EventProducer(kafka_settings) as p:
            for i in range(200, 250):
                await p.send("agent.prompts", prompt(i))
        pipe = TransactionalPipe(kafka_settings, ["agent.prompts"], group, "tx-test-1", double)
        await pipe.start()
        try:
            while pipe.processed < 50:
                await pipe.run_once()
            assert await pipe.run_once(timeout_ms=300) == 0
        finally:
            await pipe.stop()
        return [ev async for _, ev in read_range(kafka_settings, "agent.outcomes")]

    outs = asyncio.run(go())
    assert sorted(o.reward for o in outs) == [float(i) for i in range(250)]


@pytest.mark.kafka
def test_aborted_transaction_is_invisible_to_read_committed(kafka_settings):
    async def go():
        async with EventProducer(kafka_settings) as p:
            for i in range(10):
                await p.send("agent.prompts", prompt(i))
        group = kafka_settings.kafka.topic_prefix + "pipe2"
        calls = 0

        async def half_then_fail(events):
            nonlocal calls
            calls += 1
            out = await double(events)
            if calls == 1:
                # outputs go out inside the transaction, then the handler dies before commit
                return out + [("agent.outcomes", None)]
            return out

        pipe = TransactionalPipe(kafka_settings, ["agent.prompts"], group, "tx-test-2", half_then_fail)
        await pipe.start()
        with pytest.raises(Exception):
            while True:
                await pipe.run_once()
        await pipe.stop()
        committed = [ev async for _, ev in read_range(kafka_settings, "agent.outcomes")]
        assert committed == []
        pipe = TransactionalPipe(kafka_settings, ["agent.prompts"], group, "tx-test-2", half_then_fail)
        await pipe.start()
        try:
            while pipe.processed < 10:
                await pipe.run_once()
        finally:
            await pipe.stop()
        return [ev async for _, ev in read_range(kafka_settings, "agent.outcomes")]

    outs = asyncio.run(go())
    assert sorted(o.reward for o in outs) == [float(i) for i in range(10)]
