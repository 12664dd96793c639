"""The daemon exports the live policy's exact side probe as metrics."""

import pytest
import torch
from prometheus_client import REGISTRY

from daemon.service.policy import ResidentPolicy
from daemon.service.side_probe import export_side_probe
from learners.core import LearnerConfig, build_state
from learners.model import ModelConfig
from learners.probe import imbalance_gap, imbalance_probe


def _state(**kw):
    torch.set_num_threads(1)
    return build_state(LearnerConfig(model=ModelConfig(n_blocks=2, n_layer=1, n_embd=16, n_head=2), gen_len=12,
                                     sample_steps=12, device="cpu", **kw))


def test_exported_gauges_are_the_models_exact_probabilities():
    state = _state()
    with torch.no_grad():  # make the answer depend on the prompt, so the gap is not trivially 0
        state.model.blocks[1].head.weight[ord("l")] += 0.3 * state.model.blocks[1].wte.weight[ord("+")]
    policy = ResidentPolicy(state)
    out = export_side_probe(policy)
    want = imbalance_probe(state)
    assert out["policy_version"] == 0
    for key, probs in want.items():
        for side, p in probs.items():
            got = REGISTRY.get_sample_value("eigenloop_policy_side_probability",
                                            {"imbalance": key.removeprefix("im="), "side": side})
            assert got == pytest.approx(p)
    assert REGISTRY.get_sample_value("eigenloop_policy_imbalance_gap") == pytest.approx(imbalance_gap(want))
    assert imbalance_gap(want) != 0.0


def test_a_sampler_without_an_exact_probe_exports_nothing():
    policy = ResidentPolicy(_state(reveal_window=2, likelihood="elbo"))
    assert export_side_probe(policy) is None
