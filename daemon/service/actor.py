"""The actor: at a cadence per market, prompt → G candidates → Action events → one to the executor.

A market is an (exchange, symbol) pair: BTC/USDT on two venues has two schedules, two contexts
and two decision streams (``daemon.service.context``).

Time is the market's: a decision is due when a market's event time passes its next decision
instant, so replays at any speed and live data decide alike. A decision is taken on the context
*at* that instant (``t0``), and rewards are scored from the book path after ``t0``, however long
sampling takes in wall time. While the model is busy, at most one decision per market waits;
newer ones replace it and the replaced one is counted as skipped (bounded memory, fresh context).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Awaitable, Callable

from daemon.logging import bind_task
from daemon.service import metrics
from daemon.service.context import ContextWindow, Market
from daemon.service.policy import ResidentPolicy
from learners.grammar import Invalid, format_market_prompt, parse_action
from schemas import Action, MarketActionSpec, Prompt, deterministic_event_id
from schemas.market import MarketFeatures
from schemas.settings import ActorSettings, GroupConfig

Emit = Callable[[str, object], Awaitable[None]]
Execute = Callable[[Action, tuple], Awaitable[None]]


@dataclass
class Decision:
    symbol: str
    exchange: str
    t0_ns: int
    features: MarketFeatures
    quote: tuple


def clamp_horizon(spec: MarketActionSpec, max_horizon_s: float) -> MarketActionSpec:
    if spec.horizon_s <= max_horizon_s:
        return spec
    return spec.model_copy(update={"horizon_s": max_horizon_s})


def choose_candidate(actions: list[Action], how: str, rng: random.Random) -> Action:
    """Which candidate goes to the executor: a uniform draw among the valid ones (the samples
    already follow the policy) or the modal action (the policy's most likely choice)."""
    valid = [a for a in actions if a.parsed is not None]
    if not valid:
        return actions[0]
    if how == "sample":
        return rng.choice(valid)
    counts = Counter((a.parsed.side, a.parsed.size) for a in valid)  # type: ignore[union-attr]
    best = counts.most_common(1)[0][0]
    return next(a for a in valid if (a.parsed.side, a.parsed.size) == best)  # type: ignore[union-attr]


class Actor:
    """Consumes decisions, samples groups from the resident policy, emits Prompt and Action events.

    Delivery: every candidate of a group is emitted before the executor sees one of them.
    ``stop()`` lets the decision in flight finish; queued decisions are dropped (and counted).
    Cancelling the task instead could leave a group with only some of its candidates emitted.
    """

    def __init__(self, policy: ResidentPolicy, context: ContextWindow, emit: Emit, execute: Execute | None,
                 actor: ActorSettings, groups: GroupConfig, *, seed: int = 0, run_key: str | None = None,
                 before_decide: Callable[[], Awaitable[None]] | None = None,
                 on_decided: Callable[[list[Action]], None] | None = None):
        self.policy = policy
        self.context = context
        self.emit = emit
        self.execute = execute
        self.cfg = actor
        self.group_size = groups.group_size
        self._next_due: dict[Market, int] = {}
        self._pending: dict[Market, Decision] = {}
        self._wake = asyncio.Event()
        self._rng = random.Random(seed)
        self._seed_rng = random.Random(seed + 1)
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.decisions = 0
        self.skipped = 0
        self.actions_sampled = 0  # candidates sampled, and those of them that parse
        self.valid_actions = 0
        # a paced replay: ids and seeds derived from (run_key, decision), so the same input gives
        # the same actions; the weights are settled (``before_decide``) before each sample
        self.run_key = run_key
        self.before_decide = before_decide
        self.on_decided = on_decided
        self._deciding = False
        self.on_idle: Callable[[], None] | None = None

    def idle(self) -> bool:
        """No decision waiting or being taken."""
        return not self._pending and not self._deciding

    def on_market_event(self, exchange: str, symbol: str, ts_event: int) -> None:
        """Called for every market record after the context saw it: schedules due decisions."""
        cadence = int(self.cfg.cadence_s * 1e9)
        market = (exchange, symbol)
        due = self._next_due.get(market)
        if due is None:
            self._next_due[market] = ts_event + cadence  # one cadence of context before the first
            return
        if ts_event < due:
            return
        self._next_due[market] = due + cadence * max(1, (ts_event - due) // cadence + 1)
        features = self.context.features(exchange, symbol, ts_event)
        quote = self.context.last_quote(exchange, symbol)
        if features is None or quote is None:
            return
        if market in self._pending:
            self.skipped += 1
            metrics.DECISIONS_SKIPPED.inc()
        self._pending[market] = Decision(symbol, exchange, ts_event, features, quote)
        self._wake.set()

    def take_due(self, exchange: str, symbol: str) -> Decision | None:
        """The decision scheduled for (``exchange``, ``symbol``), removed from the queue: for a
        caller that drives ``decide`` itself (benchmarks, replays) instead of running the actor's task."""
        return self._pending.pop((exchange, symbol), None)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="actor")

    @property
    def task(self) -> asyncio.Task | None:
        return self._task

    async def stop(self, timeout: float = 60.0) -> None:
        """Finish the decision in hand (all of a group's candidates go out, or none), then stop."""
        self._stopping = True
        self._wake.set()
        if self._task:
            try:
                await asyncio.wait_for(self._task, timeout)
            except asyncio.TimeoutError:
                pass  # wait_for cancelled the task: a decision stuck this long is abandoned
        self.skipped += len(self._pending)
        self._pending.clear()

    async def _run(self) -> None:
        bind_task(task="actor")
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            while self._pending and not self._stopping:
                market = next(iter(self._pending))
                self._deciding = True
                try:
                    await self.decide(self._pending.pop(market))
                finally:
                    self._deciding = False
                    if self.on_idle is not None and not self._pending:
                        self.on_idle()

    def _draws(self, d: Decision) -> tuple[int, str, random.Random]:
        """Sampling seed, group id and the executor's chooser for one decision."""
        if self.run_key is None:
            # group id from OS entropy: a restarted actor must never reuse one
            return self._seed_rng.getrandbits(31), str(uuid.uuid4()), self._rng
        key = f"{self.run_key}|{d.exchange}|{d.symbol}|{d.t0_ns}".encode()
        digest = hashlib.blake2b(key, digest_size=24).digest()
        group_id = str(uuid.UUID(bytes=digest[:16], version=4))
        return int.from_bytes(digest[16:20], "big") >> 1, group_id, random.Random(digest[20:])

    async def decide(self, d: Decision) -> list[Action]:
        prompt_text = format_market_prompt(d.symbol.replace("/", "").split(":")[0], d.features)
        seed, group_id, chooser = self._draws(d)
        if self.before_decide is not None:
            await self.before_decide()
        completions, version = await self.policy.sample(prompt_text, self.group_size, seed,
                                                        temperature=None, top_p=None)
        ids = self.run_key is not None
        ms = d.t0_ns // 1_000_000
        prompt = Prompt(prompt_id=group_id, symbol=d.symbol, text=prompt_text, features=d.features.as_dict(),
                        policy_version=version, ts_event=d.t0_ns, key=group_id, source="actor",
                        **({"event_id": deterministic_event_id(ms, "prompt", group_id)} if ids else {}))
        await self.emit("agent.prompts", prompt)
        actions = []
        for i, text in enumerate(completions):
            parsed = parse_action(text, "market")
            common = dict(group_id=group_id, candidate_index=i, group_size=len(completions), policy_version=version,
                          seed=seed, prompt_id=group_id, symbol=d.symbol, exchange=d.exchange, prompt=prompt_text,
                          completion=text, ts_event=d.t0_ns, key=group_id, source="actor")
            if ids:
                common["event_id"] = deterministic_event_id(ms, "action", group_id, i)
            if isinstance(parsed, Invalid):
                actions.append(Action(**common, invalid_reason=parsed.reason))
            elif not isinstance(parsed, MarketActionSpec):
                actions.append(Action(**common, invalid_reason=f"expected a market action, got {parsed.kind}"))
            else:
                actions.append(Action(**common, parsed=clamp_horizon(parsed, self.cfg.horizon_s)))
        chosen = choose_candidate(actions, self.cfg.choose, chooser)
        actions[chosen.candidate_index] = chosen = chosen.model_copy(update={"executed": True})
        for a in actions:
            await self.emit("agent.actions", a)
        self.decisions += 1
        if self.on_decided is not None:
            self.on_decided(actions)
        valid = sum(1 for a in actions if a.parsed is not None)
        self.actions_sampled += len(actions)
        self.valid_actions += valid
        metrics.ACTIONS.inc(len(actions))
        metrics.INVALID_ACTIONS.inc(len(actions) - valid)
        if self.execute is not None and chosen.parsed is not None:
            await self.execute(chosen, d.quote)
        return actions
