"""What one efficacy run is: captures, split, fee settings and every knob of the loop.

Everything that changes a figure lives here and is written into the JSON summary, so a result
can be rerun from its summary alone. The live defaults (``ActorSettings``, ``GroupConfig``,
``RewardConfig``) are used unless a field here says otherwise.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from daemon.tools.efficacy.prior import DEFAULT_ACTIONS

# both recorded Binance sets: 2024-08 (ns stamps) and 2023-04 (µs stamps, ``*.dat.gz``); file
# names are unique across them, which the holdout and include globs rely on
DEFAULT_CAPTURES = (Path("../shared/data/exchange_binance"), Path("../shared/data/exchange_binance_2023-04"))
# bump when the bootstrap text changes (2: the prompt puts the imbalance last; 3: zero has no sign)
PRIOR_VERSION = 3

# The resident model the benchmark learns with: ``LearnerConfig()``'s defaults, which are the cpu
# preset ``eigenloop run`` uses (``learners.presets``), so what this benchmark measures is what the
# daemon runs. Only the device is pinned: a benchmark figure must not depend on a GPU being there.
DEFAULT_LEARNER: dict[str, Any] = {"device": "cpu"}


@dataclass
class EfficacyConfig:
    r"""One efficacy run.

    > Data
        captures (`list[Path]`): folders with ``spot/``, ``usdm_futures/``, ``coinm_futures/`` gz
            captures (a single path, or a comma-separated string, is accepted too).
        holdout (`list[str]`): glob patterns (file names) kept out of training and of all tuning;
            reported separately. Default: the ``*_20240809`` files, i.e. the 5 minutes that follow
            the training window, on four of the six symbols (the time after training is held out).
        include (`list[str]`): glob patterns of the files used at all (default: every ``*.gz``).
        max_decisions (`int | None`): stop each phase after this many decisions (quick runs).
        reference_capture (`str`): the file whose baselines are checked against the reference values.

    > The loop (passed through the live functions unchanged)
        fees_bps (`list[float]`): one independent run (fresh learner) per fee, taker, per side.
        epochs (`int`, default 2): passes of the learner over the training captures before the
            held-out ones; it keeps learning throughout, held-out phase included (continuous
            learning). At the default lr one pass (~1,500 decisions) was not always enough for the
            imbalance to win over the noise; two were (seeds 0 and 1 measured, then all three).
        group_size (`int`): G candidates per decision. cadence_s / horizon_s: the actor's.
        temperature (`float`): sampling temperature.
        choose (`"sample" | "argmax"`): which candidate the actor executes. "argmax" (the most
            frequent valid side and size): every candidate is scored on paper whatever runs, so
            exploring costs nothing and the executed trade can be the policy's best guess.
        reward_kind (`"pnl" | "risk_adjusted"`): what the learner is rewarded with. The reported
            bps always come from the same fill scored as ``pnl``.
        scale_rewards: ``GroupConfig.scale_rewards`` (TRL semantics; "none", the live default: see there).
        lr (`float`): learner learning rate; learner (`dict`): the rest of ``LearnerConfig``.
        bootstrap_steps (`int`): grammar pretraining before the first decision (cached on disk).
        bootstrap_actions (`list[str]`): the vocabulary of that pretraining, sides uniformly at
            random (``daemon.tools.efficacy.prior``); the grammar and parser stay the full ones.
        seeds (`list[int]`): one independent run (fresh learner, its own bootstrap) per seed and
            fee; the report gives each seed, the mean and spread across seeds, and all pooled.
        seed (`int`): actor sampling, learner init, bootstrap and the random baseline of one
            run; ``run_efficacy`` sets it from ``seeds`` (``for_seed``), so set ``seeds`` instead.
        probe_every (`int`): every this many decisions, record the exact side probabilities on
            fixed market states written with each probed imbalance (``learners.probe``; a
            diagnostic; 0 turns it off).
    """

    captures: list[Path] = field(default_factory=lambda: list(DEFAULT_CAPTURES))
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
    temperature: float | None = None
    choose: Literal["sample", "argmax"] = "argmax"
    reward_kind: Literal["pnl", "risk_adjusted"] = "pnl"
    scale_rewards: Literal["group", "batch", "none"] = "none"
    lr: float | None = None
    learner: dict[str, Any] = field(default_factory=lambda: json.loads(json.dumps(DEFAULT_LEARNER)))
    bootstrap_steps: int = 400
    bootstrap_actions: list[str] = field(default_factory=lambda: list(DEFAULT_ACTIONS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    seed: int = 0
    probe_every: int = 100
    jobs: int = 1
    cache_dir: Path | None = Path(".eigenloop/efficacy-cache")

    def __post_init__(self) -> None:
        self.captures = capture_folders(self.captures)
        if self.cache_dir is not None:
            self.cache_dir = Path(self.cache_dir)
        self.fees_bps = [float(f) for f in self.fees_bps]
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs}: the learner needs at least one pass over the training captures")
        if self.group_size < 2:
            raise ValueError(f"group_size={self.group_size}: GRPO needs at least two candidates per group")
        if not self.fees_bps:
            raise ValueError("fees_bps is empty: give at least one fee setting")
        if not self.seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in self.seeds):
            raise ValueError(f"seeds={self.seeds!r}: give a non-empty list of integers, e.g. [0, 1, 2]")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds={self.seeds!r}: a seed given twice would be the same run twice")

    def for_seed(self, seed: int) -> "EfficacyConfig":
        """The config of one run: this one with ``seed`` (and only it in ``seeds``)."""
        return replace(self, seed=seed, seeds=[seed])

    def learner_dict(self) -> dict[str, Any]:
        """``LearnerConfig`` kwargs: the learner dict plus the knobs named at top level (lr and
        temperature only when set: None keeps the preset's)."""
        out = {**self.learner, "seed": self.seed}
        if self.lr is not None:
            out["lr"] = self.lr
        if self.temperature is not None:
            out["temperature"] = self.temperature
        return out

    def bootstrap_key(self) -> str:
        """Cache key of the bootstrapped weights: only what shapes them (not lr, temperature)."""
        from learners.core import LearnerConfig

        resolved = LearnerConfig(**self.learner_dict())
        shape = {"model": asdict(resolved.model), "gen_len": resolved.gen_len}
        blob = json.dumps({"learner": shape, "steps": self.bootstrap_steps, "seed": self.seed,
                           "actions": self.bootstrap_actions, "prior": PRIOR_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return json.loads(json.dumps(d, default=str))


def capture_folders(value: str | Path | list[str | Path] | tuple[str | Path, ...]) -> list[Path]:
    """``captures`` as a list of folders: a path, a comma-separated string (the CLI's
    ``--captures a,b``) or a list (what ``to_json`` writes, so a summary reruns as is)."""
    items = value.split(",") if isinstance(value, str) else [value] if isinstance(value, Path) else list(value)
    folders = [Path(str(x).strip()) for x in items if str(x).strip()]
    if not folders:
        raise ValueError("captures is empty: give at least one capture folder")
    return folders
