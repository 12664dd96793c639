"""The live loop without a broker: context -> actor -> paper fills -> groups -> learner step.

Each piece is the function the live pipeline runs, called in the order the event log would
deliver its records, in event time:

- every market record goes to ``ContextWindow.observe`` and ``Actor.on_market_event`` (which
  decides when a decision is due: one per (exchange, symbol) every ``cadence_s`` of event time);
- a due decision goes through ``Actor.decide`` (prompt from ``learners.grammar``, G samples from
  the ``ResidentPolicy``, parsing, horizon clamping, choice of the executed candidate);
- once a market record *after* the group's last horizon arrives (``streams.grouping.all_in``,
  the stream engine's rule), each candidate is scored with ``streams.rewards.score_action`` against the recorded book path and
  turned into an ``Outcome``; ``streams.grouping.close_group`` builds the GRPO group;
- ``ResidentPolicy.apply_sync`` runs ``learners.core.step`` on it, as the learner loop does.

What the broker would add (serialisation, partitions, wall-clock lag) does not change a
reward. What is left out on purpose: the executor (every candidate is scored counterfactually
anyway) and groups whose horizon runs past the end of a phase's data (the engine would never
close them either; they are counted as ``unclosed``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable

import random

from daemon.service.actor import Actor, Decision, choose_candidate
from daemon.service.baselines import baseline_rewards, random_side, side_fills
from daemon.service.context import ContextWindow
from daemon.service.policy import ResidentPolicy
from daemon.service.side_probe import probe_policy
from schemas import Action
from schemas.settings import ActorSettings, GroupConfig, RewardConfig
from streams.grouping import all_in, close_group, window_end_ns
from streams.rewards import BookPath, horizon_end_ns, paper_fill, score_action, to_outcome


async def _discard(topic: str, event: object) -> None:
    """The actor's emit: broker-free, the driver keeps what it needs from ``decide``'s return."""


@dataclass
class OpenGroup:
    """A decision whose group waits for its candidates' horizons to pass."""

    decision: Decision
    actions: list[Action]
    horizon_ends_ns: list[int]


