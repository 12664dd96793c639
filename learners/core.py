"""The learner's pure core: config, state, and ``step(state, group) -> (state, updates)``.

No I/O happens here: the daemon feeds closed groups in and publishes the returned
``BlockUpdate`` records. Every random draw comes from ``state.generator`` (a CPU generator that
snapshots with the state), so replaying the same groups from a snapshot reproduces the same
weights, and with deterministic algorithms on CPU the same checksums, bit for bit.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from typing import Literal

import torch

from learners.grammar import is_market_prompt, mirror_market_completion, mirror_market_prompt
from learners.grpo import LOSSES, all_block_terms, encode_group
from learners.model import BlockDiffusionLM, ModelConfig
from learners.objective import make_optimizers
from learners.tokenizer import ByteTokenizer
from learners.trajectory import trajectory_block_terms
from schemas import BlockUpdate, GRPOGroup, deterministic_event_id
from schemas.learn import NO_SIGNAL


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
        lr (`float`, default 1e-4), weight_decay (`float`, default 0.0): decay is off by default
            because a continuous learner steps forever and decay would slowly erase the bootstrap.
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
        forced_p (`float | None`, default 0.99): with the trajectory likelihood and the frozen
            reference, the reward term leaves out the bytes the bootstrap prior writes with at
            least this probability (the grammar around the choices); the KL still covers them.
            Without it, reward noise erodes the grammar under Adam (measured on the captures:
            "short1  h5", "fla", all G invalid). None: every byte (the exact log pi).
        mirror (`bool`, default True): a market group also teaches its mirror image (signed
            features flipped, long <-> short, the same advantages) in the same step, so a drift
            that favours one side over the training days cannot pay. Social groups are unchanged.
        mc_draws (`int`, default 2): K mask draws (stratified t) per block per group ("elbo").
        inner_steps (`int`, default 1): optimiser steps per group, reusing the same masks.
        clip_eps (`float`, default 0.2), beta (`float`, default 0.0): "clipped" only.
        block_selection (`Literal["all", "round_robin", "topk_loss"]`, default "all"):
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
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 0.5
    loss_type: Literal["wd1", "clipped"] = "wd1"
    likelihood: Literal["trajectory", "elbo"] = "trajectory"
    forced_p: float | None = 0.99
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
        if self.block_selection not in ("all", "round_robin", "topk_loss"):
            raise ValueError(f"block_selection={self.block_selection!r}; use 'all', 'round_robin' or 'topk_loss'")
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
        if self.likelihood == "trajectory" and not self.sequential:
            raise ValueError("likelihood='trajectory' is exact only for the sequential sampler: set reveal_window=1 "
                             f"and sample_steps=gen_len (got reveal_window={self.reveal_window}, sample_steps="
                             f"{self.sample_steps}, gen_len={self.gen_len}), or use likelihood='elbo'")

    @property
    def sequential(self) -> bool:
        """One position per step, left to right: sampled completions have an exact likelihood."""
        return self.reveal_window == 1 and self.sample_steps == self.gen_len

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


@dataclass
class LearnerState:
    """The resident learner: model, per-block optimisers, RNG and counters."""

    config: LearnerConfig
    model: BlockDiffusionLM
    optimizers: list[torch.optim.AdamW]
    generator: torch.Generator
    ref_model: BlockDiffusionLM | None = None
    tokenizer: ByteTokenizer = field(default_factory=ByteTokenizer)
    policy_version: int = 0
    step: int = 0  # groups applied
    block_steps: list[int] = field(default_factory=list)
    skipped_groups: int = 0
    rr_cursor: int = 0
    loss_ema: list[float | None] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def build_state(config: LearnerConfig) -> LearnerState:
    """A fresh learner: weights seeded from ``config.seed``, on ``config.resolve_device()``."""
    device = config.resolve_device()
    torch.manual_seed(config.seed)
    model = BlockDiffusionLM(config.model).to(device)
    B = config.model.n_blocks
    return LearnerState(
        config=config, model=model,
        optimizers=make_optimizers(model, config.lr, config.weight_decay, config.betas),
        generator=torch.Generator().manual_seed(config.seed),
        ref_model=_frozen_copy(model) if config.keep_reference else None,
        block_steps=[0] * B, loss_ema=[None] * B,
    )


def _frozen_copy(model: BlockDiffusionLM) -> BlockDiffusionLM:
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def reset_reference(state: LearnerState) -> None:
    """Make the current weights the frozen reference (e.g. right after bootstrap)."""
    state.ref_model = _frozen_copy(state.model)


def block_checksum(model: BlockDiffusionLM, b: int) -> str:
    """sha256 over block b's parameter names and raw bytes, in registration order."""
    h = hashlib.sha256()
    for name, p in model.blocks[b].named_parameters():
        h.update(name.encode())
        h.update(p.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def select_blocks(state: LearnerState) -> list[int]:
    cfg, B = state.config, state.config.model.n_blocks
    if cfg.block_selection == "all":
        return list(range(B))
    k = cfg.blocks_per_group
    if cfg.block_selection == "round_robin":
        chosen = [(state.rr_cursor + i) % B for i in range(k)]
        state.rr_cursor = (state.rr_cursor + k) % B
        return sorted(chosen)
    key = [(-(float("inf") if e is None else e), b) for b, e in enumerate(state.loss_ema)]
    return sorted(b for _, b in sorted(key)[:k])


def has_signal(group: GRPOGroup) -> bool:
    adv = group.advantages
    return group.status != "skipped" and len(adv) >= 2 and max(adv) - min(adv) > 1e-12


def regulariser_only(config: LearnerConfig, group: GRPOGroup) -> bool:
    """A group without reward signal that still takes the regulariser's step.

    When all G candidates are the same (a policy that went deterministic, right or wrong, or
    whose grammar broke the same way every time), the rewards have no spread and the reward term
    is zero. Skipping such a group would leave the policy in that corner for good: nothing it
    samples can ever have spread again. The regulariser (KL to the prior, entropy) still applies
    and pulls it back, so learning resumes. Groups dropped on purpose (partial under ``drop``)
    are not learned from at all.
    """
    no_spread = group.status != "skipped" or group.skip_reason == NO_SIGNAL
    return (no_spread and len(group.completions) >= 1 and not has_signal(group)
            and (config.kl_bootstrap_coef > 0 or config.entropy_coef > 0))


def learning_rows(state: LearnerState, group: GRPOGroup) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(x0, eligible, prompt_len, halves): the group's rows, followed by its mirror image's when
    the mirror applies (``halves`` = 2; a mirror prompt has the original's length, so both stack)."""
    tok, L = state.tokenizer, state.config.gen_len
    x0, eligible = encode_group(tok, group.prompt, group.completions, L, state.device)
    if not mirrors(state.config, group):
        return x0, eligible, x0.size(1) - L, 1
    x0m, eligible_m = encode_group(tok, mirror_market_prompt(group.prompt),
                                   [mirror_market_completion(c) for c in group.completions], L, state.device)
    return torch.cat([x0, x0m]), torch.cat([eligible, eligible_m]), x0.size(1) - L, 2


def mirrors(config: LearnerConfig, group: GRPOGroup) -> bool:
    return config.mirror and group.task == "market" and is_market_prompt(group.prompt)


def block_terms_for(state: LearnerState, blocks: list[int], x0, eligible, prompt_len: int, use_ref, batched: bool):
    """Each block's likelihood terms for the rows, by the configured likelihood; (terms, finish)."""
    cfg = state.config
    if cfg.likelihood == "trajectory":
        tok = state.tokenizer
        forced = cfg.forced_p if state.ref_model is not None else None
        ref = state.ref_model if forced is not None else use_ref  # the reference also marks forced bytes
        terms = trajectory_block_terms(state.model, blocks, x0, prompt_len, (tok.pad_token_id, tok.bos_token_id),
                                       tok.eos_token_id, ref, want_entropy=cfg.entropy_coef > 0, forced_p=forced)
        return terms, None
    terms = all_block_terms(state.model, blocks, x0, eligible, cfg.mc_draws, state.generator, use_ref,
                            want_entropy=cfg.entropy_coef > 0, batched=batched)
    return terms, terms.pop("_finish", None)


def block_loss(cfg: LearnerConfig, terms: dict, adv: torch.Tensor, halves: int,
               old_share: torch.Tensor | None = None) -> torch.Tensor:
    """One block's loss from its terms: the GRPO loss per half (the mirror is a group of its own,
    its weights computed over its own G rows) plus the regularisers."""
    G = adv.numel()
    old = terms["share"].detach() if old_share is None else old_share
    loss = sum(LOSSES[cfg.loss_type](terms["share"][h * G:(h + 1) * G], adv, cfg.gen_len,
                                     old_share=old[h * G:(h + 1) * G], ref_share=terms["ref_share"][h * G:(h + 1) * G],
                                     clip_eps=cfg.clip_eps, beta=cfg.beta)
               for h in range(halves))
    return loss - cfg.entropy_coef * terms["entropy"] + cfg.kl_bootstrap_coef * terms["kl"]


def step(state: LearnerState, group: GRPOGroup) -> tuple[LearnerState, list[BlockUpdate]]:
    """Apply one closed group. Returns the (mutated) state and one BlockUpdate per updated block.

    Groups without reward signal (status "skipped", or zero advantage spread) count in
    ``state.skipped_groups``; they change nothing else unless ``regulariser_only`` says they take
    the regulariser's step (their advantages are zero, so the reward term vanishes exactly).
    Every step that changes weights moves ``policy_version`` by one.
    """
    if not has_signal(group):
        state.skipped_groups += 1
        if not regulariser_only(state.config, group):
            return state, []
        group = group.model_copy(update={"advantages": [0.0] * len(group.completions)})
    cfg, model = state.config, state.model
    blocks = select_blocks(state)
    # the group's rows, and its mirror image's: one batch, one loss per half, one optimiser step
    x0, eligible, prompt_len, halves = learning_rows(state, group)
    adv = torch.tensor(group.advantages, dtype=torch.float32, device=state.device)
    use_ref = state.ref_model if (cfg.beta > 0 or cfg.kl_bootstrap_coef > 0) else None
    before = {b: [p.detach().clone() for p in model.blocks[b].parameters()] for b in blocks}
    mask_state = state.generator.get_state()
    old_share: dict[int, torch.Tensor] = {}
    losses: dict[int, torch.Tensor] = {}
    grad_norms: dict[int, float] = {}
    batched = cfg.batch_blocks == "vmap" or (cfg.batch_blocks == "auto" and state.device.type == "cuda")
    batched = batched and len(blocks) > 1
    for it in range(cfg.inner_steps):
        state.generator.set_state(mask_state)  # the same masks every inner step (d1)
        for b in blocks:
            state.optimizers[b].zero_grad(set_to_none=True)
        all_terms, finish = block_terms_for(state, blocks, x0, eligible, prompt_len, use_ref, batched)
        for b in blocks:
            terms = all_terms[b]
            if it == 0:
                old_share[b] = terms["share"].detach()
            losses[b] = block_loss(cfg, terms, adv, halves, old_share[b])
        torch.stack([losses[b] for b in blocks]).sum().backward()  # no parameter is shared
        if finish is not None:
            finish()
        for b in blocks:
            params = list(model.blocks[b].parameters())
            max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
            grad_norms[b] = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            state.optimizers[b].step()
    state.policy_version += 1
    state.step += 1
    updates = []
    for b in blocks:
        state.block_steps[b] += 1
        lv = float(losses[b].detach())
        prev = state.loss_ema[b]
        state.loss_ema[b] = abs(lv) if prev is None else 0.9 * prev + 0.1 * abs(lv)
        params = list(model.blocks[b].parameters())
        upd = torch.sqrt(sum(((p.detach() - q) ** 2).sum() for p, q in zip(params, before[b]))).item()
        pnorm = torch.sqrt(sum((p.detach() ** 2).sum() for p in params)).item()
        updates.append(BlockUpdate(
            event_id=deterministic_event_id(group.ts_event // 1_000_000, group.group_id, b, state.policy_version),
            ts_event=group.ts_event, source="learner", key=str(b),
            block=b, step=state.block_steps[b], group_id=group.group_id, loss=lv, grad_norm=grad_norms[b],
            checksum=block_checksum(model, b), policy_version=state.policy_version,
            update_norm=upd, param_norm=pnorm, lr=float(state.optimizers[b].param_groups[0]["lr"]),
            mirrored=halves == 2, likelihood=cfg.likelihood,
        ))
    return state, updates


def sample(state: LearnerState, prompt: str, *, n: int, seed: int, temperature: float | None = None,
           top_p: float | None = None, remasking: str | None = None) -> list[str]:
    """G = n candidate completions for ``prompt`` in one batched call; deterministic for ``seed``."""
    from learners.sampler import sample_completions

    cfg = state.config
    return sample_completions(state.model, state.tokenizer, prompt, n=n, gen_len=cfg.gen_len,
                              steps=cfg.sample_steps, seed=seed,
                              temperature=cfg.temperature if temperature is None else temperature,
                              top_p=cfg.top_p if top_p is None else top_p,
                              remasking=cfg.remasking if remasking is None else remasking,
                              reveal_window=cfg.reveal_window)
