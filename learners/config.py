"""The learner's configuration: one dataclass, validated on construction, no torch state.

``learners.presets`` holds the named variants (cpu, gpu); ``schemas.settings`` carries the
overrides from YAML and the environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from learners.grpo import LOSSES
from learners.model import ModelConfig
from learners.selection import BLOCK_SELECTIONS


# The defaults are the cpu preset (``learners.presets``): what ``eigenloop run`` uses on a CPU and
# what ``eigenloop bench efficacy`` measures. 2 blocks x 2 layers x 64 keeps a decision (12
# sequential sampling steps for G candidates) and a group's update well under the 2 s decision
# cadence on one CPU thread.
CPU_MODEL = {"n_blocks": 2, "n_layer": 2, "n_embd": 64, "n_head": 2}


@dataclass
class LearnerConfig:
    r"""Everything the learner needs besides its weights.

    > Model
        model (`ModelConfig`): sizes, number of blocks B, overlap gamma, t_eps (default ``CPU_MODEL``).

    > Generation (used by the actor through ``sample``)
        gen_len (`int`, default 12): completion length in tokens (bytes). Actions must fit.
        sample_steps (`int`, default 12): denoising steps S; must be a multiple of B. S = gen_len
            reveals one token per step; fewer steps sample neighbours independently (incoherent
            words from a small model).
        temperature (`float`, default 1.0), top_p (`float`, default 1.0): sampling controls.
        remasking (`Literal["low_confidence", "random"]`, default "random"): which masked
            positions a step reveals. "low_confidence" (LLaDA) reveals the most confident proposals:
            cleaner text, but it is mode-seeking: a small bootstrapped model then gives the same side
            to all G candidates, the group has zero spread and GRPO learns nothing (measured: 58/64
            "long" where the prior is uniform). "random" (MDLM's ancestral order) samples the model's
            own distribution, which is what rollouts need.
        reveal_window (`int | None`, default 1): only the leftmost this-many masked positions may
            be revealed (a sliding form of LLaDA's semi-autoregressive blocks). Without it,
            confident late tokens (sizes, [EOS]) fix the side of a trade before it is sampled.

    > Optimisation (one AdamW per block)
        lr (`float`, default 5e-5), weight_decay (`float`, default 0.0): decay is off by default
            because a continuous learner steps forever and decay would slowly erase the bootstrap.
            The market's edge is a weak vote per decision (the imbalance picks the winning side in
            ~56-59 % of them), so the learner must average over about a thousand decisions: at
            1e-4 the policy followed whatever the last few hundred decisions favoured (returns'
            momentum one hour, reversal the next) and lost the imbalance it had found; at 5e-5 it
            kept it (measured on the captures, ``eigenloop bench efficacy``).
        betas (`tuple[float, float]`, default (0.9, 0.999)): a long second-moment memory. Rewards
            at the market's noise level (the right side wins ~56 % of groups) make every group's
            gradient mostly noise; with beta2 = 0.95 Adam renormalises to recent magnitudes and
            takes full-size steps on that noise, and the policy random-walks into "flat" (all G
            flat: zero spread, no signal, stuck) within ~100 groups. With 0.999 the step shrinks
            with the gradient and the signal accumulates (measured in ``tests/learners``).
        grad_clip (`float`, default 0.5): per-block norm clip; wd1's negative term is unbounded
            (digest pitfall 10), so keep it small. 0 disables.

    > GRPO
        loss_type (`Literal["wd1", "clipped"]`, default "wd1"):
            - "wd1": w+ = softmax(A), w- = softmax(-A); exact per block (see ``learners.grpo``).
              No old/reference policy needed. Recommended.
            - "clipped": per-block PPO clip + k3 KL to the frozen reference; an approximation,
              because the policy ratio is a product over blocks.
        likelihood (`Literal["trajectory", "elbo"]`, default "trajectory"): what stands in for
            log pi(o|q) in the loss.
            - "trajectory": the exact log-probability of the sampled completion under the
              sequential sampler (``learners.trajectory``); needs ``reveal_window=1`` and
              ``sample_steps == gen_len``. No mask noise, and the side word is always scored.
            - "elbo": the masked-diffusion ELBO, K mask draws per block (any sampler).
        constrain (`bool | None`, default None = on for the sequential sampler): sample market
            and social completions from the action
            grammar (``learners.constraint``): each sequential step may only write a byte that
            continues an action at the traded sizes, horizons and stops, so every candidate
            parses, and the likelihood is renormalised over the same bytes (exact; a forced byte
            has probability 1 and neither rewards nor regularises anything). Unconstrained, a
            small model writes "llat 1 h5" and "shogt1 h5": the -50 bps invalid penalty then
            dwarfs the market rewards in the group (measured on the captures: one seed's first
            group had 4 of 8 invalid), and reward noise erodes the grammar. True needs the
            sequential sampler; ``constrained`` says whether it applies.
        forced_p (`float | None`, default None): with the trajectory likelihood and the frozen
            reference, the reward term leaves out the bytes the bootstrap prior writes with at
            least this probability; the KL still covers them. A stand-in for ``constrain`` when
            it is off (it held the grammar of unconstrained samples on the captures). None:
            every byte (the exact log pi).
        mirror (`bool`, default True): a market group also teaches its mirror image (signed
            features flipped, long <-> short, the same advantages) in the same step, so a drift
            that favours one side over the training days cannot pay. Social groups are unchanged.
        mc_draws (`int`, default 2): K mask draws (stratified t) per block per group ("elbo").
        inner_steps (`int`, default 1): optimiser steps per group, reusing the same masks.
        clip_eps (`float`, default 0.2), beta (`float`, default 0.0): "clipped" only.
        block_selection (`Literal["all", "round_robin", "topk_loss"]`, default "all"), the rules in
            ``learners.selection``:
            - "all": every block learns from every group (exact wd1 gradient for the whole model).
            - "round_robin": ``blocks_per_group`` blocks in turn; cheaper, staler.
            - "topk_loss": the ``blocks_per_group`` blocks with the largest recent |loss| (EMA);
              blocks never updated come first.
        blocks_per_group (`int`, default 1): used by "round_robin" and "topk_loss".

    > Regulariser (the collapse guard raises these)
        entropy_coef (`float`): adds -coef * mean predictive entropy at masked positions.
        kl_bootstrap_coef (`float`, default 0.1): adds coef * KL(current || bootstrap reference) at
            the scored positions: a restoring force towards the no-opinion prior, so noise cannot
            carry the policy into a corner it never leaves, while a consistent edge (the imbalance's
            sign, or fees that make standing aside right) still wins.
        keep_reference (`bool`, default True): keep a frozen copy of the initial weights (needed by
            beta and kl_bootstrap_coef; costs one extra copy of the weights).

    > Runtime
        device (`str`, default "auto"): "auto" picks CUDA when available. Model and optimiser stay there.
        batch_blocks (`Literal["auto", "loop", "vmap"]`, default "auto"): "vmap" stacks the updated
            blocks (torch.func) and runs them, all K draws included, as one batched forward and
            backward; "loop" runs them one after another (bit-reproducible on CPU); "auto" = vmap on
            CUDA, loop elsewhere.
        seed (`int`, default 0): seeds the initial weights and the learner's generator.
    """

    model: ModelConfig = field(default_factory=lambda: ModelConfig(**CPU_MODEL))
    gen_len: int = 12
    sample_steps: int = 12
    temperature: float = 1.0
    top_p: float = 1.0
    remasking: Literal["low_confidence", "random"] = "random"
    reveal_window: int | None = 1
    lr: float = 5e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 0.5
    loss_type: Literal["wd1", "clipped"] = "wd1"
    likelihood: Literal["trajectory", "elbo"] = "trajectory"
    constrain: bool | None = None
    forced_p: float | None = None
    mirror: bool = True
    mc_draws: int = 2
    inner_steps: int = 1
    clip_eps: float = 0.2
    beta: float = 0.0
    block_selection: Literal["all", "round_robin", "topk_loss"] = "all"
    blocks_per_group: int = 1
    entropy_coef: float = 0.0
    kl_bootstrap_coef: float = 0.1
    keep_reference: bool = True
    device: str = "auto"
    batch_blocks: Literal["auto", "loop", "vmap"] = "auto"
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = ModelConfig(**self.model)
        self.betas = tuple(self.betas)
        B = self.model.n_blocks
        if self.loss_type not in LOSSES:
            raise ValueError(f"loss_type={self.loss_type!r} is unknown; use one of {sorted(LOSSES)}")
        if self.block_selection not in BLOCK_SELECTIONS:
            raise ValueError(f"block_selection={self.block_selection!r} is unknown; "
                             f"use one of {sorted(BLOCK_SELECTIONS)}")
        if self.sample_steps % B:
            raise ValueError(f"sample_steps={self.sample_steps} is not a multiple of n_blocks={B}; "
                             f"use {B * max(1, round(self.sample_steps / B))} so steps align with blocks")
        if not 1 <= self.blocks_per_group <= B:
            raise ValueError(f"blocks_per_group={self.blocks_per_group} must be in [1, n_blocks={B}]")
        if self.model.n_embd % self.model.n_head or (self.model.n_embd // self.model.n_head) % 2:
            raise ValueError(f"n_embd={self.model.n_embd} must split into n_head={self.model.n_head} even-sized heads (RoPE)")
        if self.mc_draws < 1 or self.inner_steps < 1 or self.gen_len < 1:
            raise ValueError("mc_draws, inner_steps and gen_len must be >= 1")
        if (self.beta > 0 or self.kl_bootstrap_coef > 0) and not self.keep_reference:
            raise ValueError("beta or kl_bootstrap_coef > 0 needs the frozen reference: set keep_reference=True")
        if self.batch_blocks not in ("auto", "loop", "vmap"):
            raise ValueError(f"batch_blocks={self.batch_blocks!r}; use 'auto', 'loop' or 'vmap'")
        if self.remasking not in ("low_confidence", "random"):
            raise ValueError(f"remasking={self.remasking!r}; use 'low_confidence' or 'random'")
        if self.forced_p is not None and not 0 < self.forced_p <= 1:
            raise ValueError(f"forced_p={self.forced_p} must be in (0, 1], or null to score every byte")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
        if self.likelihood not in ("trajectory", "elbo"):
            raise ValueError(f"likelihood={self.likelihood!r}; use 'trajectory' or 'elbo'")
        if self.constrain is True and not self.sequential:
            raise ValueError("constrain=True (sampling from the action grammar) needs the sequential sampler: set "
                             f"reveal_window=1 and sample_steps=gen_len (got reveal_window={self.reveal_window}, "
                             f"sample_steps={self.sample_steps}, gen_len={self.gen_len}), or constrain=False")
        if self.likelihood == "trajectory" and not self.sequential:
            raise ValueError("likelihood='trajectory' is exact only for the sequential sampler: set reveal_window=1 "
                             f"and sample_steps=gen_len (got reveal_window={self.reveal_window}, sample_steps="
                             f"{self.sample_steps}, gen_len={self.gen_len}), or use likelihood='elbo'")

    @property
    def constrained(self) -> bool:
        """Whether the sampler writes only actions of the grammar (``constrain``, resolved)."""
        return self.sequential if self.constrain is None else self.constrain

    @property
    def sequential(self) -> bool:
        """One position per step, left to right: sampled completions have an exact likelihood."""
        return self.reveal_window == 1 and self.sample_steps == self.gen_len

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)
