"""Rewards from what the world did next. Pure: no Kafka, no Faust; the PyFlink job imports it too.

Market actions are scored by a counterfactual *paper fill* against the top-of-book path that
followed the decision at ``t0``:

- **Entry** at the touch prevailing at ``t0 + latency_ms`` (the last book update at or before
  that instant): a long buys the ask, a short sells the bid.
- **Exit** at the touch prevailing at ``t0 + horizon_s`` (long sells the bid, short buys the
  ask), or earlier at a **stop**: the first book update after entry whose *mid* has moved
  ``stop_bps`` or more against the position, measured from the entry mid, exits at that update's
  touch. The mid (not the touch) triggers, so a stop tighter than the spread does not fire at once.
- **Costs**, in bps of notional: ``fee_bps`` per side (taker, both legs), and slippage per
  side: ``none``; ``fixed`` (``slippage_bps``); or ``spread`` (``slippage_bps`` x that leg's
  spread in bps of its mid).
- ``pnl_bps`` = gross move in bps of the entry price − fees − slippage (per unit of notional).
- Reward ``pnl``: ``size * pnl_bps``. Reward ``risk_adjusted``:
  ``size * pnl_bps / max(realised_vol_bps, vol_floor_bps) − drawdown_penalty * size * mae_bps``
  where realised vol is ``sqrt(sum(log-return of mid)^2)`` over the holding window and MAE the
  largest adverse mid move from the entry mid during the hold, both in bps.
- ``flat`` is 0 reward, no fees. An invalid action gets ``min_reward`` with the reason kept.
  No quote at or before the entry instant gives 0 with ``exit_reason="no_data"``: the market,
  not the policy, is at fault. Every reward is clipped to ``[min_reward, max_reward]``.

Social actions (``pick`` one of the K observed posts in ``Action.choices``) are scored by the
engagement each post gets in ``(t0, t0 + horizon]``: ``score = like_w * likes + repost_w *
reposts``. Reward = ``score[pick] / max(score)``, in ``[0, 1]``: 1 when the pick got the most
(ties included), the fraction of the best otherwise, and 0 for every candidate when no post got
any engagement (so that group carries no signal and is skipped). Chosen over a 0/1 "was it the
best" reward because a near-miss still ranks above a dud, which GRPO's advantages can use.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Sequence

from schemas.agent import Action, MarketActionSpec, Outcome, RewardComponents, SocialActionSpec
from schemas.ids import deterministic_event_id
from schemas.settings import RewardConfig

ExitReason = Literal["horizon", "stop", "invalid", "no_data", "flat", "social"]
Tick = tuple[int, float, float, float, float]  # (ts_ns, bid, bid_qty, ask, ask_qty)
Engagement = tuple[int, str, str]  # (ts_ns, "like" | "repost", subject_uri)

_BPS = 1e4


class BookPath:
    """A top-of-book path, sorted by ``ts_ns`` (non-decreasing), indexed for time lookups.

    Quotes with a non-positive bid or ask (an empty side) are dropped: nothing can fill there.
    """

    __slots__ = ("ts", "bid", "ask")

    def __init__(self, ticks: Iterable[Sequence[float]]):
        ts: list[int] = []
        bid: list[float] = []
        ask: list[float] = []
        for t in ticks:
            if t[1] > 0 and t[3] > 0:
                ts.append(int(t[0]))
                bid.append(float(t[1]))
                ask.append(float(t[3]))
        self.ts, self.bid, self.ask = ts, bid, ask

    def __len__(self) -> int:
        return len(self.ts)

    def at(self, t_ns: int) -> int:
        """Index of the quote prevailing at ``t_ns`` (last one at or before it), or -1."""
        return bisect_right(self.ts, t_ns) - 1


@dataclass(frozen=True)
class RewardResult:
    """One candidate's reward with how it came about; turns into ``schemas.Outcome``."""

    reward: float
    valid: bool = True
    reason: str | None = None
    exit_reason: ExitReason = "horizon"
    entry_price: float | None = None
    exit_price: float | None = None
    entry_ts_ns: int | None = None
    exit_ts_ns: int | None = None
    pnl_bps: float = 0.0
    fees_bps: float = 0.0
    slippage_bps: float = 0.0
    realised_vol_bps: float = 0.0
    drawdown_bps: float = 0.0
    risk_adjusted: float = 0.0
    engagement: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def components(self) -> RewardComponents:
        return RewardComponents(
            pnl_bps=self.pnl_bps, fees_bps=self.fees_bps, slippage_bps=self.slippage_bps,
            realised_vol_bps=self.realised_vol_bps, drawdown_bps=self.drawdown_bps,
            risk_adjusted=self.risk_adjusted, engagement=self.engagement,
        )


