"""How much the baselines depend on what "a decision every 2 s" means (the reference check).

The reference values came from an independent simulator whose decision instants we do not
know. The baselines need no learner, so they can be recomputed on one capture for several
definitions of the instant, with the same fills:

- ``actor``: the instants ``Actor.on_market_event`` schedules (the first record at or after each
  due time; the first one a cadence after the symbol's first record); what the benchmark uses;
- ``grid``: exact multiples of the cadence after the capture's first record;
- ``utc_grid``: whole multiples of the cadence in UTC, and that grid shifted by 0.1 .. 1.9 s
  (``phase_scan`` summarises the spread of each figure over the 20 phases).

The imbalance is the top of book in force at the instant; fills as everywhere else.
"""

from __future__ import annotations

from typing import Any

from daemon.service.actor import Actor
from daemon.service.baselines import baseline_rewards, heuristic_side, mean_se, random_side, side_fills
from daemon.service.context import ContextWindow
from daemon.tools.efficacy.captures import CaptureFile, load
from schemas import BookTicker
from schemas.settings import ActorSettings, GroupConfig, RewardConfig
from streams.rewards import BookPath


async def _discard(topic: str, event: object) -> None:
    """No events leave this probe."""


def actor_instants(events: list, cadence_s: float) -> list[int]:
    """The decision instants the live actor schedules on this stream (no sampling involved)."""
    context = ContextWindow()
    actor = Actor(None, context, _discard, None, ActorSettings(cadence_s=cadence_s),  # type: ignore[arg-type]
                  GroupConfig())
    out = []
    for ev in events:
        context.observe(ev)
        actor.on_market_event(ev.exchange, ev.symbol, ev.ts_event)
        d = actor.take_due(ev.exchange, ev.symbol)
        if d is not None:
            out.append(d.t0_ns)
    return out


def decision_variants(cap: CaptureFile, fees_bps: list[float], *, cadence_s: float = 2.0, horizon_s: float = 5.0,
                      latency_ms: float = 100.0, seed: int = 0) -> dict[str, Any]:
    events = load(cap)
    quotes = [(e.ts_event, e.bid_price, e.bid_qty, e.ask_price, e.ask_qty) for e in events
              if isinstance(e, BookTicker) and e.bid_price > 0 and e.ask_price > 0]
    book = BookPath(quotes)
    first, last = events[0].ts_event, events[-1].ts_event
    step = round(cadence_s * 1e9)
    end = last - round(horizon_s * 1e9)  # an instant whose horizon the capture does not cover is left out
    variants = {
        "actor": actor_instants(events, cadence_s),
        "grid": list(range(first + step, end, step)),
        "utc_grid": list(range((first // step + 1) * step, end, step)),
    }
    # the same UTC grid shifted by 0.1 s .. 1.9 s: how much the phase alone moves the figures
    for k in range(1, 20):
        variants[f"utc_grid+{k / 10:.1f}s"] = [t + k * step // 20 for t in variants["utc_grid"]]
    out: dict[str, Any] = {}
    for name, instants in variants.items():
        instants = [t for t in instants if t < end]
        rows: dict[str, Any] = {"decisions": len(instants)}
        ims = []
        for t in instants:
            i = book.at(t)
            bq, aq = quotes[i][2], quotes[i][4]
            ims.append((bq - aq) / (bq + aq) if bq + aq > 0 else 0.0)
        rows["heuristic_trade_share"] = sum(heuristic_side(im) != "flat" for im in ims) / max(1, len(ims))
        for fee in fees_bps:
            cfg = RewardConfig(latency_ms=latency_ms, fee_bps=fee, slippage_model="none", kind="pnl")
            recs = [baseline_rewards(side_fills(t, book, cfg, horizon_s), im, random_side(seed, cap.symbol, t))
                    for t, im in zip(instants, ims)]
            rows[f"fee {fee:g}"] = {k: mean_se([r[k] for r in recs])
                                    for k in ("random", "random_expected", "heuristic", "hindsight")}
        out[name] = rows
    phases = [v for k, v in out.items() if k.startswith("utc_grid")]
    out["phase_scan"] = {
        f"fee {fee:g}": {k: {"min": min(p[f"fee {fee:g}"][k]["mean"] for p in phases),
                             "max": max(p[f"fee {fee:g}"][k]["mean"] for p in phases),
                             "mean": sum(p[f"fee {fee:g}"][k]["mean"] for p in phases) / len(phases)}
                         for k in ("random", "heuristic", "hindsight")}
        for fee in fees_bps}
    return out
