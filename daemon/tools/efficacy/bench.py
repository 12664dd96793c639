"""Orchestration: a bootstrap per seed, one learner per (fee, seed), phases in order, then the report.

Phases of one fee run: ``train1`` .. ``train<epochs>`` (the training captures merged in event
time, one pass each) then ``heldout`` (the held-out captures, merged). The learner keeps
learning in every phase, the held-out one included: each decision is taken before its own
outcome exists, so the held-out figures are prequential, never fitted after the fact.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

from daemon.tools.efficacy.captures import book_paths, capture_of, discover, load, merged
from daemon.tools.efficacy.config import EfficacyConfig
from daemon.tools.efficacy.driver import LoopDriver

Log = Callable[[str], None]


def _quiet(msg: str) -> None:
    """Default progress sink: say nothing."""


def ensure_bootstrap(cfg: EfficacyConfig, out_dir: Path, log: Log = _quiet) -> tuple[Path, dict]:
    """Bootstrapped initial weights (grammar only, no trading opinion), cached by what shapes them."""
    from learners.bootstrap import bootstrapped_state
    from learners.core import LearnerConfig
    from learners.snapshot import is_snapshot, read_snapshot_info, save_snapshot

    from daemon.tools.efficacy.prior import pairs_for, parse_prompts

    root = cfg.cache_dir if cfg.cache_dir is not None else out_dir
    path = Path(root) / f"bootstrap-{cfg.bootstrap_key()}"
    if is_snapshot(path):
        log(f"bootstrap: cached at {path}")
        return path, read_snapshot_info(path)["metadata"]
    log(f"bootstrap: {cfg.bootstrap_steps} grammar steps (cached afterwards at {path})")
    t = time.perf_counter()
    state, info = bootstrapped_state(LearnerConfig(**cfg.learner_dict()), steps=cfg.bootstrap_steps,
                                     progress=False, pairs_fn=pairs_for(cfg.bootstrap_actions),
                                     parse_prompts=parse_prompts())
    info = {**info, "bootstrap_s": round(time.perf_counter() - t, 1)}
    save_snapshot(state, path, info)
    return path, read_snapshot_info(path)["metadata"]


def initial_state(cfg: EfficacyConfig, weights: Path):
    """A fresh learner with the run's knobs (lr, temperature) and the bootstrapped weights."""
    from safetensors.torch import load_file

    from learners.core import LearnerConfig, build_state, reset_reference

    state = build_state(LearnerConfig(**cfg.learner_dict()))
    state.model.load_state_dict(load_file(str(weights / "model.safetensors"), device=str(state.device)))
    reset_reference(state)
    return state


def run_fee(cfg: EfficacyConfig, fee_bps: float, weights: Path, log: Log = _quiet,
            records_path: Path | None = None) -> dict[str, Any]:
    """One learner (seeded by ``cfg.seed``) through every phase at one fee setting; returns its
    decision records (and appends each to ``records_path`` as it closes, when given)."""
    import torch

    from daemon.service.policy import ResidentPolicy
    from schemas.settings import ActorSettings, GroupConfig, RewardConfig

    torch.set_num_threads(1)  # tiny matrices: one thread is fastest, and two runs share 2 cores
    torch.use_deterministic_algorithms(True)
    t_start = time.perf_counter()
    caps = discover(cfg.captures, cfg.include, cfg.holdout)
    events = {c.name: load(c) for c in caps}
    load_s = time.perf_counter() - t_start
    reward = RewardConfig(latency_ms=cfg.latency_ms, fee_bps=fee_bps, slippage_model="none", kind=cfg.reward_kind)
    groups = GroupConfig(group_size=cfg.group_size, scale_rewards=cfg.scale_rewards)
    actor = ActorSettings(cadence_s=cfg.cadence_s, horizon_s=cfg.horizon_s, choose=cfg.choose,
                          temperature=cfg.temperature)
    policy = ResidentPolicy(initial_state(cfg, weights))
    sink_fh = open(records_path, "w") if records_path is not None else None

    def sink(record: dict[str, Any]) -> None:
        if sink_fh is not None:
            sink_fh.write(json.dumps(record) + "\n")
            sink_fh.flush()

    driver = LoopDriver(policy, reward, groups, actor, seed=cfg.seed,
                        log=lambda m: log(f"fee {fee_bps:g}: {m}"), sink=sink, probe_every=cfg.probe_every)
    train = [c for c in caps if not c.held_out]
    held = [c for c in caps if c.held_out]
    phases = [(f"train{e + 1}", train) for e in range(cfg.epochs if train else 0)]
    if held:
        phases.append(("heldout", held))
    records: list[dict[str, Any]] = []
    phase_info = []
    for name, group in phases:
        t = time.perf_counter()
        books = book_paths(group, events)
        v0 = policy.policy_version
        recs = asyncio.run(driver.run_phase(
            name, merged(events[c.name] for c in group), books,
            lambda sym, t0, g=group: capture_of(g, sym, t0), cfg.max_decisions))
        records.extend(recs)
        phase_info.append({"phase": name, "captures": [c.name for c in group], "decisions": len(recs),
                           "policy_version_start": v0, "policy_version_end": policy.policy_version,
                           "seconds": round(time.perf_counter() - t, 1)})
        log(f"fee {fee_bps:g}: {name} {len(recs)} decisions, policy_version {v0} -> {policy.policy_version}, "
            f"{phase_info[-1]['seconds']} s")
    if sink_fh is not None:
        sink_fh.close()
    return {
        "fee_bps": fee_bps, "seed": cfg.seed, "records": records, "phases": phase_info,
        "captures": [{"name": c.name, "market": c.market, "exchange": c.exchange, "symbol": c.symbol,
                      "held_out": c.held_out, "first_ns": c.first_ns, "last_ns": c.last_ns} for c in caps],
        "timing": {"load_s": round(load_s, 1), "sample_s": round(driver.sample_s, 1),
                   "learn_s": round(driver.step_s, 1), "total_s": round(time.perf_counter() - t_start, 1)},
        "probes": driver.probes,
        "unclosed_groups": driver.unclosed, "final_policy_version": policy.policy_version,
        "skipped_groups": policy.state.skipped_groups,
    }