def _clip(x: float, cfg: RewardConfig) -> float:
    return min(max(x, cfg.min_reward), cfg.max_reward)


def invalid_result(reason: str, cfg: RewardConfig) -> RewardResult:
    """The configured minimum reward, with the reason kept for analytics."""
    return RewardResult(reward=cfg.min_reward, valid=False, reason=reason, exit_reason="invalid")


def _slippage_bps(bid: float, ask: float, cfg: RewardConfig) -> float:
    if cfg.slippage_model == "none":
        return 0.0
    if cfg.slippage_model == "fixed":
        return cfg.slippage_bps
    mid = (bid + ask) / 2
    return cfg.slippage_bps * (ask - bid) / mid * _BPS


def paper_fill(spec: MarketActionSpec, t0_ns: int, book: BookPath, cfg: RewardConfig) -> RewardResult:
    """Score one market action against ``book`` (which must cover ``t0 + latency`` and after)."""
    if spec.side == "flat":
        return RewardResult(reward=_clip(0.0, cfg), exit_reason="flat")
    t_entry = t0_ns + round(cfg.latency_ms * 1e6)
    t_exit = t0_ns + round(spec.horizon_s * 1e9)
    i = book.at(t_entry)
    if i < 0:
        return RewardResult(reward=_clip(0.0, cfg), exit_reason="no_data",
                            reason="no quote at or before the entry instant")
    long = spec.side == "long"
    bids, asks, ts = book.bid, book.ask, book.ts
    entry = asks[i] if long else bids[i]
    mid0 = (bids[i] + asks[i]) / 2
    prev_mid = mid0
    sum_sq = 0.0
    mae = 0.0
    stop = spec.stop_bps
    exit_reason: ExitReason = "horizon"
    j = i
    k = i + 1
    n = len(ts)
    # walk the updates after entry up to the horizon; the mid drives vol, MAE and the stop
    while k < n and ts[k] <= t_exit:
        mid = (bids[k] + asks[k]) / 2
        r = math.log(mid / prev_mid)
        sum_sq += r * r
        prev_mid = mid
        adverse = (mid0 - mid) / mid0 * _BPS if long else (mid - mid0) / mid0 * _BPS
        if adverse > mae:
            mae = adverse
        j = k
        if stop is not None and adverse >= stop:
            exit_reason = "stop"
            break
        k += 1
    exit_px = bids[j] if long else asks[j]
    gross = (exit_px - entry) / entry * _BPS if long else (entry - exit_px) / entry * _BPS
    fees = 2 * cfg.fee_bps
    slip = _slippage_bps(bids[i], asks[i], cfg) + _slippage_bps(bids[j], asks[j], cfg)
    pnl = gross - fees - slip
    vol = math.sqrt(sum_sq) * _BPS
    risk_adj = spec.size * pnl / max(vol, cfg.vol_floor_bps) - cfg.drawdown_penalty * spec.size * mae
    raw = spec.size * pnl if cfg.kind == "pnl" else risk_adj
    return RewardResult(
        reward=_clip(raw, cfg), exit_reason=exit_reason, entry_price=entry, exit_price=exit_px,
        entry_ts_ns=ts[i], exit_ts_ns=ts[j], pnl_bps=pnl, fees_bps=fees, slippage_bps=slip,
        realised_vol_bps=vol, drawdown_bps=mae, risk_adjusted=risk_adj,
    )


