"""Low-confidence-remasking sampler for a fixed prompt, G candidates in one batch.

Starts with prompt + [MASK]*L and walks t from 1 to 0 in S steps (t_i = 1 - i/S). Step i runs
the block that owns the interval [t_{i+1}, t_i); with S a multiple of B every interval sits
inside one block. At each step every masked position gets a proposal (temperature, top-p), and
the most confident proposals are revealed so that round(L * t_{i+1}) positions stay masked
(LLaDA's low-confidence remasking). All randomness comes from one seeded torch.Generator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from learners.model import BlockDiffusionLM
from learners.objective import autocast_for

if TYPE_CHECKING:
    from learners.constraint import ActionTrie

# logits_fn(x (G,T), t, block) -> logits (G,T,V); block is None for models without blocks
LogitsFn = Callable[[torch.Tensor, float, "int | None"], torch.Tensor]


def native_logits_fn(model: BlockDiffusionLM) -> LogitsFn:
    def fn(x, t, block):
        with autocast_for(x.device):
            return model(x, t, block=block)
    return fn


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the tail beyond cumulative mass top_p (the most likely token always survives)."""
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)
    drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    out = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return out / out.sum(-1, keepdim=True)


@torch.no_grad()
def sample_ids(logits_fn: LogitsFn, prompt_ids: list[int], *, n: int, gen_len: int, steps: int,
               mask_id: int, n_blocks: int | None = None, temperature: float = 1.0, top_p: float = 1.0,
               seed: int = 0, suppress_ids: tuple[int, ...] = (), device="cpu",
               remasking: str = "low_confidence", reveal_window: int | None = None,
               constraint: "ActionTrie | None" = None) -> torch.Tensor:
    """Generate ``n`` completions of ``gen_len`` ids; returns a (n, gen_len) LongTensor.

    ``remasking``: "low_confidence" reveals the most confident proposals (LLaDA); "random" reveals
    random masked positions (MDLM's ancestral order), which keeps more of the model's diversity.
    ``reveal_window`` (LLaDA's semi-autoregressive block length, as a sliding window): only the
    leftmost ``reveal_window`` masked positions may be revealed, so early fields (the side of a
    trade) are decided from their marginal instead of being forced by confident later tokens.
    ``n_blocks`` (when the model has blocks) requires ``steps`` to be a multiple of it, so that
    no step straddles two blocks. ``suppress_ids`` are never proposed (e.g. [PAD], [BOS]).
    ``constraint`` (an ``ActionTrie``; sequential sampler only: one position per step, left to
    right) limits each step to the bytes that continue an action of the grammar.
    """
    if constraint is not None and not (reveal_window == 1 and steps == gen_len):
        raise ValueError("a grammar constraint needs the sequential sampler (reveal_window=1, steps=gen_len)")
    if n_blocks and steps % n_blocks:
        raise ValueError(f"steps={steps} must be a multiple of n_blocks={n_blocks} so steps align with blocks")
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    P = len(prompt_ids)
    x = torch.full((n, P + gen_len), mask_id, dtype=torch.long, device=device)
    x[:, :P] = torch.tensor(prompt_ids, dtype=torch.long, device=device)
    still_masked = [round(gen_len * (1 - i / steps)) for i in range(steps + 1)]
    for i in range(steps):
        t_hi, t_lo = 1 - i / steps, 1 - (i + 1) / steps
        block = block_of_t_n(n_blocks, 0.5 * (t_hi + t_lo))
        logits = logits_fn(x, t_hi, block)[:, P:].float()  # (n, L, V)
        for sid in (mask_id, *suppress_ids):
            logits[..., sid] = float("-inf")
        if constraint is not None:  # step i reveals position i: only it needs the grammar's mask
            logits[:, i] = logits[:, i].masked_fill(~constraint.next_mask(x[:, P:P + i]), float("-inf"))
        if temperature <= 0:
            probs = logits.softmax(-1)
            prop = probs.argmax(-1)
        else:
            probs = top_p_filter((logits / temperature).softmax(-1), top_p)
            prop = torch.multinomial(probs.view(-1, probs.size(-1)), 1, generator=gen).view(n, gen_len)
        conf = probs.gather(-1, prop[..., None]).squeeze(-1)
        if remasking == "random":
            conf = torch.rand(conf.shape, generator=gen, device=device)
        elif remasking != "low_confidence":
            raise ValueError(f"remasking={remasking!r}; use 'low_confidence' or 'random'")
        is_masked = x[:, P:] == mask_id
        k = still_masked[i] - still_masked[i + 1]
        if k <= 0:
            continue
        allowed = is_masked
        if reveal_window:
            allowed = is_masked & (is_masked.cumsum(1) <= max(reveal_window, k))
        conf = conf.masked_fill(~allowed, float("-inf"))
        reveal = conf.topk(k, dim=-1).indices  # (n, k) most confident masked positions
        comp = x[:, P:]
        comp.scatter_(1, reveal, prop.gather(1, reveal))
    return x[:, P:]


def block_of_t_n(n_blocks: int | None, t: float) -> int | None:
    # same rule as model.block_of_t, for callers (HF models) that have no ModelConfig
    if not n_blocks:
        return None
    return min(max(int(t * n_blocks), 0), n_blocks - 1)


def sample_completions(model: BlockDiffusionLM, tokenizer, prompt: str, *, n: int, gen_len: int, steps: int,
                       temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                       remasking: str = "low_confidence", reveal_window: int | None = None,
                       constraint: "ActionTrie | None" = None) -> list[str]:
    """G candidate completions (decoded text) for one prompt, in one batched call."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ids = sample_ids(native_logits_fn(model), prompt_ids(tokenizer, prompt), n=n, gen_len=gen_len,
                     steps=steps, mask_id=tokenizer.mask_token_id, n_blocks=model.cfg.n_blocks,
                     temperature=temperature, top_p=top_p, seed=seed,
                     suppress_ids=(tokenizer.pad_token_id, tokenizer.bos_token_id), device=device,
                     remasking=remasking, reveal_window=reveal_window, constraint=constraint)
    model.train(was_training)
    return [tokenizer.decode(row.tolist()) for row in ids.cpu()]


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    return [tokenizer.bos_token_id, *tokenizer.encode(prompt)]


__all__ = ["sample_ids", "sample_completions", "native_logits_fn", "top_p_filter", "prompt_ids"]
