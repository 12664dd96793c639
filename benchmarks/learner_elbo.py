"""(d) ELBO bits/char: block-local vs end-to-end at equal compute, on Python's own stdlib sources.

Equal compute = equal layer-evaluations: block-local trains one uniformly drawn block (L layers)
per step, end-to-end trains B*L layers per step, so block-local gets B times the steps (and the
schedules are stretched by B, digest pitfall 3). Bytes are tokens, so bits/token = bits/char.

    python benchmarks/learner_elbo.py                       # small CPU default
    python benchmarks/learner_elbo.py --d 768 --heads 12 --blocks 3 --layers 4 --seq 256 --batch 64 --e2e-steps 20000
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from any folder

from benchmarks.learner_common import block_local_and_e2e, stdlib_corpus, windows  # noqa: E402
from learners.model import BlockDiffusionLM  # noqa: E402
from learners.objective import block_loss, elbo_bits, make_optimizers  # noqa: E402


def train(cfg, steps, data, args, device):
    torch.manual_seed(0)
    model = BlockDiffusionLM(cfg).to(device)
    opts = make_optimizers(model, args.lr, weight_decay=0.01)
    scheds = [torch.optim.lr_scheduler.OneCycleLR(o, max_lr=args.lr, total_steps=steps, pct_start=0.05) for o in opts]
    gen = torch.Generator().manual_seed(0)
    rng = random.Random(0)
    for _ in range(steps):
        b = rng.randrange(cfg.n_blocks)
        x0 = windows(data, args.seq, args.batch, gen).to(device)
        opts[b].zero_grad(set_to_none=True)
        block_loss(model, b, x0, torch.ones_like(x0, dtype=torch.bool), gen).backward()
        torch.nn.utils.clip_grad_norm_(model.blocks[b].parameters(), 1.0)
        opts[b].step()
        for s in scheds:
            s.step() if s.optimizer is opts[b] else None
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--e2e-steps", type=int, default=80)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--corpus-bytes", type=int, default=2_000_000)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1 is fastest on a shared 2-core box)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data, where = stdlib_corpus(args.corpus_bytes)
    split = int(0.95 * len(data))
    train_data, test_data = data[:split], data[split:]
    local_cfg, e2e_cfg = block_local_and_e2e(args.d, args.heads, args.blocks, args.layers)
    gen = torch.Generator().manual_seed(123)
    test = windows(test_data, args.seq, 64, gen).to(device)
    elig = torch.ones_like(test, dtype=torch.bool)
    print(f"corpus: {where}; {len(train_data):,} train / {len(test_data):,} test bytes; device={device}")
    res = {}
    for name, cfg, steps in (("block-local", local_cfg, args.e2e_steps * args.blocks), ("end-to-end", e2e_cfg, args.e2e_steps)):
        t0 = time.perf_counter()
        model = train(cfg, steps, train_data, args, device)
        bits = elbo_bits(model, test, elig, torch.Generator().manual_seed(7), n_t=4)
        res[name] = bits
        print(f"{name:12s} params={model.num_params():,} steps={steps} time={time.perf_counter() - t0:.0f}s "
              f"test NELBO={bits:.3f} bits/char")
    print(f"ratio block-local/e2e bits/char: {res['block-local'] / res['end-to-end']:.3f}")


if __name__ == "__main__":
    main()
