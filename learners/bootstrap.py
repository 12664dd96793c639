"""Bootstrap: teach a fresh model the action grammar before any reward exists.

Pretrains every block with its local objective on grammar-generated (prompt, completion) pairs
(random sides, sizes and horizons, so the prior carries no trading opinion), then measures the
share of samples that parse. ``ensure_initial_snapshot`` is what ``make run`` calls: it writes
the default initial snapshot once and is a no-op afterwards.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import torch

from learners.core import LearnerConfig, LearnerState, build_state, reset_reference, sample
from learners.grammar import (parse_action, prior_pairs, prior_parse_prompts, random_market_example,
                              random_social_example)
from learners.objective import make_optimizers, train_blocks
from learners.snapshot import is_snapshot, save_snapshot


def encode_examples(tokenizer, pairs: list[tuple[str, str]], gen_len: int, device="cpu"):
    """(x0, eligible, attention_mask): prompts left-padded with [PAD], completions [EOS]-filled."""
    prompts = [[tokenizer.bos_token_id, *tokenizer.encode(p)] for p, _ in pairs]
    P = max(len(p) for p in prompts)
    rows, attn = [], []
    for p, (_, c) in zip(prompts, pairs):
        ids = tokenizer.encode(c)[:gen_len]
        pad = P - len(p)
        rows.append([tokenizer.pad_token_id] * pad + p + ids + [tokenizer.eos_token_id] * (gen_len - len(ids)))
        attn.append([0] * pad + [1] * (len(p) + gen_len))
    x0 = torch.tensor(rows, dtype=torch.long, device=device)
    eligible = torch.zeros_like(x0, dtype=torch.bool)
    eligible[:, P:] = True  # SFT-style: the prompt stays clean, only the completion is noised
    return x0, eligible, torch.tensor(attn, dtype=torch.long, device=device)


def grammar_pairs(rng: random.Random, n: int, social_share: float = 0.25) -> list[tuple[str, str]]:
    return [random_social_example(rng) if rng.random() < social_share else random_market_example(rng)
            for _ in range(n)]


def _fitting_pairs(pairs_fn, rng, n: int, gen_len: int) -> list[tuple[str, str]]:
    # a completion must leave room for [EOS], or the model would learn truncated actions
    out: list[tuple[str, str]] = []
    while len(out) < n:
        out += [(p, c) for p, c in pairs_fn(rng, n) if len(c.encode()) < gen_len]
    return out[:n]


def parse_rate(state: LearnerState, n_prompts: int = 8, group_size: int = 8, seed: int = 1234,
               prompts: list[tuple[str, str]] | None = None, **sample_kw) -> float:
    """Share of sampled completions that parse. ``prompts``: [(prompt, task)]; default: fresh
    grammar prompts, one in four social. ``sample_kw`` override the sampler settings."""
    rng = random.Random(seed)
    if prompts is None:
        prompts = [(random_social_example(rng)[0], "social") if i % 4 == 3 else (random_market_example(rng)[0], "market")
                   for i in range(n_prompts)]
    ok = total = 0
    for i, (prompt, task) in enumerate(prompts):
        for text in sample(state, prompt, n=group_size, seed=seed + i, **sample_kw):
            ok += not hasattr(parse_action(text, task, n_choices=3), "reason")
            total += 1
    return ok / total


def bootstrap(state: LearnerState, steps: int = 600, batch_size: int = 32, lr: float = 3e-3,
              seed: int = 0, progress: bool = True, pairs_fn=grammar_pairs, report=None,
              report_every_s: float = 5.0) -> dict:
    """Pretrain all blocks on grammar text; the state's own (RL) optimisers are left untouched.

    ``pairs_fn(rng, n) -> [(prompt, completion)]`` supplies the text (default: both grammars).
    ``report(fields)`` (optional) gets {"step", "steps", "loss", "eta_s"} every ``report_every_s``
    seconds and at the end: progress for plain logs, where the terminal bar does not draw.
    """
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    opts = make_optimizers(state.model, lr, weight_decay=0.0)
    scheds = [torch.optim.lr_scheduler.OneCycleLR(o, max_lr=lr, total_steps=steps, pct_start=0.1) for o in opts]
    blocks = list(range(state.config.model.n_blocks))
    state.model.train()
    losses: dict[int, float] = {}
    bar = _progress(progress)
    started = last_report = time.monotonic()
    with bar:
        task = bar.add_task("bootstrap", total=steps, loss="")
        for i in range(steps):
            x0, elig, attn = encode_examples(state.tokenizer, _fitting_pairs(pairs_fn, rng, batch_size, state.config.gen_len),
                                             state.config.gen_len, state.device)
            losses = train_blocks(state.model, opts, x0, elig, blocks, gen, grad_clip=1.0, attention_mask=attn)
            for s in scheds:
                s.step()
            bar.update(task, advance=1, loss=" ".join(f"{v:.3f}" for v in losses.values()))
            now = time.monotonic()
            if report is not None and (now - last_report >= report_every_s or i + 1 == steps):
                last_report = now
                eta = (now - started) / (i + 1) * (steps - i - 1)
                report({"step": i + 1, "steps": steps, "loss": round(sum(losses.values()) / max(len(losses), 1), 4),
                        "eta_s": round(eta, 1)})
    return {"bootstrap_steps": steps, "bootstrap_final_loss": losses}


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), TextColumn("loss/block {task.fields[loss]}"), disable=not enabled)


def bootstrapped_state(config: LearnerConfig | None = None, steps: int = 600, progress: bool = True,
                       parse_prompts: list[tuple[str, str]] | None = None, **kwargs) -> tuple[LearnerState, dict]:
    """A fresh state, bootstrapped, with its frozen reference set to the bootstrapped weights."""
    state = build_state(config or LearnerConfig())
    info = bootstrap(state, steps=steps, seed=state.config.seed, progress=progress, **kwargs)
    reset_reference(state)
    if kwargs.get("pairs_fn", grammar_pairs) is grammar_pairs or parse_prompts:
        info["parse_rate"] = parse_rate(state, prompts=parse_prompts)
    return state, info


def ensure_initial_snapshot(path: str | os.PathLike, config: LearnerConfig | None = None, steps: int = 400,
                            progress: bool = True, report=None) -> Path:
    """Write the default initial snapshot at ``path`` unless one is already there; return the path.

    The text is the trading prior (``learners.grammar.prior_pairs``): the one the efficacy benchmark
    bootstraps on, so a fresh daemon starts from the policy that benchmark measures."""
    path = Path(path)
    if is_snapshot(path):
        return path
    state, info = bootstrapped_state(config, steps=steps, progress=progress, pairs_fn=prior_pairs(),
                                     parse_prompts=prior_parse_prompts(), report=report)
    if report is not None:
        report({"step": steps, "steps": steps, "parse_rate": info.get("parse_rate"), "done": True})
    save_snapshot(state, path, {"source": "bootstrap", **info})
    return path