def reference_variants(cfg: EfficacyConfig) -> dict[str, Any] | None:
    """Baselines on the reference capture under other readings of "a decision every 2 s"."""
    from daemon.tools.efficacy.reference import decision_variants

    caps = [c for c in discover(cfg.captures, cfg.include, cfg.holdout) if c.name == cfg.reference_capture]
    if not caps:
        return None
    return decision_variants(caps[0], cfg.fees_bps, cadence_s=cfg.cadence_s, horizon_s=cfg.horizon_s,
                             latency_ms=cfg.latency_ms, seed=cfg.seed)


def decisions_path(out_dir: Path, fee: float, seed: int) -> Path:
    return out_dir / f"decisions-fee{fee:g}-seed{seed}.jsonl"


def run_job(args: tuple) -> dict[str, Any]:
    """One (fee, seed) run in a worker process (its progress goes to stdout, tagged)."""
    cfg, fee, weights, out_dir = args
    return run_fee(cfg, fee, weights, log=lambda m: print(f"[efficacy] seed {cfg.seed} {m}", flush=True),
                   records_path=decisions_path(out_dir, fee, cfg.seed))


def run_efficacy(cfg: EfficacyConfig, out_dir: Path, log: Log = _quiet) -> dict[str, Any]:
    """The whole benchmark: one run per (fee, seed); writes ``summary.json``, ``summary.md``,
    ``learning_curve.png`` and ``decisions-fee<f>-seed<s>.jsonl`` under ``out_dir``; returns the
    summary."""
    from daemon.tools.efficacy.markdown import render_markdown
    from daemon.tools.efficacy.plots import write_curve
    from daemon.tools.efficacy.report import summarise

    import torch

    torch.set_num_threads(1)  # oversubscribed threads made the bootstrap 3x slower on 2 shared cores
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # each seed its own bootstrap (the cache key holds the seed), made here, before the workers,
    # so that two fees of one seed never race to write the same cache entry
    boots = {seed: ensure_bootstrap(cfg.for_seed(seed), out_dir, log) for seed in cfg.seeds}
    job_args = [(cfg.for_seed(seed), fee, boots[seed][0], out_dir) for fee in cfg.fees_bps for seed in cfg.seeds]
    jobs = max(1, min(cfg.jobs, len(job_args)))
    if jobs > 1:
        # spawn, not fork: the parent has torch's thread pools up after the bootstrap
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            runs = list(pool.map(run_job, job_args))
    else:
        runs = [run_fee(c, fee, w, lambda m, s=c.seed: log(f"seed {s} {m}"), decisions_path(d, fee, c.seed))
                for c, fee, w, d in job_args]
    summary = summarise(cfg, runs)
    summary["reference_variants"] = reference_variants(cfg.for_seed(cfg.seeds[0]))
    summary["bootstrap"] = {str(seed): {"path": str(path), **info} for seed, (path, info) in boots.items()}
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    summary["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "processor": platform.processor() or platform.machine(), "python": platform.python_version()}
    summary["outputs"] = {"png": str(out_dir / "learning_curve.png"), "json": str(out_dir / "summary.json"),
                          "md": str(out_dir / "summary.md"),
                          "decisions": [str(decisions_path(out_dir, r["fee_bps"], r["seed"])) for r in runs]}
    write_curve(runs, out_dir / "learning_curve.png")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (out_dir / "summary.md").write_text(render_markdown(summary))
    return summary
