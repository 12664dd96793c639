"""The continuous learner loop: learn.groups → block-local step → learn.updates, with snapshots.

Exactly-once effect: the model and the offset of the next group to apply are saved together in
one snapshot. On start the loop loads the newest snapshot and reads ``learn.groups`` from its
offset, so every group after the snapshot is applied exactly once to the restored weights. The
updates re-emitted for groups applied after the last snapshot and before a crash carry the same
deterministic event ids as the first time, so consumers of ``learn.updates`` dedupe them.

``learn.groups`` has one partition (see ``schemas.topics``): the apply order is the log order.
Backpressure: at most ``max_pending_groups`` groups wait; past that, ``skip`` or ``coalesce``
(see ``daemon.service.learning.plan_batches``), every dropped group counted.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Callable, Mapping

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from daemon.eventlog import DeadLetterer, EventProducer
from daemon.eventlog.connection import client_kwargs, topic
from daemon.eventlog.reader import decode_or_none
from daemon.logging import bind_task, get_logger
from daemon.service import fault_hook, metrics, snapshots
from daemon.service.due_groups import DueGroups
from daemon.service.guard import CollapseGuard
from daemon.service.learning import RECENT_GROUPS, Ewma, RecentIds, coalesce, plan_batches
from daemon.service.policy import ResidentPolicy
from daemon.service.side_probe import export_side_probe
from learners.core import block_checksum
from schemas import GRPOGroup, SnapshotMarker
from schemas.settings import Settings

log = get_logger("learner")


class LearnerLoop:
    def __init__(self, settings: Settings, policy: ResidentPolicy, producer: EventProducer,
                 snapshot_root: Path, start_offset: int, recent_groups: list[str] | None = None,
                 order: DueGroups | None = None, on_applied: Callable[[GRPOGroup], None] | None = None,
                 on_probe: Callable[[dict | None], None] | None = None):
        self.s = settings
        self.policy = policy
        self.producer = producer
        self.snapshot_root = snapshot_root
        self.groups_topic = topic(settings, "learn.groups")
        self.tp = TopicPartition(self.groups_topic, 0)
        self.next_offset = start_offset
        self.dead_letter = DeadLetterer(producer, source="learner")
        self.reward = Ewma()
        self.updates_applied = 0
        self.groups_applied = 0
        self.groups_dropped = 0
        self.latencies: list[float] = []  # group close → weights, seconds (bounded below)
        # The streams worker delivers at least once: a group it re-emits after a restart carries
        # the same group_id (and event_id). Each group is learned from once; the recent ids
        # travel in the snapshot so a restarted learner still recognises them.
        self.recent = RecentIds(RECENT_GROUPS, recent_groups or ())
        self.duplicates = 0
        # per-block checksums as of the last update, so status pages never take the model's lock
        self.block_checksums: dict[int, str] = {}
        self.refresh_checksums()
        self._since_snapshot = 0
        self._last_snapshot = time.monotonic()
        self.guard = CollapseGuard(settings.guard, policy, snapshot_root)
        self.side_probe: dict | None = None  # the last exact side probe (``refresh_side_probe``)
        self._probed_version: int | None = None
        self._guard_dirty = False
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None
        # a paced replay: this process's own groups wait here until ``order`` says they are next
        self.order = order
        self.held: dict[str, tuple[ConsumerRecord, GRPOGroup]] = {}
        self._read_offset = start_offset
        self.on_applied = on_applied
        self.on_probe = on_probe
        # one holder at a time of "the model and the offset agree": applying a poll's groups and
        # writing a snapshot (periodic, /snapshot, /pin) never interleave
        self.lock = asyncio.Lock()
        self.ready = asyncio.Event()
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(**client_kwargs(self.s), enable_auto_commit=False,
                                          isolation_level="read_committed", max_poll_records=500)
        await self._consumer.start()
        self._consumer.assign([self.tp])
        self._consumer.seek(self.tp, self.next_offset)
        self._task = asyncio.create_task(self._run(), name="learner-loop")
        self.ready.set()

    @property
    def task(self) -> asyncio.Task | None:
        return self._task

    async def stop(self, timeout: float = 120.0) -> None:
        """Finish the poll in hand (a step is never cut in half: the model and the offset must
        agree for the final snapshot), then stop."""
        self._stopping.set()
        if self._task:
            try:
                await asyncio.wait_for(self._task, timeout)
            except asyncio.TimeoutError:
                log.error("learner loop did not finish its poll in time; cancelling", timeout_s=timeout)
        if self._consumer:
            await self._consumer.stop()

    async def _run(self) -> None:
        bind_task(task="learner")
        assert self._consumer is not None
        delay = 0.5
        # paced, a group may come due after it arrived: poll often enough to apply it soon
        poll_ms = 50 if self.order is not None else 500
        while not self._stopping.is_set():
            try:
                got = await self._consumer.getmany(self.tp, timeout_ms=poll_ms)
                delay = 0.5
            except KafkaError as e:
                # the broker is away (restart, outage): nothing was consumed, so waiting and
                # polling again loses nothing
                log.warning("learner poll failed; retrying", error=repr(e), retry_in_s=delay)
                await asyncio.sleep(delay)  # backoff before the next poll
                delay = min(5.0, delay * 2)
                continue
            records = got.get(self.tp, [])
            async with self.lock:
                if records:
                    await self.handle(records)
                await self.apply_due()
                await self.maybe_snapshot()
            lag = self.lag()
            if lag is not None:
                metrics.LEARNER_LAG.set(lag)

    async def send(self, topic_name: str, event) -> None:
        """Send, waiting out a broker outage: an applied step's updates must not be lost."""
        await self.producer.send_retrying(topic_name, event)

    def refresh_checksums(self) -> None:
        """Recompute every block's checksum (at start, and after weights change outside a step)."""
        self.block_checksums = self.policy.with_state(  # type: ignore[assignment]
            lambda st: {b: block_checksum(st.model, b) for b in range(len(st.model.blocks))})

    def checksum(self) -> str:
        """The model checksum (``model_checksum``) from the tracked per-block checksums, without
        reading the weights."""
        return combined_checksum(self.block_checksums)

    def lag(self) -> int | None:
        """Groups in the log not yet applied (None before the first fetch)."""
        hw = self._consumer.highwater(self.tp) if self._consumer else None
        return None if hw is None else max(0, hw - self.next_offset)

    async def handle(self, records) -> None:
        groups: list[tuple[ConsumerRecord, GRPOGroup]] = []
        for rec in records:
            ev, reason = decode_or_none(rec)
            if ev is None or not isinstance(ev, GRPOGroup):
                await self.dead_letter(rec, reason or f"expected learn.group, got {getattr(ev, 'type', '?')}",
                                       "DecodeError" if ev is None else "WrongType")
                metrics.DEAD_LETTERS.labels("learner").inc()
                continue
            if ev.group_id in self.recent or ev.group_id in self.held:
                self.duplicates += 1
                metrics.GROUPS_IN.labels("duplicate").inc()
                continue
            if self.order is not None and self.order.knows(ev.group_id):
                self.held[ev.group_id] = (rec, ev)
                continue
            self.recent.add(ev.group_id)
            groups.append((rec, ev))
        last_offset = records[-1].offset
        record_of = {id(g): rec for rec, g in groups}
        batches, dropped = plan_batches([g for _, g in groups], self.s.learner.max_pending_groups,
                                        self.s.learner.backpressure)
        if dropped:
            self.groups_dropped += dropped
            metrics.GROUPS_DROPPED.inc(dropped)
            log.warning("learner behind: groups dropped", dropped=dropped, mode=self.s.learner.backpressure)
        for batch in batches:
            await self.apply(batch, [record_of[id(g)] for g in batch])
            self.next_offset = max(self.next_offset, min(self._held_floor(), record_of[id(batch[-1])].offset + 1))
            await self._after_guard()
        self._read_offset = last_offset + 1
        self.next_offset = self._held_floor()

    def _held_floor(self) -> int:
        """The offset to resume from: the first group still held, else past everything read."""
        return min((rec.offset for rec, _ in self.held.values()), default=self._read_offset)

    async def _after_guard(self) -> None:
        if self._guard_dirty:
            self._guard_dirty = False
            await asyncio.to_thread(self.refresh_checksums)
            await self.snapshot_locked()

    async def apply_due(self) -> None:
        """Paced: apply the held groups that are next in ``order``, one at a time. Called with ``lock``."""
        if self.order is None:
            return
        while (gid := self.order.head()) is not None and gid in self.held:
            rec, group = self.held.pop(gid)
            self.recent.add(gid)
            await self.apply([group], [rec])
            self.order.applied(gid)
            self.next_offset = self._held_floor()
            await self._after_guard()

    async def apply(self, batch: list[GRPOGroup], records: list[ConsumerRecord] | None = None) -> None:
        """Learn from ``batch`` (one update); ``records`` are the learn.groups records it was read from."""
        group = coalesce(batch)
        for g in batch:
            metrics.GROUPS_IN.labels(g.status).inc()
        updates, seconds = await self.policy.apply(group)
        metrics.STEP_SECONDS.observe(seconds)
        # only this loop steps the model, so the state still describes the step it just took
        refusal = self.policy.state.last_refusal
        if refusal is not None:
            await self._refused(batch, records, refusal)
            return
        # opt-in (EIGENLOOP_FAULT_HOOK), inert unset: the model has stepped, nothing is published yet
        await fault_hook.reached_async("apply")
        for u in updates:
            self.block_checksums[u.block] = u.checksum
            if len(batch) > 1:
                u = u.model_copy(update={"coalesced": len(batch), "group_ids": [g.group_id for g in batch]})
            await self.send("learn.updates", u)
            metrics.UPDATES.labels(str(u.block)).inc()
        if updates:
            self.updates_applied += len(updates)
            self.groups_applied += len(batch)
            self._since_snapshot += 1
            lat = max(0.0, time.time() - max(g.ts_ingest for g in batch) / 1e9)
            metrics.GROUP_TO_WEIGHTS.observe(lat)
            self.latencies.append(lat)
            del self.latencies[:-10_000]
        for g in batch:
            if g.rewards:
                metrics.REWARD_EWMA.set(self.reward.update(sum(g.rewards) / len(g.rewards)))
            if self.on_applied is not None:
                self.on_applied(g)
        # the guard sees every group, skipped ones too (zero spread is one of its signals); its
        # probe samples the model, so it runs off the event loop
        for action in await asyncio.to_thread(self.guard.observe, batch, updates):
            await self.send("learn.guard", action)
            # anything but a temperature change alters the weights or the objective: snapshot
            # right after it, so replays start past the intervention
            self._guard_dirty |= action.action != "raise_temperature"
        metrics.POLICY_VERSION.set(self.policy.policy_version)
        every = self.s.learner.probe_every_updates
        if every and (self._probed_version is None or self.policy.policy_version - self._probed_version >= every):
            await asyncio.to_thread(self.refresh_side_probe)
            if self.on_probe is not None:
                self.on_probe(self.side_probe)
        fault_hook.left("apply")

    async def _refused(self, batch: list[GRPOGroup], records: list[ConsumerRecord] | None, reason: str) -> None:
        """The step was refused (advantages, loss or gradients not finite) and changed nothing:
        the records it came from go to the dead-letter topic with the reason, and neither the
        guard nor the run ledger sees them, since nothing was learned from them."""
        metrics.REFUSED_STEPS.inc()
        log.error("learner step refused; groups dead-lettered", groups=[g.group_id for g in batch], reason=reason)
        for rec in records or ():
            await self.dead_letter(rec, f"learner refused the step: {reason}", "NonFiniteStep")
            metrics.DEAD_LETTERS.labels("learner").inc()

    def refresh_side_probe(self) -> dict | None:
        """The exact side probe on the fixed prompts, exported as metrics (``daemon.service.side_probe``)."""
        self._probed_version = self.policy.policy_version
        self.side_probe = export_side_probe(self.policy)
        return self.side_probe

    async def maybe_snapshot(self) -> Path | None:
        """Called with ``lock`` held."""
        due = (self._since_snapshot >= self.s.learner.snapshot_every_updates
               or (self._since_snapshot > 0 and time.monotonic() - self._last_snapshot >= self.s.learner.snapshot_every_s))
        return await self.snapshot_locked() if due else None

    async def snapshot(self) -> Path:
        """A snapshot now, between two polls' worth of groups (never in the middle of one)."""
        async with self.lock:
            return await self.snapshot_locked()

    async def snapshot_locked(self) -> Path:
        """A snapshot now, for a caller that already holds ``lock`` (a pin, the periodic one)."""
        offsets = {f"learn.groups:0": self.next_offset}
        extra = {"recent_groups": self.recent.ids()}
        path = await asyncio.to_thread(self.policy.with_state,
                                       lambda st: snapshots.write_snapshot(st, self.snapshot_root, offsets,
                                                                       keep=self.s.learner.keep_snapshots, extra=extra))
        await self.producer.flush()  # the updates before it are durable before the marker says so
        info = snapshots.read_snapshot_info(path)
        marker = SnapshotMarker(snapshot_id=path.name, path=str(path), policy_version=info["policy_version"],
                                step=info["step"], offsets=offsets, checksum=self.checksum(),
                                key=path.name, source="learner")
        await self.producer.send_and_wait("learn.snapshots", marker)
        self._since_snapshot = 0
        self._last_snapshot = time.monotonic()
        metrics.SNAPSHOTS.inc()
        log.info("snapshot written", path=str(path), policy_version=marker.policy_version, offset=self.next_offset)
        return path


def combined_checksum(block_checksums: Mapping[int, str]) -> str:
    """sha256 over the per-block checksums in block order: one value for the whole model."""
    h = hashlib.sha256()
    for b in sorted(block_checksums):
        h.update(block_checksums[b].encode())
    return h.hexdigest()


def model_checksum(state) -> str:
    """The model checksum of a learner state, read from its weights."""
    return combined_checksum({b: block_checksum(state.model, b) for b in range(len(state.model.blocks))})
