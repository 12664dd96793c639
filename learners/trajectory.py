"""The exact likelihood of a sampled completion, split over blocks, for the sequential sampler.

When the sampler reveals one position per step, left to right (``reveal_window=1`` and
``sample_steps == gen_len``), step s sees the prompt, the completion's first s tokens and
[MASK]s, runs the block b(s) that owns its t, and reveals position s. The probability of the
whole completion is then a plain product over steps:

    log pi(o | q) = sum_s log p_{b(s)}(o_s | q, o_<s, t_s)

Each term belongs to exactly one block, so the sum splits over blocks as the ELBO does, and wd1's
objective (linear in log pi) stays exact block by block. Unlike the ELBO there is no mask draw:
the gradient carries no Monte-Carlo noise, and the term that decides the trade (the side word,
revealed first) is always in it. The ELBO instead mostly scores "given 'ong', the first byte is
'l'", which changes nothing the sampler decides.

Terms after the completion's first [EOS] are left out: decoding stops there, so what the sampler
wrote after it never reached the action, and rewarding it would only add noise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from learners.model import BlockDiffusionLM, block_of_t
from learners.objective import autocast_for


def step_times(gen_len: int) -> list[float]:
    """t at the start of each of the sequential sampler's ``gen_len`` steps (1 - s/S)."""
    return [1.0 - s / gen_len for s in range(gen_len)]


def step_blocks(model: BlockDiffusionLM, gen_len: int) -> list[int]:
    """The block that runs each step: the owner of the step's mid t, as in the sampler."""
    return [block_of_t(model.cfg, 1.0 - (s + 0.5) / gen_len) for s in range(gen_len)]


def _step_inputs(x0: torch.Tensor, prompt_len: int, steps: list[int], mask_id: int) -> torch.Tensor:
    """(len(steps) * N, T): row (k, i) is x0[i] with completion positions >= steps[k] masked."""
    N, T = x0.shape
    cols = torch.arange(T, device=x0.device)
    rows = []
    for s in steps:
        rows.append(x0.masked_fill((cols >= prompt_len + s)[None, :], mask_id))
    return torch.cat(rows)


def counted_steps(x0: torch.Tensor, prompt_len: int, eos_id: int) -> torch.Tensor:
    """(N, L) bool: the steps whose token reached the action (up to and including the first [EOS])."""
    comp = x0[:, prompt_len:]
    is_eos = comp == eos_id
    before_first = (is_eos.cumsum(1) - is_eos.long()) == 0  # no [EOS] strictly before
    return before_first


def step_logprobs(logits: torch.Tensor, suppress_ids: tuple[int, ...],
                  allowed: torch.Tensor | None = None) -> torch.Tensor:
    """log-probabilities of the sampler's distribution at temperature 1 (suppressed ids removed,
    and, under a grammar constraint, renormalised over the ``allowed`` ids)."""
    logits = logits.float()
    if suppress_ids:
        logits = logits.clone()
        logits[..., list(suppress_ids)] = float("-inf")
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    return F.log_softmax(logits, dim=-1)


