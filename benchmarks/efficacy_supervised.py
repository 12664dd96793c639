"""Can this model read the signal at all? A supervised check with the efficacy model and prompts.

Before blaming the RL dynamics, train the same bootstrapped model (the cpu preset, the trading
prior) by plain maximum likelihood on each training decision's winning side (the side whose
unit paper fill was better: "long 1 h5" or "short 1 h5"), with the exact trajectory likelihood,
then measure on the held-out decisions how often the side the model prefers (P(long) vs
P(short), exact) is the side that won. The yardstick is the imbalance sign's own agreement on
the same decisions; the learned policy can do no better than what the model can represent.

Input: the ``decisions-fee0-seed<s>.jsonl`` records of an efficacy run (prompts and fills are the
market's, whatever the policy did).

    python benchmarks/efficacy_supervised.py out/efficacy/decisions-fee0-seed0.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from learners.bootstrap import bootstrapped_state
from learners.core import LearnerConfig
from learners.grammar import prior_pairs
from learners.grpo import encode_group
from learners.probe import side_probabilities
from learners.trajectory import trajectory_block_terms


def examples(path: Path) -> tuple[list[tuple[str, str, float]], list[tuple[str, str, float]]]:
    """(train, heldout): (prompt, winning side, imbalance) per decision whose long and short differ."""
    train, held = [], []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        long_, short = r["fills"]["long"], r["fills"]["short"]
        if long_ == short:
            continue
        row = (r["prompt"], "long" if long_ > short else "short", float(r["imbalance"]))
        (held if r["phase"] == "heldout" else train if r["phase"] == "train1" else []).append(row)
    return train, held


def agreement(state, rows) -> tuple[float, float]:
    """(model, imbalance sign): share of decisions whose preferred side won."""
    model = sign = 0
    for prompt, win, im in rows:
        p = side_probabilities(state, prompt)
        model += ("long" if p["long"] > p["short"] else "short") == win
        sign += ("long" if im > 0 else "short") == win
    return model / len(rows), sign / len(rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("records", type=Path)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--bootstrap-steps", type=int, default=400)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    train, held = examples(args.records)
    state, _ = bootstrapped_state(LearnerConfig(device="cpu"), steps=args.bootstrap_steps, progress=False,
                                  pairs_fn=prior_pairs(), parse_prompts=None)
    before = agreement(state, held)
    tok, blocks = state.tokenizer, list(range(state.config.model.n_blocks))
    opts = [torch.optim.AdamW(b.parameters(), lr=args.lr) for b in state.model.blocks]
    rng = random.Random(0)
    for epoch in range(args.epochs):
        rng.shuffle(train)
        for i in range(0, len(train), args.batch):
            batch = train[i:i + args.batch]
            loss = 0.0
            for prompt, win, _ in batch:  # one prompt per row: prompts differ in length
                x0, _ = encode_group(tok, prompt, [f"{win} 1 h5"], state.config.gen_len)
                terms = trajectory_block_terms(state.model, blocks, x0, x0.size(1) - state.config.gen_len,
                                               (tok.pad_token_id, tok.bos_token_id), tok.eos_token_id)
                loss = loss - sum(t["share"].sum() for t in terms.values())
            for o in opts:
                o.zero_grad(set_to_none=True)
            (loss / len(batch)).backward()
            for o in opts:
                o.step()
        model, sign = agreement(state, held)
        print(f"epoch {epoch + 1}: held-out agreement model {model:.3f}, imbalance sign {sign:.3f} "
              f"({len(held)} decisions)", flush=True)
    train_model, train_sign = agreement(state, train[:500])
    print(f"before training: model {before[0]:.3f}; training decisions: model {train_model:.3f}, "
          f"imbalance sign {train_sign:.3f}; {len(train)} train / {len(held)} held out; "
          f"wall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
