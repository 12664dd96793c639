"""The action grammar as a sampling constraint: every candidate parses, and the likelihood stays exact."""

import math

import pytest
import torch

from learners.constraint import action_trie, market_actions, social_choices
from learners.core import LearnerConfig, build_state, learning_rows, sample, step
from learners.grammar import format_market_prompt, format_social_prompt, parse_action
from learners.grpo import encode_group
from learners.model import ModelConfig
from learners.probe import side_probabilities
from learners.trajectory import sequence_logprob
from schemas import GRPOGroup

PROMPT = format_market_prompt("BTCUSDT", {"ret_1s": 1.0, "spread_bps": 0.05, "imbalance": 0.4, "volume": 5e5})


def config(**kw) -> LearnerConfig:
    base = dict(model=ModelConfig(n_blocks=2, n_layer=1, n_embd=32, n_head=2), gen_len=12, sample_steps=12,
                reveal_window=1, lr=1e-3, device="cpu")
    return LearnerConfig(**{**base, **kw})


def test_every_action_in_the_trie_parses_and_fits():
    trie = action_trie(PROMPT, build_state(config()).tokenizer, 12)
    assert {"long 1 h5", "short 1 h5", "flat 0 h5", "long 0.5 h30"} <= set(trie.actions)
    assert all(len(a) <= 12 for a in trie.actions) and "short 0.25 h300" not in trie.actions  # 15 bytes
    for a in trie.actions:
        spec = parse_action(a, "market")
        assert spec.kind == "market", (a, spec)
    assert len(trie.actions) < len(market_actions())  # the long ones (stops) do not fit 12 bytes


def test_an_untrained_model_samples_only_actions_when_constrained():
    state = build_state(config())  # random weights: unconstrained it writes bytes, not actions
    free = sample(build_state(config(constrain=False)), PROMPT, n=32, seed=0)
    assert sum(parse_action(c, "market").kind == "market" for c in free) < 8
    texts = sample(state, PROMPT, n=64, seed=0)
    assert all(parse_action(c, "market").kind == "market" for c in texts)
    assert len({c.split()[0] for c in texts}) == 3  # and still all three sides: it samples, it does not pick


def test_the_constrained_likelihood_is_exact_it_sums_to_one_over_the_grammar():
    state = build_state(config())
    tok, trie = state.tokenizer, action_trie(PROMPT, state.tokenizer, 12)
    x0, _ = encode_group(tok, PROMPT, trie.actions, 12)
    P = x0.size(1) - 12
    logp = sequence_logprob(state.model, x0, P, (tok.pad_token_id, tok.bos_token_id), tok.eos_token_id,
                            allowed=trie.step_masks(x0[:, P:]))
    assert float(logp.exp().sum()) == pytest.approx(1.0, abs=1e-4)


def test_a_completion_off_the_grammar_keeps_a_finite_likelihood():
    state = build_state(config())
    tok, trie = state.tokenizer, action_trie(PROMPT, state.tokenizer, 12)
    x0, _ = encode_group(tok, PROMPT, ["llat 1 h5", "long 1 h5"], 12)
    P = x0.size(1) - 12
    masks = trie.step_masks(x0[:, P:])
    assert masks[0, 1].all()  # "l" is allowed, "ll" is not: unconstrained from that byte on
    assert not masks[1, 1].all()
    logp = sequence_logprob(state.model, x0, P, (tok.pad_token_id, tok.bos_token_id), tok.eos_token_id, allowed=masks)
    assert torch.isfinite(logp).all()


def test_the_probe_has_no_invalid_mass_when_constrained():
    p = side_probabilities(build_state(config()), PROMPT)
    assert p["invalid"] == pytest.approx(0.0, abs=1e-6)
    assert p["long"] + p["short"] + p["flat"] == pytest.approx(1.0, abs=1e-6)


def test_social_prompts_are_constrained_to_their_own_posts():
    prompt = format_social_prompt(["gm", "btc moon", "rekt"], 60)
    assert social_choices(prompt) == 3
    trie = action_trie(prompt, build_state(config()).tokenizer, 12)
    assert {"pick 0 h60", "pick 2 h5"} <= set(trie.actions) and not any(a.startswith("pick 3") for a in trie.actions)
    texts = sample(build_state(config()), prompt, n=32, seed=1)
    assert all(parse_action(c, "social", n_choices=3).kind == "social" for c in texts)


def test_a_group_learns_its_rows_with_the_masks_and_steps():
    state = build_state(config())
    comps = ["long 1 h5", "short 1 h5", "flat 0 h5", "llat 1 h5"]
    group = GRPOGroup(group_id="g", symbol="BTCUSDT", policy_version=0, prompt=PROMPT, completions=comps,
                      candidate_indices=[0, 1, 2, 3], rewards=[1.0, -1.0, 0.0, -50.0],
                      advantages=[1.0, -1.0, 0.0, -2.0], group_size=4)
    rows = learning_rows(state, group)
    assert rows.allowed is not None and rows.allowed.shape == (8, 12, state.tokenizer.vocab_size)
    _, updates = step(state, group)
    assert len(updates) == 2 and all(math.isfinite(u.loss) for u in updates)


def test_constrain_needs_the_sequential_sampler_and_defaults_to_it():
    assert config().constrained is True
    assert config(reveal_window=2, likelihood="elbo").constrained is False
    with pytest.raises(ValueError, match="sequential sampler"):
        config(reveal_window=2, likelihood="elbo", constrain=True)
