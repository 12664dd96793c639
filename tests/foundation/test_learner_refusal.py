"""The learner loop dead-letters a group whose step the learner refused, counts it and learns
on. No Kafka: a recording producer stands in for the broker."""

from __future__ import annotations

import asyncio

from aiokafka import ConsumerRecord
from prometheus_client import REGISTRY

from daemon.service.learner_loop import LearnerLoop
from daemon.service.policy import ResidentPolicy
from learners.core import LearnerConfig, build_state
from learners.model import ModelConfig
from schemas import BlockUpdate, DeadLetter, GRPOGroup, decode, encode
from schemas.settings import Settings


class RecordingProducer:
    def __init__(self):
        self.sent: list[tuple[str, object]] = []

    async def send_and_wait(self, topic, event):
        self.sent.append((topic, event))

    async def send_retrying(self, topic, event):
        self.sent.append((topic, event))

    async def flush(self):
        pass


def group(i: int, advantages) -> GRPOGroup:
    return GRPOGroup(group_id=f"g{i}", symbol="BTCUSDT", policy_version=0, prompt=f"M BTCUSDT r1=+0.{i}>",
                     completions=["long 0.5 h5", "short 1 h10", "flat 0 h5"], candidate_indices=[0, 1, 2],
                     rewards=[1.0, -0.5, -0.5], advantages=list(advantages), group_size=3,
                     ts_event=1_700_000_000_000_000_000 + i)


def record(offset: int, value: bytes) -> ConsumerRecord:
    return ConsumerRecord("learn.groups", 0, offset, 1_700_000_000_000, 0, None, value, None, -1, len(value), ())


def refused_total() -> float:
    return REGISTRY.get_sample_value("eigenloop_learner_refused_steps_total") or 0.0


def test_a_refused_group_is_dead_lettered_counted_and_the_next_one_learned(tmp_path):
    state = build_state(LearnerConfig(model=ModelConfig(n_blocks=2, n_layer=1, n_embd=32, n_head=2), gen_len=12,
                                      sample_steps=12, lr=3e-4, device="cpu"))
    policy = ResidentPolicy(state)
    producer = RecordingProducer()
    settings = Settings(learner={"probe_every_updates": 0})
    loop = LearnerLoop(settings, policy, producer, tmp_path, start_offset=40)
    checksums = dict(loop.block_checksums)
    # finite as a float64 record (it decodes), inf as float32: the learner must refuse it
    poison = group(1, [1e39, -1e39, 0.0])
    before = refused_total()

    asyncio.run(loop.handle([record(40, encode(poison)), record(41, encode(group(2, [1.0, -0.5, -0.5])))]))

    assert refused_total() == before + 1
    letters = [e for t, e in producer.sent if t == "deadletter"]
    assert len(letters) == 1 and isinstance(letters[0], DeadLetter)
    dl = letters[0]
    assert dl.error_type == "NonFiniteStep" and dl.offset == 40 and dl.partition == 0
    assert dl.source_topic == loop.groups_topic and "refused" in dl.reason and "float32" in dl.reason
    assert decode(dl.raw_bytes()) == poison
    # the next group was learned from, once: one update per block, all of them for g2
    updates = [e for t, e in producer.sent if t == "learn.updates"]
    assert updates and all(isinstance(u, BlockUpdate) and u.group_id == "g2" for u in updates)
    assert policy.policy_version == 1 and loop.groups_applied == 1 and loop.next_offset == 42
    assert loop.block_checksums != checksums
