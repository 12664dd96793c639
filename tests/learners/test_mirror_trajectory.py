"""Mirror learning, the exact trajectory likelihood and the exact side probe."""

import random

import pytest
import torch

from learners.core import LearnerConfig, build_state, learning_rows, sample, step
from learners.grammar import format_market_prompt, mirror_market_completion, mirror_market_prompt
from learners.grpo import encode_group
from learners.model import ModelConfig
from learners.probe import side_probabilities
from learners.trajectory import sequence_logprob, step_blocks, trajectory_block_terms
from schemas import GRPOGroup


def seq_config(**kw) -> LearnerConfig:
    base = dict(model=ModelConfig(n_blocks=2, n_layer=1, n_embd=32, n_head=2), gen_len=12, sample_steps=12,
                reveal_window=1, lr=1e-3, device="cpu")
    base.update(kw)
    return LearnerConfig(**base)


def test_mirror_prompt_flips_signed_features_only_and_is_its_own_inverse():
    p = format_market_prompt("BTCUSDT", {"ret_1s": 3.2, "ret_10s": -12.4, "ret_60s": 0.2, "spread_bps": 1.23,
                                         "imbalance": 0.351, "volume": 1234.0, "social_posts": 4})
    m = mirror_market_prompt(p)
    assert m == "M BTCUSDT sp=1.23 v=1.23k sn=4 r60=0 r10=+12 r1=-3 im=-0.35>"  # zero has no sign to flip
    assert mirror_market_prompt("M X r1=+0 im=-0.00>") == "M X r1=+0 im=-0.00>"  # nor in older prompts
    assert len(m) == len(p) and mirror_market_prompt(m) == p
    assert mirror_market_completion("long 1 h5") == "short 1 h5"
    assert mirror_market_completion("short 0.5 h30 s20") == "long 0.5 h30 s20"
    assert mirror_market_completion("flat 0 h5") == "flat 0 h5"
    assert mirror_market_completion("lng 1") == "lng 1"


def _group(prompt="M BTCUSDT r1=+3 im=+0.50>", task="market", comps=("long 1 h5", "short 1 h5", "flat 0 h5"),
           adv=(1.0, -1.0, 0.0)):
    return GRPOGroup(group_id="g", task=task, symbol="BTCUSDT", policy_version=0, prompt=prompt,
                     completions=list(comps), candidate_indices=list(range(len(comps))), rewards=list(adv),
                     advantages=list(adv), group_size=len(comps), ts_event=1_700_000_000_000_000_000)


def test_learning_rows_append_the_mirror_for_market_groups_only():
    state = build_state(seq_config())
    rows = learning_rows(state, _group())
    x0, P = rows.x0, rows.prompt_len
    assert rows.halves == 2 and x0.size(0) == 6
    tok = state.tokenizer
    assert tok.decode(x0[3, 1:P].tolist()) == "M BTCUSDT r1=-3 im=-0.50>"
    assert [tok.decode(r[P:].tolist()) for r in x0[3:]] == ["short 1 h5", "long 1 h5", "flat 0 h5"]
    social = _group(prompt="S h60 0:gm|1:moon>", task="social", comps=("pick 0 h60", "pick 1 h60"), adv=(1, -1))
    assert learning_rows(state, social).halves == 1
    assert learning_rows(build_state(seq_config(mirror=False)), _group()).halves == 1


def test_updates_say_whether_the_mirror_was_learned():
    state = build_state(seq_config())
    _, ups = step(state, _group())
    assert ups and all(u.mirrored and u.likelihood == "trajectory" for u in ups)
    social = _group(prompt="S h60 0:gm|1:moon>", task="social", comps=("pick 0 h60", "pick 1 h60"), adv=(1, -1))
    _, ups = step(state, social)
    assert ups and not any(u.mirrored for u in ups)


