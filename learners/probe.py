"""The exact side probe: P(long), P(short), P(flat) for a prompt, read from the model itself.

Under the sequential sampler (one position per step, left to right) the side word is the first
thing written, so the probability that the sampler writes ``long `` is the product of its bytes'
step probabilities, each under the block that runs that step, at the sampler's temperature and
top-p. That is the policy's answer with no sampling noise: a sampled share with one shared seed
can print identical shares for prompts whose probabilities differ.

``invalid`` is the rest: completions that start with none of the three side words.
"""

from __future__ import annotations

import math

import torch

from learners.core import LearnerState
from learners.grammar import format_market_prompt
from learners.objective import autocast_for
from learners.sampler import prompt_ids, top_p_filter
from learners.trajectory import step_blocks, step_times

SIDE_WORDS = {"long": "long ", "short": "short ", "flat": "flat "}


@torch.no_grad()
def side_probabilities(state: LearnerState, prompt: str, temperature: float | None = None,
                       top_p: float | None = None) -> dict[str, float]:
    """{"long", "short", "flat", "invalid"} -> probability, exact for the sequential sampler."""
    cfg, tok, model = state.config, state.tokenizer, state.model
    if not cfg.sequential:
        raise ValueError("the exact probe needs the sequential sampler (reveal_window=1, sample_steps=gen_len)")
    temperature = cfg.temperature if temperature is None else temperature
    top_p = cfg.top_p if top_p is None else top_p
    device = state.device
    L = cfg.gen_len
    p_ids = prompt_ids(tok, prompt)
    P = len(p_ids)
    owner, times = step_blocks(model, L), step_times(L)
    # one row per (side word, step): the prompt, the word's first s bytes, then [MASK]s
    rows, keys = [], []
    for side, word in SIDE_WORDS.items():
        ids = tok.encode(word)[:L]
        for s in range(len(ids)):
            rows.append(p_ids + ids[:s] + [tok.mask_token_id] * (L - s))
            keys.append((side, s, ids[s]))
    x = torch.tensor(rows, dtype=torch.long, device=device)
    step_p = [0.0] * len(rows)  # the probability of each (word, step) byte
    was_training = model.training
    model.eval()
    for b in sorted({owner[s] for _, s, _ in keys}):
        idx = [i for i, (_, s, _) in enumerate(keys) if owner[s] == b]
        t = torch.tensor([times[keys[i][1]] for i in idx], device=device)
        pos = torch.tensor([P + keys[i][1] for i in idx], device=device)
        with autocast_for(device):
            logits = model.blocks[b](x[idx], t)[torch.arange(len(idx), device=device), pos].float()
        for sid in (tok.mask_token_id, tok.pad_token_id, tok.bos_token_id):
            logits[:, sid] = float("-inf")  # the sampler never proposes these
        probs = top_p_filter((logits / temperature).softmax(-1), top_p) if temperature > 0 else None
        for j, i in enumerate(idx):
            target = keys[i][2]
            if probs is None:  # greedy: the word is written only if every byte is the argmax
                p = 1.0 if int(logits[j].argmax()) == target else 0.0
            else:
                p = float(probs[j, target])
            step_p[i] = p
    model.train(was_training)
    out = {side: math.prod(step_p[i] for i, k in enumerate(keys) if k[0] == side) for side in SIDE_WORDS}
    out["invalid"] = max(0.0, 1.0 - sum(out.values()))
    return out


# The fixed probe set: one market state, three imbalances. Everything but the imbalance is neutral
# (zero returns, a typical spread and volume), so a difference between the answers can only come
# from the imbalance: the policy reads its input, or it does not.
PROBE_IMBALANCES = (-0.8, 0.0, 0.8)


def probe_prompt(imbalance: float, symbol: str = "BTCUSDT") -> str:
    return format_market_prompt(symbol, {"ret_1s": 0.0, "ret_10s": 0.0, "ret_60s": 0.0, "spread_bps": 0.05,
                                         "imbalance": imbalance, "volume": 5e5})


def imbalance_probe(state: LearnerState, temperature: float | None = None) -> dict[str, dict[str, float]]:
    """{"im=-0.8": {"long": p, ...}, "im=+0.0": ..., "im=+0.8": ...}: exact side probabilities."""
    return {f"im={im:+.1f}": side_probabilities(state, probe_prompt(im), temperature=temperature)
            for im in PROBE_IMBALANCES}


def imbalance_gap(probe: dict[str, dict[str, float]]) -> float:
    """[P(long) - P(short)] at the highest probed imbalance minus the same at the lowest: > 0 when
    the policy leans long as the book leans to the bid, 0 when it ignores the imbalance."""
    hi, lo = probe[f"im={max(PROBE_IMBALANCES):+.1f}"], probe[f"im={min(PROBE_IMBALANCES):+.1f}"]
    return (hi["long"] - hi["short"]) - (lo["long"] - lo["short"])
