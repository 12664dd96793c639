"""Parity with TRL: advantages computed by TRL's own code equal ours to 1e-6 in every mode.

TRL exposes no advantage function; the computation lives inline in
``GRPOTrainer._generate_and_score_completions``. Rather than re-typing it, this test cuts that
block (from ``if self.multi_objective_aggregation == "sum_then_normalize":`` to the
``nan_to_num``) out of the installed trl's source and runs it, so a trl upgrade that changes the
formula fails here instead of drifting silently. The block runs on float64 tensors (TRL's code is
dtype-agnostic; in training its rewards are float32, whose rounding alone is ~1e-6 at |A| ~ 20),
so the comparison checks the formula, not float32 rounding.
"""

from __future__ import annotations

import inspect
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from streams.grouping import compute_advantages

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")
from trl.trainer.utils import nanstd  # noqa: E402


def _trl_advantage_block() -> str:
    src = inspect.getsource(trl_grpo.GRPOTrainer._generate_and_score_completions)
    lines = src.splitlines()
    start = next(i for i, l in enumerate(lines) if 'if self.multi_objective_aggregation == "sum_then_normalize"' in l)
    end = next(i for i, l in enumerate(lines) if "advantages = torch.nan_to_num(advantages" in l)
    return textwrap.dedent("\n".join(lines[start:end + 1]))


TRL_BLOCK = compile(_trl_advantage_block(), "<trl advantage block>", "exec")


def trl_advantages(groups: list[list[float]], scale_rewards: str) -> list[list[float]]:
    g = len(groups[0])
    rewards_per_func = torch.tensor([r for grp in groups for r in grp], dtype=torch.float64).unsqueeze(1)
    trainer = SimpleNamespace(multi_objective_aggregation="sum_then_normalize", scale_rewards=scale_rewards,
                              reward_weights=torch.ones(1, dtype=torch.float64), reward_funcs=[None])
    ns = {"self": trainer, "torch": torch, "nanstd": nanstd, "rewards_per_func": rewards_per_func,
          "num_generations": g, "device": "cpu",
          "unscorable_mask": torch.isnan(rewards_per_func).all(dim=1)}
    exec(TRL_BLOCK, ns)
    flat = ns["advantages"].tolist()
    return [flat[i * g:(i + 1) * g] for i in range(len(groups))]


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_advantages_match_trl(scale_rewards: str):
    rng = np.random.default_rng(7)
    for trial in range(40):
        g = int(rng.integers(2, 17))
        n = int(rng.integers(1, 9))
        groups = (rng.normal(0, rng.uniform(0.1, 20), size=(n, g))).tolist()
        if trial % 5 == 0:
            groups[0] = [1.5] * g  # a zero-spread group
        if trial % 7 == 0:
            groups[-1] = rng.integers(-3, 4, size=g).astype(float).tolist()  # ties
        ours = compute_advantages(groups, scale_rewards)
        theirs = trl_advantages(groups, scale_rewards)
        np.testing.assert_allclose(np.array(ours), np.array(theirs), rtol=0, atol=1e-6,
                                   err_msg=f"trial {trial} G={g} groups={n}")