def _manual_logprob(state, prompt: str, completion_ids: list[int]) -> float:
    """log pi(o|q) by walking the sampler's steps one by one (the definition, written out)."""
    tok, model, L = state.tokenizer, state.model, state.config.gen_len
    p = [tok.bos_token_id, *tok.encode(prompt)]
    total = 0.0
    with torch.no_grad():
        for s in range(L):
            x = torch.tensor([p + completion_ids[:s] + [tok.mask_token_id] * (L - s)])
            block = step_blocks(model, L)[s]
            logits = model(x, 1 - s / L, block=block)[0, len(p) + s].float()
            logits[[tok.pad_token_id, tok.bos_token_id]] = float("-inf")
            total += float(torch.log_softmax(logits, -1)[completion_ids[s]])
            if completion_ids[s] == tok.eos_token_id:
                break  # decoding stops at the first [EOS]
    return total


def test_trajectory_likelihood_is_the_samplers_exact_probability():
    state = build_state(seq_config(model=ModelConfig(n_blocks=3, n_layer=1, n_embd=32, n_head=2)))
    prompt = "M BTCUSDT r1=+3 im=+0.50>"
    comps = sample(state, prompt, n=4, seed=3)
    x0, _ = encode_group(state.tokenizer, prompt, comps, 12)
    P = x0.size(1) - 12
    got = sequence_logprob(state.model, x0, P, (state.tokenizer.pad_token_id, state.tokenizer.bos_token_id),
                           state.tokenizer.eos_token_id)
    want = [_manual_logprob(state, prompt, x0[i, P:].tolist()) for i in range(4)]
    assert got.tolist() == pytest.approx(want, abs=1e-4)


def test_each_blocks_trajectory_term_reaches_only_that_block():
    state = build_state(seq_config())
    x0, _ = encode_group(state.tokenizer, "M X im=+0.50>", ["long 1 h5", "short 1 h5"], 12)
    P = x0.size(1) - 12
    terms = trajectory_block_terms(state.model, [1], x0, P, (257, 258), 259)
    terms[1]["share"].sum().backward()
    assert all(p.grad is None for p in state.model.blocks[0].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in state.model.blocks[1].parameters())


def test_exact_probe_matches_the_samplers_frequencies():
    torch.manual_seed(0)
    state = build_state(seq_config(model=ModelConfig(n_blocks=2, n_layer=1, n_embd=16, n_head=2)))
    prompt = "M BTCUSDT im=+0.50>"
    # an untrained model writes bytes nearly uniformly: bias it towards the side words so that
    # each side has a probability large enough to check against sampled frequencies
    tok = state.tokenizer
    with torch.no_grad():
        for blk in state.model.blocks:
            for ch in "lsf":
                blk.head.weight[tok.encode(ch)[0]] += 0.5 * torch.randn(blk.head.weight.size(1))
    probs = side_probabilities(state, prompt)
    assert sum(probs.values()) == pytest.approx(1.0)
    n = 3000
    texts = sample(state, prompt, n=n, seed=11)
    for side, word in (("long", "long "), ("short", "short "), ("flat", "flat ")):
        share = sum(t.startswith(word) for t in texts) / n
        se = max((probs[side] * (1 - probs[side]) / n) ** 0.5, 1e-3)
        assert abs(share - probs[side]) < 4 * se, (side, share, probs[side])


def test_exact_probe_needs_the_sequential_sampler():
    state = build_state(seq_config(reveal_window=2, likelihood="elbo"))
    with pytest.raises(ValueError, match="sequential"):
        side_probabilities(state, "M X im=+0.50>")


def test_forced_bytes_leave_the_reward_term_but_not_the_kl():
    from learners.core import reset_reference

    state = build_state(seq_config())
    reset_reference(state)
    x0, _ = encode_group(state.tokenizer, "M X im=+0.50>", ["long 1 h5", "short 1 h5"], 12)
    P = x0.size(1) - 12
    args = (state.model, [0, 1], x0, P, (257, 258), 259, state.ref_model)
    exact = trajectory_block_terms(*args)
    everything_free = trajectory_block_terms(*args, forced_p=1.0)  # no byte is written with p >= 1
    all_forced = trajectory_block_terms(*args, forced_p=1e-12)  # every byte counts as forced
    for b in (0, 1):
        torch.testing.assert_close(everything_free[b]["share"], exact[b]["share"])
        assert torch.count_nonzero(all_forced[b]["share"]) == 0
        torch.testing.assert_close(all_forced[b]["kl"], exact[b]["kl"])  # the KL still sees every byte
