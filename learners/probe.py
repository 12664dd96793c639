"""The exact side probe: P(long), P(short), P(flat) for a prompt, read from the model itself.

Under the sequential sampler (one position per step, left to right) the side word is the first
thing written, so the probability that the sampler writes ``long `` is the product of its bytes'
step probabilities, each under the block that runs that step, at the sampler's temperature and
top-p. That is the policy's answer with no sampling noise: a sampled share with one shared seed
can print identical shares for prompts whose probabilities differ.

``invalid`` is the rest: completions that start with none of the three side words (zero when the
learner samples from the action grammar, ``learners.constraint``).
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

import torch

from learners.core import LearnerState, constraint_for
from learners.grammar import PRIOR_SYMBOLS, format_market_prompt, market_scale_features
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
    trie = constraint_for(state, prompt)
    # one row per (side word, step): the prompt, the word's first s bytes, then [MASK]s
    rows, keys, allowed = [], [], []
    for side, word in SIDE_WORDS.items():
        ids = tok.encode(word)[:L]
        for s in range(len(ids)):
            rows.append(p_ids + ids[:s] + [tok.mask_token_id] * (L - s))
            keys.append((side, s, ids[s]))
            allowed.append(None if trie is None else trie.mask(ids[:s]))
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
        for j, i in enumerate(idx):
            if allowed[i] is not None:  # the grammar constraint: renormalised over what may follow
                logits[j] = logits[j].masked_fill(~allowed[i].to(device), float("-inf"))
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


# The fixed probe set: PROBE_STATES market states at the recorded scale (spread, volume and
# returns drawn once, from a fixed seed), each written with every probed imbalance. The answers
# are averaged over the states, so a difference between imbalances can only come from the
# imbalance, and no single odd state decides it: a lone "neutral" state with every return zero
# is a prompt the market almost never writes (r60=0), and the policy's answer to it said little
# about its answers to the prompts it trades on.
PROBE_IMBALANCES = (-0.8, 0.0, 0.8)
PROBE_STATES = 8
PROBE_SEED = 20240808


def probe_prompts(imbalance: float, n: int = PROBE_STATES, seed: int = PROBE_SEED) -> list[str]:
    """The probe's market states, each with the given imbalance; the same prompts every time."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        features = replace(market_scale_features(rng), imbalance=imbalance)
        out.append(format_market_prompt(PRIOR_SYMBOLS[i % len(PRIOR_SYMBOLS)], features))
    return out


def mean_side_probabilities(state: LearnerState, prompts: list[str],
                            temperature: float | None = None) -> dict[str, float]:
    answers = [side_probabilities(state, p, temperature=temperature) for p in prompts]
    return {k: sum(a[k] for a in answers) / len(answers) for k in answers[0]}


def imbalance_probe(state: LearnerState, temperature: float | None = None) -> dict[str, dict[str, float]]:
    """{"im=-0.8": {"long": p, ...}, "im=+0.0": ..., "im=+0.8": ...}: exact side probabilities,
    averaged over the probe's market states."""
    return {f"im={im:+.1f}": mean_side_probabilities(state, probe_prompts(im), temperature=temperature)
            for im in PROBE_IMBALANCES}


def imbalance_gap(probe: dict[str, dict[str, float]]) -> float:
    """[P(long) - P(short)] at the highest probed imbalance minus the same at the lowest: > 0 when
    the policy leans long as the book leans to the bid, 0 when it ignores the imbalance."""
    hi, lo = probe[f"im={max(PROBE_IMBALANCES):+.1f}"], probe[f"im={min(PROBE_IMBALANCES):+.1f}"]
    return (hi["long"] - hi["short"]) - (lo["long"] - lo["short"])
