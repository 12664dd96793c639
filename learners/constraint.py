"""The action grammar as a byte trie: the sequential sampler writes only actions that parse.

An unconstrained byte model can write ``llat 1 h5`` or ``shogt1 h5``. Such a candidate earns the
invalid penalty (-50 bps), which dwarfs every market reward in its group, so the group teaches
spelling instead of the side, and a policy whose grammar erodes under reward noise never trades
again. The grammar is finite at the sizes, horizons and stops the daemon trades
(``learners.grammar``), so it fits in a trie over token ids: at each sequential step only the
bytes that continue some action are allowed, and once an action is complete only [EOS] is.

The constrained sampler draws from the model's distribution renormalised over the allowed bytes.
Its likelihood is as exact as the unconstrained one: the same product over steps of the same
renormalised probabilities (``learners.trajectory``). A byte the grammar forces has probability 1
and contributes nothing, neither to the reward term nor to the KL, so the learner spends every
group on the choices: the side, then the size and the horizon.

A completion that is not in the trie (a log written before the constraint, or by another sampler)
is scored unconstrained from the byte where it leaves the grammar on, so its likelihood stays
finite.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from learners.grammar import (HORIZONS, SIZES, STOPS, format_market_action, format_social_action,
                              is_market_prompt)
from learners.tokenizer import ByteTokenizer
from schemas import MarketActionSpec, SocialActionSpec


class ActionTrie:
    """The allowed completions, each as ``gen_len`` token ids ([EOS]-filled), keyed by prefix."""

    def __init__(self, texts: list[str], tokenizer, gen_len: int):
        self.gen_len = gen_len
        self.vocab_size = tokenizer.vocab_size
        self.actions: list[str] = []
        # prefix -> (V,) bool: the ids that may follow it; built once, shared by the sampler, the
        # likelihood and the probe
        self._masks: dict[tuple[int, ...], torch.Tensor] = {}
        for text in texts:
            ids = tokenizer.encode(text)
            if not ids or len(ids) > gen_len:
                continue  # does not fit the completion budget: the sampler could never finish it
            self.actions.append(text)
            row = ids + [tokenizer.eos_token_id] * (gen_len - len(ids))
            for s in range(gen_len):
                prefix = tuple(row[:s])
                if prefix not in self._masks:
                    self._masks[prefix] = torch.zeros(self.vocab_size, dtype=torch.bool)
                self._masks[prefix][row[s]] = True
        if not self.actions:
            raise ValueError(f"no action fits gen_len={gen_len}")

    def mask(self, prefix) -> torch.Tensor | None:
        """(V,) bool: the ids that may follow ``prefix``; None when the prefix left the grammar."""
        return self._masks.get(tuple(prefix))

    def next_mask(self, prefixes: torch.Tensor) -> torch.Tensor:
        """(n, V) bool for the next position of each row of ``prefixes`` (n, s); all True where
        a row's prefix is not in the trie."""
        free = torch.ones(self.vocab_size, dtype=torch.bool)
        rows = [self.mask(row) for row in prefixes.tolist()]
        return torch.stack([free if m is None else m for m in rows]).to(prefixes.device)

    def step_masks(self, completions: torch.Tensor) -> torch.Tensor:
        """(N, L, V) bool: what the constrained sampler allowed at each step of each completion."""
        N, L = completions.shape
        out = torch.ones((N, L, self.vocab_size), dtype=torch.bool)
        for i, row in enumerate(completions.tolist()):
            for s in range(L):
                m = self.mask(row[:s])
                if m is None or not m[row[s]]:
                    break  # the row leaves the grammar here: unconstrained from this step on
                out[i, s] = m
        return out.to(completions.device)


def market_actions() -> list[str]:
    """Every market action at the traded sizes, horizons and stops (flat: size 0, no stop)."""
    out = []
    for side in ("long", "short"):
        for size in SIZES[1:]:
            for h in HORIZONS:
                for stop in (None, *STOPS):
                    out.append(format_market_action(MarketActionSpec(side=side, size=size, horizon_s=float(h),
                                                                     stop_bps=float(stop) if stop else None)))
    out += [format_market_action(MarketActionSpec(side="flat", size=0.0, horizon_s=float(h))) for h in HORIZONS]
    return out


def social_actions(n_choices: int) -> list[str]:
    return [format_social_action(SocialActionSpec(pick=i, horizon_s=float(h)))
            for i in range(n_choices) for h in HORIZONS]


def social_choices(prompt: str) -> int | None:
    """The number of posts a social prompt lists (``S h60 0:..|1:..>``), None if it is not one."""
    if not prompt.startswith("S "):
        return None
    _, _, body = prompt.partition(" ")
    _, _, posts = body.partition(" ")
    return posts.count("|") + 1 if posts else None


def _texts(kind: str, n_choices: int) -> list[str]:
    return market_actions() if kind == "market" else social_actions(n_choices)


@lru_cache(maxsize=64)
def _byte_trie(kind: str, n_choices: int, gen_len: int) -> ActionTrie:
    return ActionTrie(_texts(kind, n_choices), ByteTokenizer(), gen_len)


def action_trie(prompt: str, tokenizer, gen_len: int) -> ActionTrie | None:
    """The trie of the actions that answer ``prompt``; None for a prompt of no known task."""
    if is_market_prompt(prompt):
        kind, k = "market", 0
    else:
        kind, k = "social", social_choices(prompt) or 0
        if not k:
            return None
    if isinstance(tokenizer, ByteTokenizer):  # the native model's: one trie per shape, built once
        return _byte_trie(kind, k, gen_len)
    return ActionTrie(_texts(kind, k), tokenizer, gen_len)
