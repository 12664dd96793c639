"""Block-local GRPO losses.

Why the default (wd1) is exact block by block
----------------------------------------------
wd1 maximises  J = sum_i (w+_i - w-_i) * log pi(o_i | q)  with  w+ = softmax(A), w- = softmax(-A)
over the group. J is *linear* in log pi. A masked-diffusion model has no tractable log pi, so we
substitute its ELBO, and the ELBO is a sum over the t-ranges the blocks own:

    log pi(o|q) >= ELBO(o|q) = sum_b l_b(o|q),
    l_b = int_{t in block b} (1/t) E_mask[ sum_{masked k} log p_theta_b(o_k | q, o_unmasked, t) ] dt.

Hence J = sum_b sum_i (w+_i - w-_i) * l_b(o_i), and since l_b depends only on block b's
parameters theta_b, dJ/dtheta_b = sum_i (w+_i - w-_i) * dl_b(o_i)/dtheta_b. Each block's gradient
needs only its own piece: updating blocks separately (and in parallel, with separate optimizers)
is the same gradient as differentiating the whole surrogate. The Monte-Carlo estimate l^_b uses
K draws of t inside b's range (stratified), each completion token masked with probability t and
the prompt left clean; one mask pattern per draw is shared by the whole group (common tokens
cancel in the weighted sum); we divide by |o| as wd1 does.

The clipped option is an approximation
--------------------------------------
PPO/GRPO clip the ratio pi/pi_old of the *whole* policy, which is the product of exp(l_b - l_b_old)
over blocks; clipping each block's factor on its own is not the same objective. Likewise the
per-block k3 KL to the frozen reference is a KL of ELBO pieces, not of the policy. Masks are shared
between the current, old and reference evaluations (d1's trick) so the ratios are not swamped by
mask noise. Use it when you want a trust region; wd1 remains the exact one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from learners.model import BlockDiffusionLM, block_range
from learners.objective import autocast_for, mask_tokens, sample_t


def encode_group(tokenizer, prompt: str, completions: list[str], gen_len: int, device="cpu"):
    """(x0 (G, P+L), eligible (G, P+L)): [BOS] prompt, then each completion filled with [EOS].

    [EOS] filling (LLaDA's SFT convention) makes every completion exactly ``gen_len`` long, the
    same shape the sampler produces, so |o| = gen_len and the model also learns where to stop.
    """
    p = [tokenizer.bos_token_id, *tokenizer.encode(prompt)]
    rows = []
    for c in completions:
        ids = tokenizer.encode(c)[:gen_len]
        rows.append(p + ids + [tokenizer.eos_token_id] * (gen_len - len(ids)))
    x0 = torch.tensor(rows, dtype=torch.long, device=device)
    eligible = torch.zeros_like(x0, dtype=torch.bool)
    eligible[:, len(p):] = True
    return x0, eligible


def _draw(model: BlockDiffusionLM, b: int, x0, eligible, n_draws: int, generator: torch.Generator):
    """K stratified t's in block b's range and one group-shared mask per t."""
    lo, hi = block_range(model.cfg, b)
    ts = sample_t(n_draws, lo, hi, generator, stratified=True)
    draws = []
    for k in range(n_draws):
        t = ts[k].expand(x0.size(0)).to(x0.device)
        xt, masked = mask_tokens(x0, eligible, t, model.cfg.mask_token_id, generator, shared=True)
        draws.append((t, xt, masked))
    return lo, hi, draws


def _terms(x0, lo, hi, draws, logits, ref_logits, want_entropy: bool) -> dict:
    G = x0.size(0)
    share = torch.zeros(G, device=x0.device)
    ref_share = torch.zeros(G, device=x0.device)
    ent = kl = torch.zeros((), device=x0.device)
    for (t, _, masked), lg, rlg in zip(draws, logits, ref_logits):
        logp_all = F.log_softmax(lg.float(), dim=-1)  # (G, T, V)
        share = share + (hi - lo) * (logp_all.gather(-1, x0[..., None]).squeeze(-1) * masked).sum(1) / t
        n_m = masked.sum().clamp(min=1)
        finite = logp_all.masked_fill(torch.isinf(logp_all), 0.0)  # [MASK] has p=0: avoid 0*inf
        if want_entropy:
            ent = ent + (-(logp_all.exp() * finite).sum(-1) * masked).sum() / n_m
        if rlg is not None:
            ref_all = F.log_softmax(rlg.float(), dim=-1)
            ref_share = ref_share + (hi - lo) * (ref_all.gather(-1, x0[..., None]).squeeze(-1) * masked).sum(1) / t
            ref_finite = ref_all.masked_fill(torch.isinf(ref_all), 0.0)
            kl = kl + ((logp_all.exp() * (finite - ref_finite)).sum(-1) * masked).sum() / n_m
    K = len(draws)
    return {"share": share / K, "ref_share": ref_share / K, "entropy": ent / K, "kl": kl / K}


def block_terms(model: BlockDiffusionLM, b: int, x0, eligible, n_draws: int, generator: torch.Generator,
                ref_model: BlockDiffusionLM | None = None, want_entropy: bool = False) -> dict:
    """l^_b per completion (G,), with the reference's l^_b, entropy and KL on the same masks."""
    terms, _ = all_block_terms(model, [b], x0, eligible, n_draws, generator, ref_model, want_entropy, batched=False)
    return terms[b]


def _vmapped(modules, xs, ts):
    """Run same-shaped modules on their own inputs as one batched call: xs (nb, N, T), ts (nb, N)."""
    from torch.func import functional_call, stack_module_state, vmap

    params, buffers = stack_module_state(modules)
    out = vmap(lambda p, bf, x, t: functional_call(modules[0], (p, bf), (x, t)))(params, buffers, xs, ts)
    return out, params


def all_block_terms(model: BlockDiffusionLM, blocks: list[int], x0, eligible, n_draws: int,
                    generator: torch.Generator, ref_model: BlockDiffusionLM | None = None,
                    want_entropy: bool = False, batched: bool = False):
    """``({block: terms}, finish)`` for every listed block; random draws happen in the same order
    either way.

    ``batched`` stacks the blocks (torch.func) and runs all blocks x K draws as one forward. The
    gradients then land on the stacked copies, not on the blocks, so ``finish`` must run after
    backward to copy them into each block's ``.grad``; unbatched, ``finish`` is None.
    """
    drawn = {b: _draw(model, b, x0, eligible, n_draws, generator) for b in blocks}
    out = {}
    if not batched:
        for b in blocks:
            lo, hi, draws = drawn[b]
            with autocast_for(x0.device):
                logits = [model.blocks[b](xt, t) for t, xt, _ in draws]
                refs = [None] * len(draws)
                if ref_model is not None:
                    with torch.no_grad():
                        refs = [ref_model.blocks[b](xt, t) for t, xt, _ in draws]
            out[b] = _terms(x0, lo, hi, draws, logits, refs, want_entropy)
        return out, None
    G = x0.size(0)
    xs = torch.stack([torch.cat([xt for _, xt, _ in drawn[b][2]]) for b in blocks])  # (nb, K*G, T)
    ts = torch.stack([torch.cat([t for t, _, _ in drawn[b][2]]) for b in blocks])  # (nb, K*G)
    mods = [model.blocks[b] for b in blocks]
    with autocast_for(x0.device):
        logits, params = _vmapped(mods, xs, ts)
        ref_logits = None
        if ref_model is not None:
            with torch.no_grad():
                ref_logits, _ = _vmapped([ref_model.blocks[b] for b in blocks], xs, ts)
    for i, b in enumerate(blocks):
        lo, hi, draws = drawn[b]
        lg = list(logits[i].split(G))
        rl = list(ref_logits[i].split(G)) if ref_logits is not None else [None] * len(draws)
        out[b] = _terms(x0, lo, hi, draws, lg, rl, want_entropy)

    def finish():
        for i, m in enumerate(mods):
            for name, p in m.named_parameters():
                g = params[name].grad
                p.grad = None if g is None else g[i].clone()
    return out, finish


def wd1_weights(adv: torch.Tensor) -> torch.Tensor:
    """w+ - w-, with w+ = softmax(A) and w- = softmax(-A) over the group."""
    return adv.softmax(0) - (-adv).softmax(0)


def wd1_loss(share, adv, n_tokens: int, **_) -> torch.Tensor:
    """L_b = -sum_i (w+_i - w-_i) * l^_b(o_i) / |o_i|  (exact per block; see module docstring)."""
    return -(wd1_weights(adv) * share).sum() / n_tokens


def clipped_loss(share, adv, n_tokens: int, old_share, ref_share, clip_eps: float, beta: float, **_) -> torch.Tensor:
    """Per-block PPO clip on exp((l^_b - l^_b_old)/|o|) plus beta * k3 KL to the reference (approximate)."""
    ratio = torch.exp((share - old_share) / n_tokens)
    surr = torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    loss = -surr.mean()
    if beta > 0:
        d = (ref_share - share) / n_tokens
        loss = loss + beta * (torch.exp(d) - d - 1).mean()
    return loss


LOSSES = {"wd1": wd1_loss, "clipped": clipped_loss}
