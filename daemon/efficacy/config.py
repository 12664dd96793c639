"""What one efficacy run is: captures, split, fee settings and every knob of the loop.

Everything that changes a figure lives here and is written into the JSON summary, so a result
can be rerun from its summary alone. The live defaults (``ActorSettings``, ``GroupConfig``,
``RewardConfig``) are used unless a field here says otherwise.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

DEFAULT_CAPTURES = Path("../shared/data/exchange_binance")

# The resident model the benchmark learns with. Smaller than ``LearnerConfig()``'s default
# (3 blocks x 2 layers x 128): the full run must fit a few minutes on a 2-core CPU, and one
# decision (sample G, then one block-local step) costs ~12x less at this size.
# gen_len 20 holds the longest action the grammar emits ("short 0.25 h300 s100").
# Sampling: one token per step (sample_steps = gen_len) in random order inside a 4-token window;
# with fewer steps several characters of one word are drawn independently ("flng 0 h30") and
# most candidates fail to parse; "low_confidence" order makes nearly every candidate "long".
DEFAULT_LEARNER: dict[str, Any] = {
    "model": {"n_blocks": 2, "n_layer": 2, "n_embd": 64, "n_head": 2},
    "gen_len": 20, "sample_steps": 20, "remasking": "random", "reveal_window": 4, "mc_draws": 1,
    "device": "cpu",
}


@dataclass
class EfficacyConfig:
    r"""One efficacy run.

    > Data
        captures (`Path`): folder with ``spot/``, ``usdm_futures/``, ``coinm_futures/`` gz captures.
        holdout (`list[str]`): glob patterns (file names) kept out of training and of all tuning;
            reported separately. Default: the ``*_20240809`` files, i.e. the 5 minutes that follow
            the training window, on four of the six symbols (time and venue held out together).
        include (`list[str]`): glob patterns of the files used at all (default: every ``*.gz``).
        max_decisions (`int | None`): stop each phase after this many decisions (quick runs).
        reference_capture (`str`): the file whose baselines are checked against issue 10's values.

    > The loop (passed through the live functions unchanged)
        fees_bps (`list[float]`): one independent run (fresh learner) per fee, taker, per side.
        epochs (`int`): passes of the learner over the training captures before the held-out ones;
            it keeps learning throughout, held-out phase included (continuous learning).
        group_size (`int`): G candidates per decision. cadence_s / horizon_s: the actor's.
        temperature (`float`): sampling temperature. choose: which candidate the actor executes.
        reward_kind (`"pnl" | "risk_adjusted"`): what the learner is rewarded with. The reported
            bps always come from the same fill scored as ``pnl``.
        lr (`float`): learner learning rate; learner (`dict`): the rest of ``LearnerConfig``.
        bootstrap_steps (`int`): grammar pretraining before the first decision (cached on disk).
        seed (`int`): actor sampling, learner init and the random baseline.
    """

    captures: Path = DEFAULT_CAPTURES
    holdout: list[str] = field(default_factory=lambda: ["*_20240809.gz"])
    include: list[str] = field(default_factory=lambda: ["*.gz"])
    max_decisions: int | None = None
    reference_capture: str = "usdm_btcusdt_20240808.gz"
    fees_bps: list[float] = field(default_factory=lambda: [0.0, 4.5])
    epochs: int = 2
    group_size: int = 8
    cadence_s: float = 2.0
    horizon_s: float = 5.0
    latency_ms: float = 100.0
    temperature: float = 0.8
    choose: Literal["sample", "argmax"] = "sample"
    reward_kind: Literal["pnl", "risk_adjusted"] = "pnl"
    lr: float = 1e-3
    learner: dict[str, Any] = field(default_factory=lambda: json.loads(json.dumps(DEFAULT_LEARNER)))
    bootstrap_steps: int = 1000
    seed: int = 0
    jobs: int = 1
    cache_dir: Path | None = Path(".eigenloop/efficacy-cache")

    def __post_init__(self) -> None:
        self.captures = Path(self.captures)
        if self.cache_dir is not None:
            self.cache_dir = Path(self.cache_dir)
        self.fees_bps = [float(f) for f in self.fees_bps]
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs}: the learner needs at least one pass over the training captures")
        if self.group_size < 2:
            raise ValueError(f"group_size={self.group_size}: GRPO needs at least two candidates per group")
        if not self.fees_bps:
            raise ValueError("fees_bps is empty: give at least one fee setting")

    def learner_dict(self) -> dict[str, Any]:
        """``LearnerConfig`` kwargs: the learner dict plus the knobs named at top level."""
        return {**self.learner, "lr": self.lr, "temperature": self.temperature, "seed": self.seed}

    def bootstrap_key(self) -> str:
        """Cache key of the bootstrapped weights: only what shapes them (not lr, temperature)."""
        shape = {k: self.learner.get(k) for k in ("model", "gen_len")}
        blob = json.dumps({"learner": shape, "steps": self.bootstrap_steps, "seed": self.seed}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return json.loads(json.dumps(d, default=str))
