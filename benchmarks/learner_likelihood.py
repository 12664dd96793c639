"""(e) Which likelihood the GRPO step should use: the exact trajectory or the ELBO (K = 1, 2).

Measured on the verifiable market task (``learners.tasks``, rule "signal": the side the imbalance
points to wins), from one bootstrapped model (the cpu preset, the trading prior), mirror on:

1. gradient noise: for fixed groups, the step's gradient (all blocks, flattened) recomputed
   ``--repeats`` times with fresh mask draws. Reported: the relative variance across repeats,
   E||g - mean g||^2 / ||mean g||^2 (0 for the trajectory, which draws nothing), and the cosine
   of one draw's gradient with the exact trajectory gradient;
2. sample efficiency: groups until the mean reward over the last 20 groups reaches 0.9 (reward 1
   for the right side, 0 otherwise), per learner seed, capped at ``--max-groups``.

    python benchmarks/learner_likelihood.py                  # small CPU default (a few minutes)
    python benchmarks/learner_likelihood.py --seeds 0,1,2 --max-groups 600
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from learners import tasks
from learners.bootstrap import bootstrapped_state
from learners.core import LearnerConfig, block_loss, block_terms_for, learning_rows, sample, select_blocks, step
from learners.grammar import prior_pairs
from learners.snapshot import is_snapshot, load_snapshot, save_snapshot

VARIANTS = {"trajectory": {"likelihood": "trajectory"}, "elbo K=1": {"likelihood": "elbo", "mc_draws": 1},
            "elbo K=2": {"likelihood": "elbo", "mc_draws": 2}}


def bootstrapped(cache: Path, steps: int, seed: int):
    path = cache / f"likelihood-boot-{steps}-{seed}"
    if not is_snapshot(path):
        state, info = bootstrapped_state(LearnerConfig(device="cpu", seed=seed), steps=steps, progress=False,
                                         pairs_fn=prior_pairs(), parse_prompts=None)
        save_snapshot(state, path, info)
    return path


def with_variant(path: Path, seed: int, **kw):
    state = load_snapshot(path, device="cpu")
    cfg = LearnerConfig(**{**{k: getattr(state.config, k) for k in ("model", "gen_len", "sample_steps", "lr",
                                                                     "kl_bootstrap_coef", "reveal_window")},
                           "device": "cpu", "seed": seed, **kw})
    state.config = cfg
    state.generator = torch.Generator().manual_seed(seed)
    return state


def signal_group(state, i: int, rng: random.Random):
    p, im = tasks.prompt(rng)
    comps = sample(state, p, n=8, seed=10_000 + i)
    r = [max(0.0, x) for x in tasks.rewards(comps, tasks.winner("signal", im, rng))]
    return tasks.group(i, p, comps, r, state.policy_version)


def gradient(state, group) -> torch.Tensor:
    """The step's gradient for one group (no optimiser step), all blocks flattened."""
    blocks = select_blocks(state)
    rows = learning_rows(state, group)
    adv = torch.tensor(group.advantages)
    for b in blocks:
        state.optimizers[b].zero_grad(set_to_none=True)
    terms, finish = block_terms_for(state, blocks, rows, None, batched=False)
    # the reward term only (the KL's gradient is the same for every likelihood)
    reward_only = replace(state.config, kl_bootstrap_coef=0.0, entropy_coef=0.0)
    sum(block_loss(reward_only, terms[b], adv, rows.halves) for b in blocks).backward()
    if finish is not None:
        finish()
    return torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel())
                      for p in state.model.parameters()])


def noise(path: Path, groups: int, repeats: int) -> dict[str, dict[str, float]]:
    probe_state = with_variant(path, 0)
    rng = random.Random(1)
    fixed = [g for g in (signal_group(probe_state, i, rng) for i in range(4 * groups))
             if g.has_signal][:groups]
    exact = [gradient(with_variant(path, 0), g) for g in fixed]
    out = {}
    for name, kw in VARIANTS.items():
        rel, cos = [], []
        for g, ex in zip(fixed, exact):
            draws = torch.stack([gradient(with_variant(path, r, **kw), g) for r in range(repeats)])
            mean = draws.mean(0)
            rel.append(float(((draws - mean) ** 2).sum(1).mean() / (mean ** 2).sum().clamp(min=1e-30)))
            cos.append(float(torch.nn.functional.cosine_similarity(draws, ex[None], dim=1).mean()))
        out[name] = {"relative_variance": statistics.mean(rel), "cosine_with_exact": statistics.mean(cos)}
    return out


def groups_to(path: Path, seed: int, kw: dict, target: float, max_groups: int) -> int | None:
    state = with_variant(path, seed, **kw)
    rng = random.Random(100 + seed)
    hist = []
    for i in range(max_groups):
        g = signal_group(state, i, rng)
        hist.append(sum(g.rewards) / len(g.rewards))
        if len(hist) >= 20 and statistics.mean(hist[-20:]) >= target:
            return i + 1
        state, _ = step(state, g)
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0", help="learner seeds for the sample-efficiency runs")
    ap.add_argument("--max-groups", type=int, default=300)
    ap.add_argument("--noise-groups", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--bootstrap-steps", type=int, default=400)
    ap.add_argument("--cache", type=Path, default=Path(".eigenloop/bench-cache"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    args.cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    path = bootstrapped(args.cache, args.bootstrap_steps, 0)
    print("gradient noise across repeats of the same group (mirror on, cpu preset):")
    for name, row in noise(path, args.noise_groups, args.repeats).items():
        print(f"  {name:<11} relative variance {row['relative_variance']:.3f}   "
              f"cosine with the exact gradient {row['cosine_with_exact']:+.3f}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    print(f"groups until the last-20 mean reward reaches 0.9 (cap {args.max_groups}), seeds {seeds}:")
    for name, kw in VARIANTS.items():
        got = [groups_to(path, s, kw, 0.9, args.max_groups) for s in seeds]
        shown = ", ".join("not reached" if g is None else str(g) for g in got)
        print(f"  {name:<11} {shown}")
    print(f"wall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