def trajectory_block_terms(model: BlockDiffusionLM, blocks: list[int], x0: torch.Tensor, prompt_len: int,
                           suppress_ids: tuple[int, ...], eos_id: int,
                           ref_model: BlockDiffusionLM | None = None, want_entropy: bool = False,
                           forced_p: float | None = None, allowed: torch.Tensor | None = None) -> dict:
    """{block: terms} with the same keys as ``learners.grpo.all_block_terms``.

    ``share`` (N,) is the block's exact part of log pi(o|q); ``ref_share`` the reference's part;
    ``entropy`` and ``kl`` are means over the counted steps of the block. One batched forward per
    block covers all of its steps for the whole group.

    ``forced_p`` (needs ``ref_model``): ``share`` and ``ref_share`` leave out the steps the
    reference writes with at least this probability, i.e. the grammar around the choices (after
    "l" the prior writes "ong 1 h5" and nothing else). Those steps decide nothing, yet every
    group would push them up or down with its advantages; under Adam, which scales each weight's
    step to its own gradient, those tiny pushes add up to a random walk that erodes the grammar
    ("short1  h5", "fla"). Left out of the reward term they are held by the KL alone, which
    still covers every step.

    ``allowed`` (N, L, V) bool: what a grammar-constrained sampler allowed at each step
    (``learners.constraint``). Every distribution is renormalised over it, the reference's too,
    so a forced byte has probability 1 and adds nothing to the reward term or the KL.
    """
    N, T = x0.shape
    L = T - prompt_len
    owner = step_blocks(model, L)
    times = step_times(L)
    counted = counted_steps(x0, prompt_len, eos_id)  # (N, L)
    mask_id = model.cfg.mask_token_id
    out = {}
    for b in blocks:
        steps = [s for s in range(L) if owner[s] == b]
        zero = torch.zeros((), device=x0.device)
        if not steps:
            out[b] = {"share": torch.zeros(N, device=x0.device), "ref_share": torch.zeros(N, device=x0.device),
                      "entropy": zero, "kl": zero}
            continue
        xs = _step_inputs(x0, prompt_len, steps, mask_id)  # (S_b * N, T)
        ts = torch.tensor([times[s] for s in steps], device=x0.device).repeat_interleave(N)
        pos = torch.tensor([prompt_len + s for s in steps], device=x0.device).repeat_interleave(N)
        # a group's candidates share most prefixes (every row of step 0 is the bare prompt), so
        # each distinct input runs once and its logits are shared: same values, same gradient
        uniq, inverse = torch.unique(xs, dim=0, return_inverse=True)
        t_uniq = torch.zeros(len(uniq), device=x0.device).scatter(0, inverse, ts)  # one t per input
        with autocast_for(x0.device):
            logits = model.blocks[b](uniq, t_uniq)[inverse, pos]  # (S_b * N, V): the revealed position
            ref_logits = None
            if ref_model is not None:
                with torch.no_grad():
                    ref_logits = ref_model.blocks[b](uniq, t_uniq)[inverse, pos]
        step_allowed = None
        if allowed is not None:  # (S_b * N, V), step-major like xs
            step_allowed = allowed[:, steps].transpose(0, 1).reshape(len(steps) * N, -1)
        logp = step_logprobs(logits, suppress_ids, step_allowed)
        target = x0[:, prompt_len:][:, steps].T.reshape(-1)  # (S_b * N,), step-major like xs
        keep = counted[:, steps].T.reshape(-1).float()
        tok = logp.gather(-1, target[:, None]).squeeze(-1) * keep
        share = tok.view(len(steps), N).sum(0)
        n_kept = keep.sum().clamp(min=1)
        finite = logp.masked_fill(torch.isinf(logp), 0.0)  # suppressed ids have p = 0: avoid 0 * inf
        ent = kl = zero
        if want_entropy:
            ent = (-(logp.exp() * finite).sum(-1) * keep).sum() / n_kept
        ref_share = torch.zeros(N, device=x0.device)
        if ref_logits is not None:
            ref_logp = step_logprobs(ref_logits, suppress_ids, step_allowed)
            if forced_p is not None:
                choice = (ref_logp.max(-1).values < math.log(forced_p)).float()
                share = (tok * choice).view(len(steps), N).sum(0)
                keep_reward = keep * choice
            else:
                keep_reward = keep
            ref_share = (ref_logp.gather(-1, target[:, None]).squeeze(-1) * keep_reward).view(len(steps), N).sum(0)
            ref_finite = ref_logp.masked_fill(torch.isinf(ref_logp), 0.0)
            kl = ((logp.exp() * (finite - ref_finite)).sum(-1) * keep).sum() / n_kept
        out[b] = {"share": share, "ref_share": ref_share, "entropy": ent, "kl": kl}
    return out


def sequence_logprob(model: BlockDiffusionLM, x0: torch.Tensor, prompt_len: int, suppress_ids: tuple[int, ...],
                     eos_id: int, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """log pi(o|q) per row, all blocks summed (no gradient): what the sampler's draw had."""
    with torch.no_grad():
        terms = trajectory_block_terms(model, list(range(model.cfg.n_blocks)), x0, prompt_len, suppress_ids, eos_id,
                                       allowed=allowed)
    return sum(t["share"] for t in terms.values())
