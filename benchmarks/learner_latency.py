"""(b) Group -> weights latency of ``learners.core.step`` for G=8: p50 / p99.

    python benchmarks/learner_latency.py                       # the cpu preset (what eigenloop run uses)
    python benchmarks/learner_latency.py --preset gpu --groups 200
    python benchmarks/learner_latency.py --d 1024 --heads 16 --layers 6 --groups 200   # sizes on top of a preset
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from learners.core import LearnerConfig, build_state, step
from learners.grammar import random_market_example
from learners.presets import PRESETS, preset_kwargs
from schemas import GRPOGroup


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="cpu", choices=[*PRESETS, "auto"])
    ap.add_argument("--d", type=int, default=None, help="width (default: the preset's)")
    ap.add_argument("--heads", type=int, default=None)
    ap.add_argument("--blocks", type=int, default=None)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--groups", type=int, default=30)
    ap.add_argument("--selection", default="all", choices=["all", "round_robin", "topk_loss"])
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1 is fastest on a shared 2-core box)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = {k: v for k, v in (("n_embd", args.d), ("n_head", args.heads), ("n_blocks", args.blocks),
                                ("n_layer", args.layers)) if v is not None}
    cfg = LearnerConfig(**preset_kwargs(args.preset, {"model": sizes, "block_selection": args.selection}))
    state = build_state(cfg)
    rng = random.Random(0)
    lat = []
    for i in range(args.groups + 3):
        prompt, _ = random_market_example(rng)
        comps = [rng.choice(("long 1 h5", "short 1 h5", "flat 0 h5")) for _ in range(args.G)]
        adv = [rng.gauss(0, 1) for _ in range(args.G)]
        g = GRPOGroup(group_id=f"g{i}", symbol="X", policy_version=0, prompt=prompt, completions=comps,
                      candidate_indices=list(range(args.G)), rewards=adv, advantages=adv, group_size=args.G)
        t0 = time.perf_counter()
        state, _ = step(state, g)
        if state.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            lat.append((time.perf_counter() - t0) * 1e3)
    lat.sort()
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    print(f"device={state.device} params={state.model.num_params():,} G={args.G} blocks/update="
          f"{cfg.model.n_blocks if args.selection == 'all' else 1} groups={len(lat)} preset={args.preset} "
          f"likelihood={cfg.likelihood} mirror={cfg.mirror}")
    print(f"group->weights latency p50={statistics.median(lat):.1f} ms p99={p99:.1f} ms")


if __name__ == "__main__":
    main()
