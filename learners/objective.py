"""The local objective: each block's share of the masked-diffusion ELBO, and its training step.

For the linear schedule the NELBO is  E_{t~U(0,1]} E_{x_t} [ (1/t) * sum_{masked i} CE_i ].
Split the t-integral at b/B and it becomes a sum of B pieces; block b is trained only on its
piece (t drawn inside its widened range), so the sum of the blocks' losses is the full ELBO and
no block needs another block's output. Random draws (t, masks) come from a CPU generator so a
run is reproducible on any device.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from learners.model import BlockDiffusionLM, block_range


def sample_t(n: int, lo: float, hi: float, generator: torch.Generator, stratified: bool = True) -> torch.Tensor:
    """n values of t in [lo, hi); stratified puts one draw in each of n equal strata (less 1/t variance)."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    if stratified:
        u = (torch.arange(n, dtype=torch.float64) + u) / n
    return (lo + (hi - lo) * u).float()


def mask_tokens(x0, eligible, t, mask_id: int, generator: torch.Generator, shared: bool = False):
    """Absorb each eligible token into [MASK] with probability t (per row). Returns (x_t, masked).

    ``shared`` draws one mask pattern for all rows (rows must be aligned, as a GRPO group is):
    tokens the candidates have in common then cancel in the group-weighted sum instead of
    adding mask noise.
    """
    u = torch.rand((1, x0.size(1)) if shared else x0.shape, generator=generator).to(x0.device)
    masked = (u < t.to(x0.device)[:, None]) & eligible
    return x0.masked_fill(masked, mask_id), masked


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA; a no-op elsewhere so CPU results stay bit-reproducible."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def block_token_logp(model: BlockDiffusionLM, b: int, x0, eligible, t, generator, attention_mask=None):
    """One Monte-Carlo draw of block b's weighted log-likelihood per row, and the masked logits.

    Returns (wlogp (N,), logits (N,T,V), masked (N,T)) where wlogp = (1/t) * sum_masked log p.
    """
    xt, masked = mask_tokens(x0, eligible, t, model.cfg.mask_token_id, generator)
    with autocast_for(x0.device):
        logits = model.blocks[b](xt, t.to(x0.device), attention_mask)
    logp = -F.cross_entropy(logits.float().transpose(1, 2), x0, reduction="none")  # (N, T)
    wlogp = (logp * masked).sum(1) / t.to(x0.device)
    return wlogp, logits, masked


def block_loss(model, b, x0, eligible, generator, stratified=True, attention_mask=None) -> torch.Tensor:
    """Block b's training loss: mean over rows of (1/t) * masked CE, per eligible token."""
    lo, hi = block_range(model.cfg, b)
    t = sample_t(x0.size(0), lo, hi, generator, stratified)
    wlogp, _, _ = block_token_logp(model, b, x0, eligible, t, generator, attention_mask)
    return (-wlogp / eligible.sum(1).clamp(min=1)).mean()


def make_optimizers(model: BlockDiffusionLM, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.95)):
    """One AdamW per block, so each block's moments live (and can be snapshotted) on their own."""
    return [torch.optim.AdamW(blk.parameters(), lr=lr, weight_decay=weight_decay, betas=betas) for blk in model.blocks]


def vmapped_block_losses(model, x0, eligible, blocks, generator, stratified=True, attention_mask=None):
    """Every listed block's training loss from ONE batched forward/backward (torch.func.vmap).

    The blocks' weights are stacked along a new leading dim, so B independent blocks run as one
    set of batched kernels instead of B sequential ones. Returns ({block: loss}, finish), where
    ``finish()`` copies the stacked gradients back into each block's ``.grad`` after backward.
    Random draws happen in the same order as the loop path, so both see identical masks.
    """
    from torch.func import functional_call, stack_module_state, vmap

    mods = [model.blocks[b] for b in blocks]
    params, buffers = stack_module_state(mods)
    ts, xts, ms = [], [], []
    for b in blocks:
        lo, hi = block_range(model.cfg, b)
        t = sample_t(x0.size(0), lo, hi, generator, stratified)
        xt, masked = mask_tokens(x0, eligible, t, model.cfg.mask_token_id, generator)
        ts.append(t.to(x0.device)), xts.append(xt), ms.append(masked)
    T, XT, M = torch.stack(ts), torch.stack(xts), torch.stack(ms)  # (nb, N), (nb, N, L), (nb, N, L)

    def one(p, bf, xt, t):
        return functional_call(mods[0], (p, bf), (xt, t, attention_mask))

    with autocast_for(x0.device):
        logits = vmap(one)(params, buffers, XT, T)  # (nb, N, L, V)
    logp = -F.cross_entropy(logits.float().flatten(0, 1).transpose(1, 2), x0.repeat(len(blocks), 1),
                            reduction="none").view(len(blocks), *x0.shape)
    per = -(logp * M).sum(-1) / T / eligible.sum(1).clamp(min=1)  # (nb, N)
    losses = {b: per[i].mean() for i, b in enumerate(blocks)}

    def finish():
        for i, m in enumerate(mods):
            for name, p in m.named_parameters():
                g = params[name].grad
                p.grad = None if g is None else g[i].clone()
    return losses, finish


def train_blocks(model, optimizers, x0, eligible, blocks, generator, grad_clip=1.0, stratified=True,
                 attention_mask=None, batched: bool | None = None) -> dict[int, float]:
    """One local step on each listed block. Returns {block: loss}.

    ``batched`` (default: on CUDA with several blocks) runs all blocks as one vmapped forward and
    backward. Otherwise the losses are summed and back-propagated once: blocks share no
    parameter, so each block's gradient is exactly its own loss's gradient.
    """
    if batched is None:
        batched = x0.device.type == "cuda" and len(blocks) > 1
    for b in blocks:
        optimizers[b].zero_grad(set_to_none=True)
    if batched:
        losses, finish = vmapped_block_losses(model, x0, eligible, blocks, generator, stratified, attention_mask)
        torch.stack(list(losses.values())).sum().backward()
        finish()
    else:
        losses = {b: block_loss(model, b, x0, eligible, generator, stratified, attention_mask) for b in blocks}
        torch.stack(list(losses.values())).sum().backward()
    for b in blocks:
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.blocks[b].parameters(), grad_clip)
        optimizers[b].step()
    return {b: float(v.detach()) for b, v in losses.items()}


@torch.no_grad()
def elbo_bits(model: BlockDiffusionLM, x0, eligible, generator, n_t: int = 8, attention_mask=None) -> float:
    """NELBO in bits per eligible token, summing every block's exact (un-widened) share.

    Each block contributes width_b * E_{t in its range}[(1/t) * masked CE]; n_t stratified
    draws of t per block and per row (digest pitfall 11: never report one block's CE).
    """
    total = torch.zeros(x0.size(0), dtype=torch.float64, device=x0.device)
    for b in range(model.cfg.n_blocks):
        lo, hi = block_range(model.cfg, b, widen=False)
        acc = torch.zeros_like(total)
        for k in range(n_t):
            u = (k + torch.rand(x0.size(0), generator=generator, dtype=torch.float64)) / n_t
            t = (lo + (hi - lo) * u).float()
            wlogp, _, _ = block_token_logp(model, b, x0, eligible, t, generator, attention_mask)
            acc += -wlogp.double()
        total += (hi - lo) * acc / n_t
    return float(total.sum() / eligible.sum() / math.log(2))
