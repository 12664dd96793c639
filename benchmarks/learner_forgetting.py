"""(c) Forgetting A -> B -> A: block-local vs end-to-end GRPO fine-tuning at equal compute.

Task A: market prompts "SIG" whose returns all share a sign; reward 1 when the side matches it.
Task B: prompts "ALT"; reward 1 for "flat". Both models are bootstrapped on the same grammar text
(random sides), then run GRPO (wd1) on A, then B, then A is measured again (no updates). The
end-to-end baseline is one block of B*L layers (t ~ U(0,1] for its likelihood), so each group
costs the same layer-evaluations in both. Retention = reward on A after B / reward on A after A.

    python benchmarks/learner_forgetting.py                    # small CPU default (minutes)
    python benchmarks/learner_forgetting.py --d 256 --layers 2 --groups 400
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from any folder

from benchmarks.learner_common import block_local_and_e2e  # noqa: E402
from learners.bootstrap import bootstrap  # noqa: E402
from learners.core import LearnerConfig, build_state, reset_reference, sample, step  # noqa: E402
from learners.grammar import format_market_prompt, parse_action  # noqa: E402
from schemas import GRPOGroup  # noqa: E402

ACTIONS = ("long 1 h5", "short 1 h5", "flat 0 h5")


def prompt_for(task: str, rng: random.Random) -> tuple[str, str]:
    sign = rng.choice((-1, 1))
    feats = {f"ret_{h}s": sign * rng.uniform(5, 50) for h in (1, 10, 60)}
    if task == "A":
        return format_market_prompt("SIG", feats), "long" if sign > 0 else "short"
    return format_market_prompt("ALT", feats), "flat"


def pairs(rng, n):
    return [(prompt_for(rng.choice("AB"), rng)[0], rng.choice(ACTIONS)) for _ in range(n)]


def rl(state, task, groups, rng, G, learn=True):
    rewards = []
    for g in range(groups):
        prompt, want = prompt_for(task, rng)
        comps = sample(state, prompt, n=G, seed=rng.randrange(1 << 30))
        r = [1.0 if getattr(parse_action(c), "side", None) == want else 0.0 for c in comps]
        rewards.append(sum(r) / G)
        if learn:
            m, sd = statistics.mean(r), statistics.pstdev(r)
            adv = [(x - m) / (sd + 1e-4) for x in r] if sd > 0 else [0.0] * G
            state, _ = step(state, GRPOGroup(group_id=f"{task}{g}", symbol="X", policy_version=state.policy_version,
                                             prompt=prompt, completions=comps, candidate_indices=list(range(G)),
                                             rewards=r, advantages=adv, group_size=G))
    return statistics.mean(rewards)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=32)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--boot-steps", type=int, default=300)
    ap.add_argument("--groups", type=int, default=120)
    ap.add_argument("--eval-groups", type=int, default=20)
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--kl", type=float, default=0.3, help="KL-to-bootstrap coefficient (keeps the grammar)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1 is fastest on a shared 2-core box)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    local_cfg, e2e_cfg = block_local_and_e2e(args.d, args.heads, args.blocks, args.layers)
    out = {}
    for name, mcfg in (("block-local", local_cfg), ("end-to-end", e2e_cfg)):
        steps = 12 if 12 % mcfg.n_blocks == 0 else 12 * mcfg.n_blocks
        cfg = LearnerConfig(model=mcfg, gen_len=12, sample_steps=steps, lr=args.lr, kl_bootstrap_coef=args.kl,
                            likelihood="trajectory" if steps == 12 else "elbo")
        state = build_state(cfg)
        bootstrap(state, steps=args.boot_steps, lr=3e-3, progress=False, pairs_fn=pairs)
        reset_reference(state)
        rng = random.Random(0)
        a0 = rl(state, "A", args.eval_groups, rng, args.G, learn=False)
        rl(state, "A", args.groups, rng, args.G)
        a1 = rl(state, "A", args.eval_groups, rng, args.G, learn=False)
        rl(state, "B", args.groups, rng, args.G)
        b1 = rl(state, "B", args.eval_groups, rng, args.G, learn=False)
        a2 = rl(state, "A", args.eval_groups, rng, args.G, learn=False)
        out[name] = (a0, a1, b1, a2)
        print(f"{name:12s} params={state.model.num_params():,} A before={a0:.2f} A after A={a1:.2f} "
              f"B after B={b1:.2f} A after B={a2:.2f} retention={a2 / a1 if a1 > 0.05 else float('nan'):.2f}", flush=True)
    rl_, re_ = (out[k][3] / out[k][1] if out[k][1] > 0.05 else float("nan") for k in ("block-local", "end-to-end"))
    print(f"retention ratio block-local/e2e: {rl_ / re_ if re_ > 0 else float('nan'):.2f} (nan: a model never learned A)")


if __name__ == "__main__":
    main()