class LoopDriver:
    """One learner, one fee setting; phases (training passes, held-out) run one after another."""

    def __init__(self, policy: ResidentPolicy, reward: RewardConfig, groups: GroupConfig, actor: ActorSettings,
                 *, seed: int, log=None, log_every: int = 250, sink=None, probe_every: int = 0):
        self.policy = policy
        self.reward = reward
        # the reported bps: the same fill as the learner's reward, scored as size * pnl_bps
        self.pnl = reward.model_copy(update={"kind": "pnl"})
        self.groups = groups
        self.actor_settings = actor
        self.seed = seed
        self.decisions = 0
        self.unclosed = 0
        self.sample_s = 0.0
        self.step_s = 0.0
        self.log = log
        self.log_every = log_every
        self.sink = sink  # called with every record as it closes (a run can be watched as it goes)
        if probe_every and not policy.state.config.sequential:
            raise ValueError("probe_every > 0 needs the sequential sampler (reveal_window=1, sample_steps=gen_len): "
                             "the probe is the model's exact side probability; set probe_every=0 for other samplers")
        self.probe_every = probe_every
        self.probes: list[dict[str, Any]] = []
        self.closed = 0

    async def run_phase(self, phase: str, events: Iterable, books: dict[str, BookPath], capture_of,
                        max_decisions: int | None = None) -> list[dict[str, Any]]:
        """Feed one phase's merged events; returns one record per closed decision, in close order.

        A fresh context and actor per phase (a restarted daemon): a pass never sees the price
        history of another, so a second pass over the same captures starts from the same state
        the first did. Only the learner carries over.
        """
        context = ContextWindow()
        actor = Actor(self.policy, context, _discard, None, self.actor_settings, self.groups,
                      seed=self.seed + self.decisions)
        pending: dict[str, list[OpenGroup]] = {}
        records: list[dict[str, Any]] = []
        if self.probe_every and not self.probes:
            self.probes.append({"closed": 0, "phase": phase, **probe_policy(self.policy)})  # the bootstrap's answer
        taken = 0
        for ev in events:
            context.observe(ev)
            sym = ev.symbol
            opens = pending.get(sym)
            if opens:
                for o in [o for o in opens if all_in(o.horizon_ends_ns, ev.ts_event)]:
                    opens.remove(o)
                    records.append(self._close(phase, o, books[sym], capture_of))
                    self._after_close(phase, records)
            if max_decisions is not None and taken >= max_decisions:
                if not any(pending.values()):
                    break
                continue  # no new decisions: let the open groups close
            actor.on_market_event(ev.exchange, sym, ev.ts_event)
            # the actor's run task would pop this; driving it inline keeps every decision (no
            # "model busy" skips) and makes the run deterministic
            d = actor.take_due(ev.exchange, sym)
            if d is None:
                continue
            t = time.perf_counter()
            actions = await actor.decide(d)
            self.sample_s += time.perf_counter() - t
            taken += 1
            self.decisions += 1
            pending.setdefault(sym, []).append(
                OpenGroup(d, actions, [horizon_end_ns(a) for a in actions]))
        self.unclosed += sum(len(v) for v in pending.values())
        return records

    def _after_close(self, phase: str, records: list[dict[str, Any]]) -> None:
        """Stream the record out; every so often probe the policy and say how it goes."""
        if self.sink:
            self.sink(records[-1])
        self.closed += 1
        if self.probe_every and self.closed % self.probe_every == 0:
            p = {"closed": self.closed, "phase": phase, **probe_policy(self.policy)}
            self.probes.append(p)
            if self.log:
                self.log(f"probe v{p['policy_version']}: " + " ".join(
                    f"{k} L{v['long']:.2f}/S{v['short']:.2f}/F{v['flat']:.2f}" for k, v in p.items()
                    if k.startswith("im=")) + f" gap {p['gap']:+.2f}")
        if self.log and len(records) % self.log_every == 0:
            last = records[-self.log_every:]
            self.log(f"{phase}: {len(records)} closed, policy_version {self.policy.policy_version}, "
                     f"last {self.log_every}: learned {sum(r['learned'] for r in last) / len(last):+.2f} bps, "
                     f"trades {sum(r['executed_side'] in ('long', 'short') for r in last)}")

    def _close(self, phase: str, o: OpenGroup, book: BookPath, capture_of) -> dict[str, Any]:
        d, actions = o.decision, o.actions
        results = {a.candidate_index: score_action(a, self.reward, book) for a in actions}
        outcomes = {a.candidate_index: to_outcome(a, results[a.candidate_index]) for a in actions}
        end = window_end_ns(d.t0_ns, o.horizon_ends_ns, self.groups.grace_s)
        group = close_group(actions, outcomes, self.groups, close_reason="all_in", window_end=end)
        t = time.perf_counter()
        updates, _ = self.policy.apply_sync(group)
        self.step_s += time.perf_counter() - t
        if self.reward.kind == "pnl":
            bps = [results[a.candidate_index].reward for a in actions]
        else:
            bps = [score_action(a, self.pnl, book).reward for a in actions]
        chosen = next(a for a in actions if a.executed)
        # the other execution rule the actor offers, scored on the same candidates: which one is
        # executed changes no reward and no update, only this figure
        modal = choose_candidate(actions, "argmax", random.Random(0))
        spec = chosen.parsed
        if spec is None:
            unit = self.pnl.min_reward  # nothing valid was sampled: scored as the learner scores it
        else:
            unit = paper_fill(spec.model_copy(update={"size": 0.0 if spec.side == "flat" else 1.0}),
                              d.t0_ns, book, self.pnl).reward
        fills = side_fills(d.t0_ns, book, self.pnl, self.actor_settings.horizon_s)
        imbalance = d.features.imbalance
        pick = random_side(self.seed, d.symbol, d.t0_ns)
        sides = [a.parsed.side if a.parsed is not None else "invalid" for a in actions]
        return {
            "phase": phase, "capture": capture_of(d.symbol, d.t0_ns), "symbol": d.symbol, "t0_ns": d.t0_ns,
            "policy_version": actions[0].policy_version, "version_after": self.policy.policy_version,
            "prompt": actions[0].prompt, "imbalance": imbalance,
            "completions": [a.completion for a in actions], "sides": sides,
            "sizes": [a.parsed.size if a.parsed is not None else None for a in actions],
            "rewards": list(group.rewards), "advantages": list(group.advantages), "status": group.status,
            "bps": bps, "executed": chosen.candidate_index, "executed_side": sides[chosen.candidate_index],
            "learned": bps[chosen.candidate_index], "learned_unit": unit, "group_mean": sum(bps) / len(bps),
            "learned_modal": bps[modal.candidate_index],
            "updated_blocks": len(updates), "fills": fills, "random_pick": pick,
            **baseline_rewards(fills, imbalance, pick),
        }
