"""The collapse guard: measure the diversity of what the policy generates, and defend it.

The learner loop hands every closed group (and the block updates it caused) to
``CollapseGuard.observe``. Groups are judged in tumbling windows of ``window_groups``; a window
is *unhealthy* when its action entropy is below the floor, its share of zero-spread groups is
above the ceiling, too few of its candidates parse (a policy that emits garbage is not exploring,
and the entropy of the few actions left means nothing), or (optionally) the probe set has
drifted too far from the bootstrap policy.
After ``consecutive_windows`` (K) unhealthy windows in a row the guard escalates one step:

1. raise the sampling temperature by ``temperature_step``, never past ``temperature_max``;
2. switch on the regulariser in the block-local objective (KL to the bootstrap, or entropy);
3. pin the offending blocks to the newest snapshot taken while the data was healthy.

The order is cheapest first and matters: a collapsed policy yields only zero-spread groups,
which the learner skips, so a regulariser alone never acts; a higher temperature brings back
spread (and the regulariser with it) — or, if the policy is too far gone, only garbage, which
the entropy over *parsed* actions does not count, so the guard moves on to the rollback.

Every step resets the count of unhealthy windows, so each intervention gets K windows to work.
After ``release_windows`` healthy windows in a row, and a probe at the base temperature that is
healthy too (the policy itself, not just its sampling noise), the guard releases: temperature
and regulariser go back to what they were. Pinned weights stay pinned.

The guard's own state lives in ``state.metadata["guard"]``, which snapshots carry, so a restart
neither forgets to release a regulariser it switched on nor loses the last healthy version.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from prometheus_client import Counter, Gauge

from daemon.logging import get_logger
from daemon.service.metrics import SNAPSHOT_LOAD_FAILURES
from daemon.service.snapshots import list_snapshots, read_snapshot_info
from learners.diversity import (GroupDiversity, WindowDiversity, entropy_bits, group_diversity, js_divergence,
                                probe_distribution, probe_keys, probe_prompts, update_ratio, window_diversity)
from schemas import BlockUpdate, GRPOGroup, GuardAction, deterministic_event_id
from schemas.settings import GuardSettings

log = get_logger("guard")

ACTIONS = Counter("eigenloop_guard_actions_total", "Collapse guard actions taken", ["action"])
LEVEL = Gauge("eigenloop_guard_level", "Collapse guard escalation: 0 idle, 1 temperature raised, "
              "2 regulariser on, 3 blocks pinned")
UNHEALTHY = Gauge("eigenloop_guard_unhealthy_windows", "Consecutive windows below the diversity floors")
TEMPERATURE = Gauge("eigenloop_guard_temperature", "Sampling temperature the actor uses")
ENTROPY = Gauge("eigenloop_diversity_action_entropy_bits", "Entropy of parsed actions over the last window")
GROUP_ENTROPY = Gauge("eigenloop_diversity_group_entropy_bits", "Mean per-group action entropy, last window")
DISTINCT = Gauge("eigenloop_diversity_distinct_ratio", "Mean distinct-completion ratio per group, last window")
ZERO_SPREAD = Gauge("eigenloop_diversity_zero_spread_share", "Share of groups without reward spread, last window")
VALID = Gauge("eigenloop_diversity_valid_share", "Share of candidates that parse, last window")
PROBE_DIVERGENCE = Gauge("eigenloop_diversity_probe_divergence",
                         "Jensen-Shannon divergence (bits) of the probe set's actions from the bootstrap policy")
PROBE_ENTROPY = Gauge("eigenloop_diversity_probe_entropy_bits",
                      "Action entropy on the probe set at the base temperature")
UPDATE_RATIO = Gauge("eigenloop_block_update_ratio", "Last update norm relative to the parameter norm", ["block"])

REGULARISER_ATTR = {"kl_bootstrap": "kl_bootstrap_coef", "entropy": "entropy_coef"}


# The guard's settings live in the one settings model (``Settings.guard``); the guard takes them
# as they are.
GuardConfig = GuardSettings


@dataclass
class WindowVerdict:
    """One judged window: its metrics, the probe (when taken) and why it is unhealthy."""

    index: int
    metrics: WindowDiversity
    learner_version: int
    probe_entropy: float | None = None
    probe_divergence: float | None = None
    standing_aside: bool = False  # nearly all flat at a reward >= 0: low entropy by choice, not collapse
    reasons: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.reasons


class CollapseGuard:
    """Judges windows of closed groups and acts on the resident policy (see the module docstring).

    ``policy`` is a ``daemon.service.policy.ResidentPolicy`` (or anything with ``temperature``, ``base_temperature``,
    ``policy_version``, ``state`` and ``with_state(fn)``). ``snapshot_root`` is where the learner
    loop writes snapshots; without it the guard never pins. ``probe`` overrides the fixed probe
    prompts (default: ``learners.diversity.probe_prompts(probe_prompts, probe_seed)``).
    """

    def __init__(self, config: GuardConfig, policy, snapshot_root: Path | None = None,
                 probe: Sequence[str] | None = None):
        self.cfg = config
        self.policy = policy
        self.snapshot_root = Path(snapshot_root) if snapshot_root is not None else None
        self.probe = list(probe) if probe is not None else probe_prompts(config.probe_prompts, config.probe_seed)
        self.windows: deque[WindowVerdict] = deque(maxlen=10_000)
        self._pending: list[tuple[GroupDiversity, GRPOGroup]] = []
        self._drift: deque[tuple[int, int, float]] = deque(maxlen=config.drift_history)
        self._reference: dict | None = None  # the bootstrap policy's probe distribution, computed once
        self._last_probe: tuple[float, float | None] | None = None
        self.unhealthy_run = 0  # reset by each escalation: every step gets K windows to work
        self.unhealthy_streak = 0  # never reset by escalation: what the alert watches
        self.healthy_run = 0
        self.level = 0
        self.base: dict | None = None  # temperature and coefficients before the guard first acted
        self.healthy_version: int | None = None
        self._restore()
        TEMPERATURE.set(self._temperature())

    # -- public ---------------------------------------------------------------------------------

    def observe(self, groups: Sequence[GRPOGroup], updates: Sequence[BlockUpdate] = ()) -> list[GuardAction]:
        """Feed closed groups (skipped ones too: they are the zero-spread signal) and the updates they
        caused; returns the actions taken, to be published on ``learn.guard``. Runs the probe (model
        compute) when a window closes, so call it from a worker thread in async code."""
        for u in updates:
            r = update_ratio(u.update_norm, u.param_norm)
            self._drift.append((u.policy_version, u.block, r))
            UPDATE_RATIO.labels(str(u.block)).set(r)
        actions: list[GuardAction] = []
        for g in groups:
            self._pending.append((group_diversity(g.completions, g.rewards, g.task), g))
            if len(self._pending) >= self.cfg.window_groups:
                actions += self._close_window()
        return actions

    def offending_blocks(self, since_version: int) -> list[int]:
        """Blocks whose summed relative updates since ``since_version`` reach ``pin_share`` of the
        largest: the ones that moved the policy away from the healthy snapshot. All blocks when no
        update since then is remembered (e.g. just after a restart)."""
        drift: dict[int, float] = {}
        for version, block, ratio in self._drift:
            if version > since_version:
                drift[block] = drift.get(block, 0.0) + ratio
        top = max(drift.values(), default=0.0)
        if top <= 0:
            return list(range(len(self.policy.state.model.blocks)))
        return sorted(b for b, d in drift.items() if d >= self.cfg.pin_share * top)

    def healthy_snapshots(self) -> list[tuple[Path, int]]:
        """Snapshots at or before the last healthy policy_version, newest first; the bootstrap
        snapshot when no window was ever healthy."""
        if self.snapshot_root is None:
            return []
        fits = []
        for path in list_snapshots(self.snapshot_root):
            info = read_snapshot_info(path)
            version = int(info["policy_version"])
            bootstrap = info.get("metadata", {}).get("source") == "bootstrap"
            if (self.healthy_version is not None and version <= self.healthy_version) or \
                    (self.healthy_version is None and bootstrap):
                fits.append((path, version))
        return fits[::-1]  # list_snapshots is oldest first

    def healthy_snapshot(self) -> tuple[Path, int] | None:
        """The newest of ``healthy_snapshots``."""
        return next(iter(self.healthy_snapshots()), None)

    def _pin_newest_loadable(self, blocks_for) -> tuple[Path, int, list[int]] | None:
        """Pin from the newest healthy snapshot that loads. One whose tensors are damaged is
        reported (error naming the file, ``eigenloop_snapshot_load_failures_total``) and the next
        older one is tried: the guard acts on a collapse, and a torn file must not stop it or
        crash the learner. The live model is untouched by a failed attempt (``pin_blocks`` is all
        or nothing)."""
        from learners.snapshot import pin_blocks

        for path, version in self.healthy_snapshots():
            blocks = blocks_for(version)
            try:
                self.policy.with_state(lambda st: pin_blocks(st, path, blocks))
            except (ValueError, OSError) as e:
                SNAPSHOT_LOAD_FAILURES.inc()
                log.error("collapse guard skips a snapshot that does not load", snapshot=str(path), error=str(e))
                continue
            return path, version, blocks
        return None

    # -- windows --------------------------------------------------------------------------------

    def _close_window(self) -> list[GuardAction]:
        batch, self._pending = self._pending, []
        groups = [g for _, g in batch]
        metrics = window_diversity([d for d, _ in batch], [g.policy_version for g in groups])
        verdict = WindowVerdict(len(self.windows), metrics, self.policy.policy_version)
        every = self.cfg.probe_every_windows
        if every and verdict.index % every == 0:
            verdict.probe_entropy, verdict.probe_divergence = self._probe()
            self._last_probe = (verdict.probe_entropy, verdict.probe_divergence)
        c = self.cfg
        verdict.standing_aside = self._standing_aside(metrics, groups)
        if metrics.action_entropy < c.entropy_floor_bits and not verdict.standing_aside:
            verdict.reasons.append(f"action entropy {metrics.action_entropy:.2f} bits < floor {c.entropy_floor_bits:g}")
        if metrics.valid_share < c.valid_share_floor:
            verdict.reasons.append(f"valid share {metrics.valid_share:.2f} < floor {c.valid_share_floor:g}")
        if metrics.zero_spread_share > c.zero_spread_ceiling and not verdict.standing_aside:
            verdict.reasons.append(f"zero-spread share {metrics.zero_spread_share:.2f} "
                                   f"> ceiling {c.zero_spread_ceiling:g}")
        if c.divergence_ceiling is not None and verdict.probe_divergence is not None \
                and verdict.probe_divergence > c.divergence_ceiling:
            verdict.reasons.append(f"probe divergence {verdict.probe_divergence:.2f} bits "
                                   f"> ceiling {c.divergence_ceiling:g}")
        self.windows.append(verdict)
        self._export(verdict)
        if verdict.healthy:
            self.healthy_run += 1
            self.unhealthy_run = self.unhealthy_streak = 0
            self.healthy_version = metrics.policy_version_max
        else:
            self.healthy_run = 0
            self.unhealthy_run += 1
            self.unhealthy_streak += 1
        UNHEALTHY.set(self.unhealthy_streak)
        actions: list[GuardAction] = []
        if c.enabled and not verdict.healthy and self.unhealthy_run >= c.consecutive_windows:
            self.unhealthy_run = 0
            actions = self._escalate(verdict, groups[-1])
        elif c.enabled and verdict.healthy and self.level > 0 and self.healthy_run >= c.release_windows \
                and self._probe_healthy():
            actions = self._release(verdict, groups[-1])
        self._persist()
        return actions

    def _standing_aside(self, metrics, groups: Sequence[GRPOGroup]) -> bool:
        """Flat on nearly every valid candidate, and not losing: the policy declines to trade (what it
        should learn when fees exceed its edge). Raising the temperature or pinning blocks would undo
        exactly that, so such a window is not judged on entropy or spread."""
        share = self.cfg.stand_aside_share
        if share is None or not metrics.distribution:
            return False
        flat = sum(p for key, p in metrics.distribution.items() if key[0] == "flat")
        rewards = [r for g in groups for r in g.rewards]
        return flat >= share and bool(rewards) and sum(rewards) / len(rewards) >= 0

    def _probe(self) -> tuple[float, float | None]:
        """Action entropy of the probe set at the base temperature, and its divergence from the
        bootstrap policy's (the frozen reference) on the same prompts and seeds."""
        c, temperature = self.cfg, self._base_temperature()

        def run(st):
            cfg = st.config
            kw = dict(samples=c.probe_samples, gen_len=cfg.gen_len, steps=cfg.sample_steps, temperature=temperature,
                      top_p=cfg.top_p, remasking=cfg.remasking, reveal_window=cfg.reveal_window, seed=c.probe_seed,
                      constrain=cfg.constrained)
            if self._reference is None and st.ref_model is not None:
                self._reference = probe_distribution(probe_keys(st.ref_model, st.tokenizer, self.probe, **kw))
            return probe_keys(st.model, st.tokenizer, self.probe, **kw)

        keys = self.policy.with_state(run)
        entropy = entropy_bits(k for k in keys if k is not None)
        divergence = js_divergence(probe_distribution(keys), self._reference) if self._reference else None
        return entropy, divergence

    def _probe_healthy(self) -> bool:
        if self._last_probe is None:
            return True  # probing is off: the windows are all there is to judge
        entropy, divergence = self._last_probe
        c = self.cfg
        return entropy >= c.entropy_floor_bits and (c.divergence_ceiling is None or divergence is None
                                                    or divergence <= c.divergence_ceiling)

    # -- actions --------------------------------------------------------------------------------

    def _escalate(self, verdict: WindowVerdict, last: GRPOGroup) -> list[GuardAction]:
        why = f"{'; '.join(verdict.reasons)} for {self.cfg.consecutive_windows} windows"
        if self.base is None:
            cfg = self.policy.state.config
            self.base = {"temperature": self.policy.temperature, "entropy_coef": cfg.entropy_coef,
                         "kl_bootstrap_coef": cfg.kl_bootstrap_coef}
        c = self.cfg
        current = self._temperature()
        if self.level <= 1 and current < c.temperature_max - 1e-9:
            new = min(c.temperature_max, current + c.temperature_step)
            self.policy.temperature = new
            self.level = 1
            return [self._act("raise_temperature", f"{why}: sampling temperature {current:g} -> {new:g} "
                                                   f"(max {c.temperature_max:g})", last, value=new)]
        if self.level <= 1:
            name = c.regulariser
            if name == "kl_bootstrap" and self.policy.state.ref_model is None:
                name = "entropy"  # no frozen bootstrap copy to be close to (keep_reference=False)
            attr = REGULARISER_ATTR[name]

            def switch_on(st):
                setattr(st.config, attr, max(getattr(st.config, attr), c.regulariser_coef))

            self.policy.with_state(switch_on)
            self.level = 2
            return [self._act("regularise", f"{why}: {attr} = {c.regulariser_coef:g} in the block-local objective",
                              last, value=float(c.regulariser_coef))]
        if not c.pin:
            return []
        pinned = self._pin_newest_loadable(self.offending_blocks)
        if pinned is None:
            log.warning("collapse guard cannot pin: no healthy snapshot loads", root=str(self.snapshot_root),
                        healthy_version=self.healthy_version)
            return []
        path, version, blocks = pinned
        self._drift = deque(((v, b, r) for v, b, r in self._drift if b not in blocks), maxlen=self.cfg.drift_history)
        self.level = 3
        return [self._act("pin_blocks", f"{why}: blocks {blocks} pinned to snapshot {path.name} "
                                        f"(policy_version {version}, last healthy {self.healthy_version})",
                          last, blocks=blocks, value=float(version))]

    def _release(self, verdict: WindowVerdict, last: GRPOGroup) -> list[GuardAction]:
        base = self.base or {}
        m = verdict.metrics
        self.policy.temperature = base.get("temperature")

        def restore(st):
            st.config.entropy_coef = base.get("entropy_coef", st.config.entropy_coef)
            st.config.kl_bootstrap_coef = base.get("kl_bootstrap_coef", st.config.kl_bootstrap_coef)

        self.policy.with_state(restore)
        self.level, self.base = 0, None
        probe = "" if self._last_probe is None else f", probe entropy {self._last_probe[0]:.2f} bits"
        reason = (f"healthy for {self.healthy_run} windows (action entropy {m.action_entropy:.2f} bits, "
                  f"zero-spread share {m.zero_spread_share:.2f}{probe}): temperature back to "
                  f"{self._temperature():g}, regulariser back to its setting")
        return [self._act("release", reason, last, value=float(self._temperature()))]

    def _act(self, action: str, reason: str, last: GRPOGroup, blocks: list[int] | None = None,
             value: float = 0.0) -> GuardAction:
        version = self.policy.policy_version
        ACTIONS.labels(action).inc()
        LEVEL.set(self.level)
        TEMPERATURE.set(self._temperature())
        log.warning("collapse guard acted", action=action, reason=reason, policy_version=version)
        # the id derives from the group that closed the window: re-applying the same groups after a
        # crash re-emits the same ids, which consumers dedupe
        eid = deterministic_event_id(last.ts_event // 1_000_000, last.group_id, "guard", action, version)
        return GuardAction(event_id=eid, ts_event=last.ts_event, source="guard", key=str(version), action=action,
                           reason=reason, policy_version=version, blocks=list(blocks or []), value=float(value))

    # -- state ----------------------------------------------------------------------------------

    def _temperature(self) -> float:
        t = self.policy.temperature
        return self.policy.base_temperature if t is None else float(t)

    def _base_temperature(self) -> float:
        if self.base is not None:
            t = self.base.get("temperature")
            return self.policy.base_temperature if t is None else float(t)
        return self._temperature()

    def _export(self, v: WindowVerdict) -> None:
        m = v.metrics
        ENTROPY.set(m.action_entropy)
        GROUP_ENTROPY.set(m.mean_group_entropy)
        DISTINCT.set(m.distinct_ratio)
        ZERO_SPREAD.set(m.zero_spread_share)
        VALID.set(m.valid_share)
        if v.probe_entropy is not None:
            PROBE_ENTROPY.set(v.probe_entropy)
        if v.probe_divergence is not None:
            PROBE_DIVERGENCE.set(v.probe_divergence)

    def _persist(self) -> None:
        saved = {"level": self.level, "base": self.base, "healthy_version": self.healthy_version,
                 "temperature": self.policy.temperature}
        # under the lock: a snapshot being written copies the metadata at the same moment
        self.policy.with_state(lambda st: st.metadata.__setitem__("guard", saved))
        LEVEL.set(self.level)

    def _restore(self) -> None:
        saved = self.policy.state.metadata.get("guard")
        if not saved:
            return
        self.level = int(saved.get("level", 0))
        self.base = saved.get("base")
        self.healthy_version = saved.get("healthy_version")
        if self.level > 0 and saved.get("temperature") is not None:
            self.policy.temperature = float(saved["temperature"])
