"""``eigenloop replay --what-if REWARD_CONFIG``: the same recorded actions, another reward.

For each recorded group in the range, its candidates (``agent.actions``) are re-scored with
the alternative ``RewardConfig`` by the streams' own pure functions (``score_action`` against
the recorded top-of-book path, ``close_group`` for advantages), and a shadow model — loaded
from the same snapshot — learns from the re-scored groups while the production model replays
the recorded ones. Outcomes, groups and updates go to shadow topics under their own prefix.

Production topics are never written: the shadow producer's prefix is checked to differ from
the deployment's, and every topic it writes to is checked to carry it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from daemon.eventlog import EventProducer, Position, read_range
from daemon.eventlog.admin import ensure_topics
from daemon.tools.replay.rebuild import StepFn
from schemas import Action, BookTicker, GRPOGroup, SocialEngagement
from schemas.settings import RewardConfig, Settings

SHADOW_TOPICS = ("agent.outcomes", "learn.groups", "learn.updates")
BOOK_MARGIN_MS = 60_000  # quotes before the first decision: the entry needs the prevailing touch


@dataclass
class WhatIfResult:
    shadow_prefix: str
    groups: int = 0
    candidates: int = 0
    reward_recorded: float = 0.0
    reward_what_if: float = 0.0
    abs_reward_delta: float = 0.0
    abs_advantage_delta: float = 0.0
    status_changed: int = 0
    missing_actions: int = 0
    written: dict[str, int] = field(default_factory=dict)
    checksums_production: dict[int, str] = field(default_factory=dict)
    checksums_shadow: dict[int, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        n = max(self.candidates, 1)
        return {
            "shadow_prefix": self.shadow_prefix, "groups": self.groups, "candidates": self.candidates,
            "groups_missing_actions": self.missing_actions,
            "mean_reward_recorded": self.reward_recorded / n, "mean_reward_what_if": self.reward_what_if / n,
            "mean_abs_reward_delta": self.abs_reward_delta / n, "mean_abs_advantage_delta": self.abs_advantage_delta / n,
            "groups_status_changed": self.status_changed, "shadow_records_written": self.written,
            "checksums": {str(b): {"production": self.checksums_production.get(b),
                                   "what_if": self.checksums_shadow.get(b)}
                          for b in sorted(set(self.checksums_production) | set(self.checksums_shadow))},
        }


def shadow_settings(settings: Settings, run_id: str | None = None) -> Settings:
    prefix = f"{settings.kafka.topic_prefix}whatif-{run_id or uuid.uuid4().hex[:8]}."
    return settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"topic_prefix": prefix})})


async def _context(settings: Settings, groups: list[tuple[Position, GRPOGroup]]):
    """The recorded actions of these groups, and the book/engagement paths after them."""
    from streams.rewards import BookPath

    wanted = {g.group_id for _, g in groups}
    actions: dict[str, list[Action]] = {}
    # actions are retained 30 days and keyed by group: reading the topic is the honest lookup
    async for _, ev in read_range(settings, "agent.actions"):
        if isinstance(ev, Action) and ev.group_id in wanted:
            actions.setdefault(ev.group_id, []).append(ev)
    t0_ms = min((a.ts_event // 1_000_000 for acts in actions.values() for a in acts), default=0)
    ticks: dict[tuple[str, str], list[tuple[int, float, float, float, float]]] = {}
    async for _, ev in read_range(settings, "market.events", start_timestamp_ms=max(0, t0_ms - BOOK_MARGIN_MS)):
        if isinstance(ev, BookTicker):
            ticks.setdefault((ev.exchange, ev.symbol), []).append(
                (ev.ts_event, ev.bid_price, ev.bid_qty, ev.ask_price, ev.ask_qty))
    engagements = []
    async for _, ev in read_range(settings, "social.events", start_timestamp_ms=max(0, t0_ms - BOOK_MARGIN_MS)):
        if isinstance(ev, SocialEngagement):
            engagements.append((ev.ts_event, ev.kind, ev.subject_uri))
    books = {k: BookPath(sorted(v)) for k, v in ticks.items()}
    by_symbol = {sym: book for (_, sym), book in books.items()}  # actions may omit the exchange
    return actions, books, by_symbol, engagements


async def what_if(settings: Settings, reward: RewardConfig, groups: list[tuple[Position, GRPOGroup]],
                  production: Any, shadow: Any, step_fn: StepFn, *, run_id: str | None = None,
                  on_group: Callable[[], None] | None = None) -> WhatIfResult:
    from streams.grouping import close_group
    from streams.rewards import BookPath, score_action, to_outcome

    shadow_cfg = shadow_settings(settings, run_id)
    prefix = shadow_cfg.kafka.topic_prefix
    if prefix == settings.kafka.topic_prefix:
        raise ValueError("the shadow prefix equals the production prefix")
    result = WhatIfResult(shadow_prefix=prefix)
    actions, books, by_symbol, engagements = await _context(settings, groups)
    await ensure_topics(shadow_cfg)
    async with EventProducer(shadow_cfg) as producer:

        async def send(topic: str, ev: Any) -> None:
            assert topic in SHADOW_TOPICS and producer.physical(topic).startswith(prefix)
            await producer.send(topic, ev)
            result.written[topic] = result.written.get(topic, 0) + 1

        for _, group in groups:
            acts = {a.candidate_index: a for a in actions.get(group.group_id, [])}
            chosen = [acts[i] for i in group.candidate_indices if i in acts]
            production, prod_updates = step_fn(production, group)
            for u in prod_updates:
                result.checksums_production[u.block] = u.checksum
            if len(chosen) != len(group.candidate_indices):
                result.missing_actions += 1
                continue
            outcomes = {}
            for a in chosen:
                book = books.get((a.exchange, a.symbol)) or by_symbol.get(a.symbol) or BookPath(())
                outcome = to_outcome(a, score_action(a, reward, book, engagements), source="what-if")
                outcomes[a.candidate_index] = outcome
                await send("agent.outcomes", outcome)
            regrouped = close_group(chosen, outcomes, settings.groups, close_reason=group.close_reason,
                                    window_end=group.window_end_ns or group.ts_event, source="what-if")
            await send("learn.groups", regrouped)
            shadow, shadow_updates = step_fn(shadow, regrouped)
            for u in shadow_updates:
                result.checksums_shadow[u.block] = u.checksum
                await send("learn.updates", u)
            result.groups += 1
            result.candidates += len(chosen)
            result.reward_recorded += sum(group.rewards)
            result.reward_what_if += sum(regrouped.rewards)
            result.abs_reward_delta += sum(abs(a - b) for a, b in zip(group.rewards, regrouped.rewards))
            result.abs_advantage_delta += sum(abs(a - b) for a, b in zip(group.advantages, regrouped.advantages))
            result.status_changed += (group.status == "skipped") != (regrouped.status == "skipped")
            if on_group is not None:
                on_group()
        await producer.flush()
    return result
