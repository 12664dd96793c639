"""Whether other workers' routers still have candidates to route to this worker's symbols.

Candidates (``agent.actions``) are keyed by group id, so any worker's router can route one to
a symbol this worker owns. While one may still come from the past, this worker holds market
expiry (``MarketBook.hold_expiry``): a candidate scored on an already expired book would get no
reward. Its own routers it checks by its own input cursors; the others' by the cursors they
persisted in the ``action-input-cursors`` table: the next offset each router must route, written
only once everything routed before it is on the broker (``streams.cursor``). Its changelog
partition *n* holds the cursor of ``agent.actions`` partition *n* alone, so the last record of
each changelog partition is that router's position. A router persists its cursor with the
records it processes, so at the end of its input the persisted cursor can stay a few records
short until more come; there the consumer group's committed offset, which Faust commits every
second, shows it caught up. Either one at the end offset counts. The committed offset alone
would not do: Faust can leave it behind what its agent processed for good (a hole it saw before
a seek back), and expiry would be held for good.

A partition whose router is dead (its worker was killed, the session timeout has not yet moved
the partition) stays behind until another worker takes it over and routes its backlog.
"""

from __future__ import annotations

import json
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition

log = logging.getLogger(__name__)


class RouterBacklog:
    """``behind``: True while some partition of ``actions`` that this worker does not route
    has candidates its router has not routed yet, or while that is unknown."""

    def __init__(self, client_kw: dict, group_id: str, actions: str, partitions: int, cursors_changelog: str):
        self.client_kw, self.group_id = client_kw, group_id
        self.actions, self.partitions, self.changelog = actions, partitions, cursors_changelog
        self.behind = True
        self._consumer: AIOKafkaConsumer | None = None

    async def probe(self, mine: set[int]) -> bool:
        """Ask the broker again; ``mine``: the ``actions`` partitions this worker routes."""
        try:
            self.behind = await self._behind(mine)
        except Exception as e:  # noqa: BLE001 - a failed probe holds expiry, which only costs memory
            log.warning("router positions unavailable: %r", e)
            self.behind = True
        return self.behind

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def _behind(self, mine: set[int]) -> bool:
        c = self._consumer
        if c is None:
            # the worker's group id, to read its committed offsets; it never subscribes, so it
            # never joins the group, and it commits nothing
            c = self._consumer = AIOKafkaConsumer(group_id=self.group_id, enable_auto_commit=False, **self.client_kw)
            await c.start()
        others = sorted(set(range(self.partitions)) - mine)
        if not others:
            return False
        ends = await c.end_offsets([TopicPartition(self.actions, p) for p in others])
        routed = await self._positions(c, others)
        for p in others:
            end = ends[TopicPartition(self.actions, p)]
            if routed.get(p, 0) < end and (await c.committed(TopicPartition(self.actions, p)) or 0) < end:
                return True
        return False

    async def _positions(self, c: AIOKafkaConsumer, partitions: list[int]) -> dict[int, int]:
        """The last cursor each router persisted (a missing one: it has routed nothing yet)."""
        tps = [TopicPartition(self.changelog, p) for p in partitions]
        ends = await c.end_offsets(tps)
        tps = [tp for tp in tps if ends[tp] > 0]
        if not tps:
            return {}
        c.assign(tps)
        for tp in tps:
            c.seek(tp, ends[tp] - 1)
        out: dict[int, int] = {}
        while len(out) < len(tps):
            batch = await c.getmany(*tps, timeout_ms=1000)
            if not batch:
                break  # nothing within the wait: the missing ones count as behind until next time
            for tp, records in batch.items():
                for m in records:
                    if m.value is not None:
                        out[tp.partition] = int(json.loads(m.value))
        return out
