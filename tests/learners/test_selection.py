"""Block selection is a registry (``learners.selection.BLOCK_SELECTIONS``) that covers every
value the config, and so the settings, accept."""

from __future__ import annotations

import typing

import pytest

from daemon.service.learner_settings import learner_config
from learners.config import LearnerConfig
from learners.core import build_state
from learners.model import ModelConfig
from learners.selection import BLOCK_SELECTIONS, select_blocks
from schemas.settings import LearnerSettings, Settings

TINY = {"model": {"n_blocks": 3, "n_layer": 1, "n_embd": 32, "n_head": 2}, "gen_len": 12, "sample_steps": 12}


def test_the_registry_lists_every_selection_the_config_accepts():
    accepted = typing.get_args(typing.get_type_hints(LearnerConfig)["block_selection"])
    assert sorted(accepted) == sorted(BLOCK_SELECTIONS)
    with pytest.raises(ValueError, match=r"block_selection='top' is unknown; use one of \['all', 'round_robin'"):
        LearnerConfig(model=ModelConfig(**TINY["model"]), block_selection="top")


@pytest.mark.parametrize("name", sorted(BLOCK_SELECTIONS))
def test_every_selection_comes_through_the_settings(name: str):
    settings = Settings(learner=LearnerSettings(device="cpu", config={**TINY, "block_selection": name,
                                                                      "blocks_per_group": 2}))
    state = build_state(learner_config(settings))
    chosen = select_blocks(state)
    assert chosen == sorted(set(chosen)) and set(chosen) <= {0, 1, 2}
    assert len(chosen) == (3 if name == "all" else 2)


def test_round_robin_turns_and_topk_prefers_blocks_never_updated():
    state = build_state(LearnerConfig(model=ModelConfig(**TINY["model"]), block_selection="round_robin",
                                      blocks_per_group=2, device="cpu"))
    assert [select_blocks(state) for _ in range(3)] == [[0, 1], [0, 2], [1, 2]]
    state.loss_ema = [0.5, None, 0.9]
    assert BLOCK_SELECTIONS["topk_loss"](state) == [1, 2]
