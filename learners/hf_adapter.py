"""Sampling and block-local GRPO on a transformers masked-diffusion LM (LLaDA or Dream conventions).

Conventions handled:
- ``mask_token_id`` comes from the config (LLaDA 126336, Dream 151666); pad must differ from it.
- ``convention="dream"`` applies Dream's one-position logit shift, logits[:, i] <- logits[:, i-1]
  (Dream predicts token i at position i-1), everywhere log-probs are read.
- Models are called as ``model(input_ids).logits``: neither family is conditioned on t.

What a "block" is:
- Exported eigenloop checkpoints (they carry ``lm.blocks``): the native blocks, each owning its
  t-range, and the exact per-block wd1 decomposition of ``learners.grpo``.
- Any other model: B contiguous groups of its transformer layers. A forward pre-hook detaches the
  hidden states entering each group, so no gradient crosses a group boundary, and every group but
  the last gets a local readout (a trainable copy of the final norm + LM head) on its output.
  Group g is trained with wd1 on l^_g read out locally, with masks drawn in the g-th t-range.
  This is an approximation: the policy samples through the last readout only, and the earlier
  readouts' ELBO pieces are not pieces of that policy's ELBO.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from learners.grpo import encode_group, wd1_loss
from learners.objective import mask_tokens, sample_t
from learners.sampler import prompt_ids, sample_ids
from schemas.learn import rewards_have_signal

_LAYER_PATHS = ("model.layers", "model.transformer.blocks", "transformer.blocks", "transformer.h", "layers")
_NORM_PATHS = ("model.norm", "model.transformer.ln_f", "transformer.ln_f", "norm")


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def dream_shift(logits: torch.Tensor) -> torch.Tensor:
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


class DiffusionLMAdapter:
    """Wraps a loaded model; ``sample`` and ``grpo_step`` work the same for both kinds of blocks."""

    def __init__(self, model: nn.Module, tokenizer, *, convention: Literal["llada", "dream"] = "llada",
                 mask_token_id: int | None = None, n_blocks: int = 2, lr: float = 1e-5, grad_clip: float = 0.5,
                 mc_draws: int = 2, seed: int = 0):
        self.model, self.tok, self.convention = model, tokenizer, convention
        self.mask_id = mask_token_id if mask_token_id is not None else model.config.mask_token_id
        if getattr(tokenizer, "pad_token_id", None) == self.mask_id:
            raise ValueError("pad_token_id equals mask_token_id; give the tokenizer a distinct pad token")
        self.grad_clip, self.mc_draws = grad_clip, mc_draws
        self.generator = torch.Generator().manual_seed(seed)
        self.native = hasattr(model, "lm") and hasattr(model.lm, "blocks")
        if self.native:
            self.n_blocks = model.lm.cfg.n_blocks
            groups = [list(b.parameters()) for b in model.lm.blocks]
        else:
            groups = self._split_layers(n_blocks)
        self.optimizers = [torch.optim.AdamW(g, lr=lr, weight_decay=0.0) for g in groups]

    # -- layer groups ----------------------------------------------------------------------------
    def _split_layers(self, n_blocks: int) -> list[list[nn.Parameter]]:
        layers = next((x for x in (_get(self.model, p) for p in _LAYER_PATHS) if isinstance(x, nn.ModuleList)), None)
        norm = next((x for x in (_get(self.model, p) for p in _NORM_PATHS) if x is not None), nn.Identity())
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        head = head or getattr(self.model, "lm_head", None)
        if layers is None or head is None:
            raise ValueError("could not find the model's layer list / LM head; pass an eigenloop export or a LLaDA/Dream-style model")
        n = min(n_blocks, len(layers))
        self.n_blocks = n
        bounds = [round(i * len(layers) / n) for i in range(n + 1)]
        self._captured: dict[int, torch.Tensor] = {}
        self.readouts = nn.ModuleList([nn.Sequential(copy.deepcopy(norm), copy.deepcopy(head)) for _ in range(n - 1)])
        for g in range(n):
            if g > 0:
                layers[bounds[g]].register_forward_pre_hook(_detach_input, with_kwargs=True)
            if g < n - 1:
                layers[bounds[g + 1] - 1].register_forward_hook(self._capture(g))
        owned = {id(p) for g in range(n) for p in layers[bounds[g]:bounds[g + 1]].parameters()}
        owned |= {id(p) for p in norm.parameters()} | {id(p) for p in head.parameters()}
        rest = [p for p in self.model.parameters() if id(p) not in owned]  # embeddings etc.: first group
        groups = [list(layers[bounds[g]:bounds[g + 1]].parameters()) for g in range(n)]
        groups[0] += rest
        for g in range(n - 1):
            groups[g] += list(self.readouts[g].parameters())
        groups[-1] += list(norm.parameters()) + list(head.parameters())
        return groups

    def _capture(self, g: int):
        def hook(module, args, output):
            self._captured[g] = output[0] if isinstance(output, tuple) else output
        return hook

    # -- logits ----------------------------------------------------------------------------------
    def _shift(self, logits):
        return dream_shift(logits) if self.convention == "dream" else logits

    def logits(self, x: torch.Tensor, t: float | torch.Tensor | None = None, block: int | None = None):
        """Final-policy logits (native: the block owning t; generic: the whole model)."""
        if self.native:
            return self._shift(self.model(input_ids=x, t=t, block=block).logits)
        return self._shift(self.model(input_ids=x).logits)

    def block_logits(self, x: torch.Tensor, t: torch.Tensor, b: int) -> torch.Tensor:
        """Logits that block/group b's parameters alone are responsible for."""
        if self.native:
            return self._shift(self.model(input_ids=x, t=t, block=b).logits)
        out = self.model(input_ids=x).logits
        if b == self.n_blocks - 1:
            return self._shift(out)
        return self._shift(self.readouts[b](self._captured[b]))

    # -- sampling and learning -------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, prompt: str, *, n: int, gen_len: int, steps: int, temperature: float = 1.0,
               top_p: float = 1.0, seed: int = 0, remasking: str = "random", reveal_window: int | None = 2) -> list[str]:
        device = next(self.model.parameters()).device
        fn = lambda x, t, block: self.logits(x, t, block)  # noqa: E731
        ids = sample_ids(fn, prompt_ids(self.tok, prompt), n=n, gen_len=gen_len, steps=steps, mask_id=self.mask_id,
                         n_blocks=self.n_blocks if self.native else None, temperature=temperature, top_p=top_p,
                         seed=seed, device=device, remasking=remasking, reveal_window=reveal_window,
                         suppress_ids=tuple(i for i in (getattr(self.tok, "pad_token_id", None),
                                                        getattr(self.tok, "bos_token_id", None)) if i is not None))
        return [self.tok.decode(r.tolist()) for r in ids.cpu()]

    def grpo_step(self, prompt: str, completions: list[str], advantages: list[float], gen_len: int) -> list[dict]:
        """One wd1 update of every block/group from one closed group; returns per-block stats."""
        # advantages are the group's rewards shifted and scaled: they have spread when the rewards do
        if not rewards_have_signal(advantages):
            return []
        adv = torch.tensor(advantages, dtype=torch.float32)
        device = next(self.model.parameters()).device
        x0, elig = encode_group(self.tok, prompt, completions, gen_len, device)
        adv = adv.to(device)
        losses = []
        for b in range(self.n_blocks):
            lo, hi = b / self.n_blocks, (b + 1) / self.n_blocks
            ts = sample_t(self.mc_draws, max(lo, 1e-3), hi, self.generator)
            share = torch.zeros(x0.size(0), device=device)
            for k in range(self.mc_draws):
                t = ts[k].expand(x0.size(0))
                xt, masked = mask_tokens(x0, elig, t, self.mask_id, self.generator, shared=True)
                logp = F.log_softmax(self.block_logits(xt, t.to(device), b).float(), -1)
                share = share + (hi - lo) * (logp.gather(-1, x0[..., None]).squeeze(-1) * masked).sum(1) / t.to(device)
            losses.append(wd1_loss(share / self.mc_draws, adv, gen_len))
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        torch.stack(losses).sum().backward()  # hooks/blocks keep every gradient inside its block
        stats = []
        for b, opt in enumerate(self.optimizers):
            params = [p for g in opt.param_groups for p in g["params"]]
            gn = float(torch.nn.utils.clip_grad_norm_(params, self.grad_clip))
            opt.step()
            stats.append({"block": b, "loss": float(losses[b].detach()), "grad_norm": gn})
        return stats


def _detach_input(module, args, kwargs):
    if args:
        return (args[0].detach(), *args[1:]), kwargs
    if "hidden_states" in kwargs:
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"].detach()}
    return None