def social_reward(spec: SocialActionSpec, choices: Sequence[str], engagements: Iterable[Engagement],
                  t0_ns: int, cfg: RewardConfig) -> RewardResult:
    """Normalised engagement of the picked post among the K choices over ``(t0, t0 + horizon]``."""
    if spec.pick >= len(choices):
        return invalid_result(f"pick {spec.pick} is out of range for {len(choices)} choices", cfg)
    t_end = t0_ns + round(spec.horizon_s * 1e9)
    weights = {"like": cfg.social_like_weight, "repost": cfg.social_repost_weight}
    index = {uri: n for n, uri in enumerate(choices)}
    score = [0.0] * len(choices)
    for ts_ns, kind, uri in engagements:
        n = index.get(uri)
        if n is not None and t0_ns < ts_ns <= t_end:
            score[n] += weights.get(kind, 0.0)
    best = max(score)
    raw = score[spec.pick] / best if best > 0 else 0.0
    return RewardResult(reward=_clip(raw, cfg), exit_reason="social", engagement=score[spec.pick],
                        extra={"scores": score})


def score_action(action: Action, cfg: RewardConfig, book: BookPath | None = None,
                 engagements: Iterable[Engagement] = ()) -> RewardResult:
    """Dispatch on the action's task; the one entry point the stream processors call."""
    spec = action.parsed
    if action.invalid_reason is not None or spec is None:
        return invalid_result(action.invalid_reason or "action could not be parsed", cfg)
    if action.task == "market":
        if not isinstance(spec, MarketActionSpec):
            return invalid_result(f"a {spec.kind} action on a market task", cfg)
        return paper_fill(spec, action.ts_event, book if book is not None else BookPath(()), cfg)
    if not isinstance(spec, SocialActionSpec):
        return invalid_result(f"a {spec.kind} action on a social task", cfg)
    return social_reward(spec, action.choices, engagements, action.ts_event, cfg)


def horizon_end_ns(action: Action) -> int:
    """When the action's outcome is known in event time: t0 + horizon (t0 if unparsed)."""
    spec = action.parsed
    if spec is None or action.invalid_reason is not None:
        return action.ts_event
    return action.ts_event + round(spec.horizon_s * 1e9)


def outcome_event_id(group_id: str, candidate_index: int, horizon_end: int) -> str:
    """Same candidate, same id: a restarted processor's re-emission dedupes downstream."""
    return deterministic_event_id(horizon_end // 1_000_000, "outcome", group_id, candidate_index)


def to_outcome(action: Action, result: RewardResult, *, ts_ingest: int | None = None,
               source: str = "streams") -> Outcome:
    """The ``agent.outcomes`` record for ``action`` scored as ``result`` (deterministic id)."""
    end = horizon_end_ns(action)
    kw: dict[str, Any] = {} if ts_ingest is None else {"ts_ingest": ts_ingest}
    return Outcome(
        event_id=outcome_event_id(action.group_id, action.candidate_index, end), ts_event=end,
        source=source, key=action.group_id, group_id=action.group_id,
        candidate_index=action.candidate_index, group_size=action.group_size,
        action_event_id=action.event_id, symbol=action.symbol, policy_version=action.policy_version,
        reward=result.reward, components=result.components(), valid=result.valid, reason=result.reason,
        entry_price=result.entry_price, exit_price=result.exit_price, exit_reason=result.exit_reason,
        horizon_end_ns=end, **kw,
    )


def paper_fill_reward(completions: Sequence[Any], *, specs: Sequence[MarketActionSpec | None],
                      t0_ns: Sequence[int], book: BookPath, cfg: RewardConfig | None = None,
                      **kwargs: Any) -> list[float]:
    """TRL-style reward function: one reward per completion, scored against one book path.

    ``specs[i]`` is completion i parsed (None when it did not parse: it gets ``min_reward``).

    >>> from schemas.settings import RewardConfig
    >>> book = BookPath([(0, 100.0, 1, 100.02, 1), (1_000_000_000, 100.10, 1, 100.12, 1)])
    >>> cfg = RewardConfig(latency_ms=0, fee_bps=1.0, slippage_model="none")
    >>> long = MarketActionSpec(side="long", size=1.0, horizon_s=2)
    >>> flat = MarketActionSpec(side="flat", size=1.0, horizon_s=2)
    >>> [round(r, 4) for r in paper_fill_reward(["long", "flat", "??"], specs=[long, flat, None],
    ...                                         t0_ns=[0, 0, 0], book=book, cfg=cfg)]
    [5.9984, 0.0, -50.0]
    """
    cfg = cfg or RewardConfig()
    out = []
    for spec, t0 in zip(specs, t0_ns, strict=True):
        if spec is None:
            out.append(cfg.min_reward)
        else:
            out.append(paper_fill(spec, t0, book, cfg).reward)
    return out
