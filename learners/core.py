"""The learner's pure core: state and ``step(state, group) -> (state, updates)`` (the config is
``learners.config``).

No I/O happens here: the daemon feeds closed groups in and publishes the returned
``BlockUpdate`` records. Every random draw comes from ``state.generator`` (a CPU generator that
snapshots with the state), so replaying the same groups from a snapshot reproduces the same
weights, and with deterministic algorithms on CPU the same checksums, bit for bit.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass, field

import torch

from learners.config import LearnerConfig
from learners.constraint import action_trie
from learners.grammar import is_market_prompt, mirror_market_completion, mirror_market_prompt
from learners.grpo import LOSSES, all_block_terms, encode_group
from learners.model import BlockDiffusionLM
from learners.objective import make_optimizers
from learners.selection import select_blocks
from learners.tokenizer import ByteTokenizer
from learners.trajectory import trajectory_block_terms
from schemas import BlockUpdate, GRPOGroup, deterministic_event_id
from schemas.learn import NO_SIGNAL


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
    refused_steps: int = 0
    # why the last step changed nothing although it had something to learn (None: it was not
    # refused); the caller dead-letters such a group (see ``step``)
    last_refusal: str | None = None

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


def has_signal(group: GRPOGroup) -> bool:
    return group.has_signal  # the streams skip by the same test, so both sides agree on every group


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


@dataclass
class LearningRows:
    """The rows one group teaches: its own, then its mirror image's when the mirror applies
    (``halves`` = 2; a mirror prompt has the original's length, so both stack). ``allowed``
    (N, L, V) is what the constrained sampler allowed at each step, None when unconstrained."""

    x0: torch.Tensor
    eligible: torch.Tensor
    prompt_len: int
    halves: int
    allowed: torch.Tensor | None


def learning_rows(state: LearnerState, group: GRPOGroup) -> LearningRows:
    tok, cfg, L = state.tokenizer, state.config, state.config.gen_len
    prompts = [group.prompt]
    completions = [list(group.completions)]
    if mirrors(cfg, group):
        prompts.append(mirror_market_prompt(group.prompt))
        completions.append([mirror_market_completion(c) for c in group.completions])
    x0s, eligibles, masks = [], [], []
    for prompt, comps in zip(prompts, completions):
        x0, eligible = encode_group(tok, prompt, comps, L, state.device)
        x0s.append(x0)
        eligibles.append(eligible)
        trie = action_trie(prompt, tok, L) if cfg.constrained else None
        masks.append(None if trie is None else trie.step_masks(x0[:, x0.size(1) - L:]))
    allowed = None
    if any(m is not None for m in masks):
        V = tok.vocab_size
        allowed = torch.cat([torch.ones((x.size(0), L, V), dtype=torch.bool, device=state.device) if m is None else m
                             for x, m in zip(x0s, masks)])
    return LearningRows(torch.cat(x0s), torch.cat(eligibles), x0s[0].size(1) - L, len(prompts), allowed)


def mirrors(config: LearnerConfig, group: GRPOGroup) -> bool:
    return config.mirror and group.task == "market" and is_market_prompt(group.prompt)


def block_terms_for(state: LearnerState, blocks: list[int], rows: LearningRows, use_ref, batched: bool):
    """Each block's likelihood terms for the rows, by the configured likelihood; (terms, finish)."""
    cfg = state.config
    if cfg.likelihood == "trajectory":
        tok = state.tokenizer
        forced = cfg.forced_p if state.ref_model is not None else None
        ref = state.ref_model if forced is not None else use_ref  # the reference also marks forced bytes
        terms = trajectory_block_terms(state.model, blocks, rows.x0, rows.prompt_len,
                                       (tok.pad_token_id, tok.bos_token_id), tok.eos_token_id, ref,
                                       want_entropy=cfg.entropy_coef > 0, forced_p=forced, allowed=rows.allowed)
        return terms, None
    return all_block_terms(state.model, blocks, rows.x0, rows.eligible, cfg.mc_draws, state.generator, use_ref,
                           want_entropy=cfg.entropy_coef > 0, batched=batched)


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

    A step whose advantages, loss or gradients are not finite is refused: it returns no updates,
    leaves the weights, optimiser moments, RNG and counters as they were (so the model is what it
    would be had the group never come), counts in ``state.refused_steps`` and says why in
    ``state.last_refusal``. Replaying the same groups refuses the same step.
    """
    cfg, model = state.config, state.model
    state.last_refusal = None
    undo = _Undo.take(state)

    # check the advantages on what the loss will see: groups built in code skip the schema's
    # checks, and a float64 past float32's range is finite in the record but inf here
    adv = torch.tensor(group.advantages, dtype=torch.float32, device=state.device)
    if len(group.advantages) != len(group.completions):
        return _refuse(state, undo, [], f"{len(group.advantages)} advantages for {len(group.completions)} completions")
    if not bool(torch.isfinite(adv).all()):
        return _refuse(state, undo, [], "advantages are not finite as float32")

    # a group without signal teaches nothing, unless the regulariser alone must still step
    if not has_signal(group):
        state.skipped_groups += 1
        if not regulariser_only(cfg, group):
            return state, []
        group = group.model_copy(update={"advantages": [0.0] * len(group.completions)})
        adv = torch.zeros_like(adv)

    # the blocks that learn, and the rows they learn from: the group's own and its mirror image's,
    # one batch, one loss per half, one optimiser step
    blocks = select_blocks(state)
    rows = learning_rows(state, group)
    use_ref = state.ref_model if (cfg.beta > 0 or cfg.kl_bootstrap_coef > 0) else None
    batched = len(blocks) > 1 and (cfg.batch_blocks == "vmap"
                                   or (cfg.batch_blocks == "auto" and state.device.type == "cuda"))
    before = {b: [p.detach().clone() for p in model.blocks[b].parameters()] for b in blocks}
    mask_state = state.generator.get_state()
    old_share: dict[int, torch.Tensor] = {}
    for it in range(cfg.inner_steps):
        # forward: every inner step redraws the first one's masks (d1), so the loss it moves is
        # the one the old shares were measured on
        state.generator.set_state(mask_state)
        for b in blocks:
            state.optimizers[b].zero_grad(set_to_none=True)
        terms, finish = block_terms_for(state, blocks, rows, use_ref, batched)
        if it == 0:
            old_share = {b: terms[b]["share"].detach() for b in blocks}
        losses = {b: block_loss(cfg, terms[b], adv, rows.halves, old_share[b]) for b in blocks}

        # backward: one pass for all blocks; no parameter is shared, so each block's gradient is
        # its own loss's alone
        torch.stack([losses[b] for b in blocks]).sum().backward()
        if finish is not None:
            finish()  # vmapped blocks: copy the stacked gradients into each block's .grad

        # clip each block's gradient on its own (wd1's negative term is unbounded)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norms = {b: float(torch.nn.utils.clip_grad_norm_(list(model.blocks[b].parameters()), max_norm))
                      for b in blocks}

        # check every block before any steps: one non-finite block refuses the whole group
        bad = [b for b in blocks if not (math.isfinite(float(losses[b].detach())) and math.isfinite(grad_norms[b]))]
        if bad:
            detail = ", ".join(f"block {b}: loss {float(losses[b].detach())}, grad norm {grad_norms[b]}" for b in bad)
            return _refuse(state, undo, blocks, f"non-finite step ({detail})")

        # step; a later inner step may still be refused, so keep what it would have to put back
        if it + 1 < cfg.inner_steps:
            undo.keep(state, before)
        for b in blocks:
            state.optimizers[b].step()

    # count the step and report each block's update
    state.policy_version += 1
    state.step += 1
    return state, [_block_update(state, group, b, float(losses[b].detach()), grad_norms[b], before[b], rows.halves)
                   for b in blocks]


def _block_update(state: LearnerState, group: GRPOGroup, b: int, loss: float, grad_norm: float,
                  before: list[torch.Tensor], halves: int) -> BlockUpdate:
    """Block b's record of the step just taken; also moves its step count and loss EMA (which
    ``topk_loss`` ranks by)."""
    state.block_steps[b] += 1
    prev = state.loss_ema[b]
    state.loss_ema[b] = abs(loss) if prev is None else 0.9 * prev + 0.1 * abs(loss)
    params = list(state.model.blocks[b].parameters())
    upd = torch.sqrt(sum(((p.detach() - q) ** 2).sum() for p, q in zip(params, before))).item()
    pnorm = torch.sqrt(sum((p.detach() ** 2).sum() for p in params)).item()
    return BlockUpdate(
        event_id=deterministic_event_id(group.ts_event // 1_000_000, group.group_id, b, state.policy_version),
        ts_event=group.ts_event, source="learner", key=str(b),
        block=b, step=state.block_steps[b], group_id=group.group_id, loss=loss, grad_norm=grad_norm,
        checksum=block_checksum(state.model, b), policy_version=state.policy_version,
        update_norm=upd, param_norm=pnorm, lr=float(state.optimizers[b].param_groups[0]["lr"]),
        mirrored=halves == 2, likelihood=state.config.likelihood,
    )


@dataclass
class _Undo:
    """What a refused step puts back: everything ``step`` may have moved before its updates."""

    rng: torch.Tensor
    rr_cursor: int
    skipped_groups: int
    params: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    moments: dict[int, dict] = field(default_factory=dict)

    @classmethod
    def take(cls, state: LearnerState) -> "_Undo":
        return cls(state.generator.get_state(), state.rr_cursor, state.skipped_groups)

    def keep(self, state: LearnerState, params: dict[int, list[torch.Tensor]]) -> None:
        """The blocks' weights (copies taken before the step) and a copy of their optimiser state,
        once, before the first optimiser step of a multi-step group; a single-step group is
        refused before it changes either, so it pays for no copy."""
        for b, saved in params.items():
            if b not in self.moments:
                self.params[b] = saved
                self.moments[b] = copy.deepcopy(state.optimizers[b].state_dict())


def _refuse(state: LearnerState, undo: _Undo, blocks: list[int], reason: str) -> tuple[LearnerState, list]:
    state.generator.set_state(undo.rng)
    state.rr_cursor, state.skipped_groups = undo.rr_cursor, undo.skipped_groups
    with torch.no_grad():
        for b, saved in undo.params.items():
            for p, q in zip(state.model.blocks[b].parameters(), saved):
                p.copy_(q)
    for b, moments in undo.moments.items():
        state.optimizers[b].load_state_dict(moments)
    for b in blocks:
        for p in state.model.blocks[b].parameters():
            p.grad = None  # non-finite gradients must not linger where an optimiser could find them
    state.refused_steps += 1
    state.last_refusal = reason
    return state, []


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
                              reveal_window=cfg.reveal_window, constraint=constraint_for(state, prompt))


def constraint_for(state: LearnerState, prompt: str):
    """The action grammar's trie for ``prompt`` when the learner samples constrained, else None."""
    cfg = state.config
    return action_trie(prompt, state.tokenizer, cfg.gen_len) if cfg.constrained else None
