"""What a run learned, decision by decision, and the summary ``eigenloop run`` prints.

For every group the learner applies, the ledger keeps the learned policy's mean reward (the
mean over its G sampled candidates, as the stream processor scored them) next to the random and
flat baselines on the same decision: each side at size 1 and the actor's horizon, filled by
``streams.rewards.paper_fill`` on the daemon's own copy of the book (``daemon.service.context``), as the
efficacy benchmark scores them (``daemon.service.baselines``). ``random`` is the uniform
random side's expectation, the mean of the three fills; ``flat`` trades nothing.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.service.baselines import mean_se, rolling, side_fills
from daemon.service.context import ContextWindow
from schemas import Action, GRPOGroup
from schemas.settings import RewardConfig
from streams.rewards import BookPath

MAX_ROWS = 100_000


@dataclass
class RunLedger:
    context: ContextWindow
    reward: RewardConfig
    horizon_s: float
    # always-on (--loop, live): the summary covers the latest decisions
    rows: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_ROWS))
    probes: list[dict[str, Any]] = field(default_factory=list)
    _open: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # group id -> (exchange, symbol, t0)

    def __post_init__(self) -> None:
        # the baselines' fill, in bps as the efficacy benchmark reports them
        self._fill_cfg = self.reward.model_copy(update={"kind": "pnl"})
        self._window_ns = (round(self.reward.latency_ms * 1e6), round(self.horizon_s * 1e9))

    def opened(self, actions: list[Action]) -> None:
        a = actions[0]
        self._open[a.group_id] = (a.exchange, a.symbol, a.ts_event)
        if len(self._open) > MAX_ROWS:  # groups that never came (lost, or a live run's tail)
            del self._open[next(iter(self._open))]

    def applied(self, group: GRPOGroup) -> None:
        opened = self._open.pop(group.group_id, None)
        if opened is None or not group.rewards:
            return  # not this run's decision, or nothing scored
        exchange, symbol, t0 = opened
        latency, horizon = self._window_ns
        # the venue the group decided on: the same symbol elsewhere is another book
        ticks = self.context.quotes_between(exchange, symbol, t0 + latency, t0 + horizon)
        if not ticks:
            return
        fills = side_fills(t0, BookPath(ticks), self._fill_cfg, self.horizon_s)
        self.rows.append({"exchange": exchange, "symbol": symbol, "t0_ns": t0, "policy_version": group.policy_version,
                          "learned": sum(group.rewards) / len(group.rewards),
                          "random": sum(fills.values()) / len(fills), "flat": fills["flat"],
                          "spread": max(group.rewards) - min(group.rewards)})

    def probed(self, probe: dict[str, Any] | None) -> None:
        if probe is not None and (not self.probes or self.probes[-1]["policy_version"] != probe["policy_version"]):
            self.probes.append(probe)
            del self.probes[1:-MAX_ROWS]  # the first probe stays: the summary compares against it

    def summary(self) -> dict[str, Any]:
        rows = list(self.rows)
        out: dict[str, Any] = {"decisions_scored": len(rows)}
        for name in ("learned", "random", "flat"):
            out[name] = _rounded(mean_se([r[name] for r in rows]))
        out["learned_minus_random"] = _rounded(mean_se([r["learned"] - r["random"] for r in rows]))
        half = rows[len(rows) // 2:]
        out["second_half"] = {name: _rounded(mean_se([r[name] for r in half])) for name in ("learned", "random")}
        out["side_probe"] = self.probes[-1] if self.probes else None
        out["side_probe_first"] = self.probes[0] if self.probes else None
        return out

    def write_curve(self, path: Path) -> Path | None:
        """Reward per decision (trailing mean over 50) and the side probe's gap per policy version."""
        if not self.rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
        x = list(range(1, len(self.rows) + 1))
        for name, colour in (("learned", "tab:blue"), ("random", "tab:red"), ("flat", "black")):
            left.plot(x, rolling([r[name] for r in self.rows], 50), color=colour, label=name)
        left.set(title="reward per decision (bps, trailing mean of 50)", xlabel="decision")
        left.legend()
        if self.probes:
            right.plot([p["policy_version"] for p in self.probes], [p["gap"] for p in self.probes], color="tab:blue")
        right.set(title="side probe: imbalance gap (0 = same answer to every market)", xlabel="policy_version")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return path


def _rounded(stats: dict[str, float]) -> dict[str, float]:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in stats.items()}


def curve_path(data_dir: Path) -> Path:
    return Path(data_dir) / "reports" / f"run-{time.strftime('%Y%m%dT%H%M%S')}.png"


def format_summary(st: dict[str, Any]) -> list[str]:
    """The lines ``eigenloop run`` prints from the daemon's ``/status`` at the end of a replay."""
    s = st.get("summary") or {}

    def ms(v: dict[str, Any] | None) -> str:
        if not v or v.get("n", 0) == 0:
            return "n/a"
        se = v.get("se")
        return f"{v['mean']:+.3f}" + (f" ± {se:.3f}" if isinstance(se, float) and se == se else "")

    lines = [f"decisions {st['decisions']} (skipped {st.get('skipped', 0)}), groups {st['groups']}, "
             f"updates {st['updates']}, policy_version {st['policy_version']} (checksum {st.get('checksum')}), "
             f"valid actions {st.get('valid_share', 'n/a')}"]
    lines.append(f"mean reward per decision, bps (mean ± SE over {s.get('decisions_scored', 0)} decisions): "
                 f"learned {ms(s.get('learned'))}, random {ms(s.get('random'))}, flat {ms(s.get('flat'))}; "
                 f"learned - random {ms(s.get('learned_minus_random'))}")
    half = s.get("second_half") or {}
    lines.append(f"second half: learned {ms(half.get('learned'))}, random {ms(half.get('random'))}")
    for label, probe in (("first", s.get("side_probe_first")), ("last", s.get("side_probe"))):
        if probe:
            answers = ", ".join(f"{k}: " + " ".join(f"{side} {p:.2f}" for side, p in v.items())
                                for k, v in probe.items() if k.startswith("im="))
            lines.append(f"side probe ({label}, policy_version {probe['policy_version']}): gap {probe['gap']:.2f}; "
                         f"{answers}")
    if st.get("curve"):
        lines.append(f"learning curve: {st['curve']}")
    return lines
