"""(a) Block-local vs end-to-end training: tokens/s and peak memory, as ratios.

Block-local trains one block per step (DiffusionBlocks' uniform block sampling), so a step holds
one block's activations, gradients and Adam moments; end-to-end holds all of them. Same width
and total depth. Memory: on CUDA torch.cuda.max_memory_allocated; on CPU, parameters + grads +
Adam moments of the trained parameters + the bytes autograd saves for backward (measured with
saved_tensors_hooks), since process RSS is too coarse for this.

    python benchmarks/learner_memory_throughput.py                      # small CPU default
    python benchmarks/learner_memory_throughput.py --d 1024 --heads 16 --blocks 4 --layers 6 --seq 512 --batch 32
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from any folder

from benchmarks.learner_common import block_local_and_e2e, saved_activation_bytes  # noqa: E402
from learners.model import BlockDiffusionLM  # noqa: E402
from learners.objective import block_loss, make_optimizers  # noqa: E402


def run(cfg, args, device, one_block: bool):
    torch.manual_seed(0)
    model = BlockDiffusionLM(cfg).to(device)
    opts = make_optimizers(model, 3e-4)
    gen = torch.Generator().manual_seed(0)
    rng = random.Random(0)
    x0 = torch.randint(0, 256, (args.batch, args.seq), device=device)
    elig = torch.ones_like(x0, dtype=torch.bool)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    act = 0
    times = []
    for i in range(args.warmup + args.steps):
        b = rng.randrange(cfg.n_blocks) if one_block else 0
        t0 = time.perf_counter()
        with saved_activation_bytes() as saved:
            loss = block_loss(model, b, x0, elig, gen)
        opts[b].zero_grad(set_to_none=True)
        loss.backward()
        opts[b].step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
        act = max(act, saved["bytes"])
    blk_params = sum(p.numel() * p.element_size() for p in model.blocks[0].parameters())
    all_params = sum(p.numel() * p.element_size() for p in model.parameters())
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = all_params + 3 * blk_params + act  # weights + grad + 2 Adam moments of the trained block
    tok_s = args.batch * args.seq / (sum(times) / len(times))
    return {"params": model.num_params(), "tok_s": tok_s, "peak_bytes": peak, "act_bytes": act}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--layers", type=int, default=2, help="layers per block")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1 is fastest on a shared 2-core box)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    local_cfg, e2e_cfg = block_local_and_e2e(args.d, args.heads, args.blocks, args.layers)
    local = run(local_cfg, args, device, one_block=True)
    e2e = run(e2e_cfg, args, device, one_block=False)
    how = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "params+grad+Adam of trained block+saved activations (CPU estimate)"
    print(f"device={device} memory={how}")
    for name, r in (("block-local", local), ("end-to-end", e2e)):
        print(f"{name:12s} params={r['params']:,} tokens/s={r['tok_s']:.0f} peak={r['peak_bytes'] / 2**20:.1f} MiB "
              f"activations={r['act_bytes'] / 2**20:.1f} MiB")
    print(f"ratio block-local/e2e: params {local['params'] / e2e['params']:.2f}  tokens/s {local['tok_s'] / e2e['tok_s']:.2f}  "
          f"peak memory {local['peak_bytes'] / e2e['peak_bytes']:.2f}  activations {local['act_bytes'] / e2e['act_bytes']:.2f}")


if __name__ == "__main__":
    main()
