"""A group cannot poison the model.

The fuzz test feeds mutated ``learn.groups`` records, mixed with valid ones, down the learner
loop's path (``schemas.decode`` -> ``GRPOGroup`` -> ``learners.core.step``): nothing but
``DecodeError`` may escape, every weight stays finite, and the model ends bit-identical to a
clean run of the valid records alone. The focused tests pin the step's refusal: a refused step
leaves weights, optimiser moments, RNG and counters exactly as they were.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from typing import Callable

import pytest
import torch

from learners import core
from learners.core import LearnerConfig, LearnerState, block_checksum, build_state, step
from learners.model import ModelConfig
from schemas import GRPOGroup, decode, encode
from schemas.codec import DecodeError
from schemas.learn import MAX_CANDIDATES, MAX_COMPLETION_CHARS, MAX_PROMPT_CHARS

# tests/e2e/harness.py's TINY_LEARNER with a narrower model: the fuzz steps it ~80 times
TINY = dict(model=ModelConfig(n_blocks=2, n_layer=1, n_embd=32, n_head=2), gen_len=12, sample_steps=12,
            lr=3e-4, seed=0, device="cpu")
N_RECORDS = 2000
N_VALID = 40
ACTIONS = ["long 0.5 h5", "short 1 h10", "flat 0 h5", "long 2 h30 s20", "short 0.1 h5", "pick 1 h60", "pick 0 h60"]


@pytest.fixture(autouse=True)
def deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


def fresh() -> LearnerState:
    return build_state(LearnerConfig(**TINY))


def checksum(state: LearnerState) -> str:
    h = hashlib.sha256()
    for b in range(len(state.model.blocks)):
        h.update(block_checksum(state.model, b).encode())
    return h.hexdigest()


def valid_group(rng: random.Random, i: int) -> GRPOGroup:
    g = rng.randint(2, 6)
    if rng.random() < 0.8:
        sign = rng.choice("+-")
        task, prompt = "market", f"M BTCUSDT r1={sign}{rng.random():.2f} imb={rng.choice('+-')}{rng.random():.2f}>"
    else:
        task, prompt = "social", f"S h60 0:{rng.choice(['gm', 'wen', 'hodl'])}|1:{rng.choice(['ngmi', 'lfg'])}>"
    rewards = [round(rng.gauss(0, 1), 3) for _ in range(g)]
    kind = rng.random()
    if kind < 0.1:  # no spread: the regulariser's step only
        rewards = [0.25] * g
    mean = sum(rewards) / g
    std = (sum((r - mean) ** 2 for r in rewards) / g) ** 0.5
    adv = [(r - mean) / (std + 1e-4) for r in rewards]
    status, skip = ("skipped", "partial 2/3 dropped") if kind > 0.95 else ("complete", None)
    return GRPOGroup(group_id=f"ok{i}", symbol="BTCUSDT", task=task, policy_version=0, prompt=prompt,
                     completions=[rng.choice(ACTIONS) for _ in range(g)], candidate_indices=list(range(g)),
                     rewards=rewards, advantages=adv if status == "complete" else [0.0] * g, group_size=g,
                     status=status, skip_reason=skip, ts_event=1_700_000_000_000_000_000 + i)


# --- mutations: each returns a record that must be rejected, by decode or by the step -----------

SLOT = "__SLOT__"


def dumps(d: dict, rng: random.Random, verbatim: dict[str, str] | None = None) -> bytes:
    """JSON of ``d``, compact (decode's fast path) or spaced (its general path), with the values
    ``SLOT<k>`` replaced by ``verbatim[k]`` as written (huge ints, deep nesting, NaN literals)."""
    seps = (",", ":") if rng.random() < 0.5 else (", ", ": ")
    out = json.dumps(d, separators=seps)
    for k, text in (verbatim or {}).items():
        out = out.replace(json.dumps(SLOT + k), text)
    return out.encode()


STR_FIELDS = ["event_id", "source", "key", "group_id", "prompt_id", "symbol", "prompt"]
INT_FIELDS = ["ts_event", "ts_ingest", "policy_version", "group_size", "window_end_ns"]
LITERAL_FIELDS = ["task", "scale_rewards", "status", "close_reason"]
LIST_FIELDS = ["completions", "candidate_indices", "rewards", "advantages"]
REQUIRED = ["type", "schema_version", "group_id", "symbol", "policy_version", "prompt", *LIST_FIELDS, "group_size"]


def m_truncate(rng, g):
    raw = encode(g)
    return raw[:rng.randrange(1, len(raw))]


def m_high_bit(rng, g):  # an ASCII record with one byte >= 0x80: never valid UTF-8
    raw = bytearray(encode(g))
    raw[rng.randrange(len(raw))] |= 0x80
    return bytes(raw)


def m_control_byte(rng, g):  # a raw control character is invalid inside and outside JSON strings
    raw = encode(g)
    at = rng.randrange(1, len(raw))
    return raw[:at] + bytes([rng.choice([0, 1, 7, 8, 11, 12, 27, 31])]) + raw[at:]


def m_concatenated(rng, g):
    return encode(g) + rng.choice([b"", b" ", b"\n"]) + encode(g)


def m_garbage(rng, g):
    return bytes(rng.randrange(256) for _ in range(rng.randint(1, 80)))


def m_non_finite(rng, g):
    d = json.loads(encode(g))
    field = rng.choice(["rewards", "advantages"])
    d[field][rng.randrange(len(d[field]))] = SLOT + "x"
    literal = rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "-1e400"])
    return dumps(d, rng, {"x": literal})


def m_length_mismatch(rng, g):
    d = json.loads(encode(g))
    field = rng.choice(LIST_FIELDS)
    if rng.random() < 0.5:
        d[field].pop()
    else:
        d[field].append({"completions": "flat 0 h5", "candidate_indices": 99}.get(field, 0.0))
    return dumps(d, rng)


def m_huge_int(rng, g):
    d = json.loads(encode(g))
    digits = ("-" if rng.random() < 0.2 else "") + "9" * rng.randint(4301, 6000)
    where = rng.choice([*INT_FIELDS, "schema_version", "candidate_indices", "rewards", "advantages"])
    if isinstance(d[where], list):
        d[where][rng.randrange(len(d[where]))] = SLOT + "x"
    else:
        d[where] = SLOT + "x"
    return dumps(d, rng, {"x": digits})


def m_deep_nesting(rng, g):
    d = json.loads(encode(g))
    depth = rng.choice([50, 2_000, 20_000, 100_000])
    open_, close = rng.choice([("[", "]"), ('{"a":', "}")])
    d[rng.choice(list(d))] = SLOT + "x"
    return dumps(d, rng, {"x": open_ * depth + "1" + close * depth})


def m_wrong_type(rng, g):
    d = json.loads(encode(g))
    field = rng.choice([*STR_FIELDS, *INT_FIELDS, *LITERAL_FIELDS, *LIST_FIELDS, "skip_reason", "type",
                        "schema_version"])
    n = len(d["completions"])
    if field in STR_FIELDS:
        value = rng.choice([None, 1, 1.5, True, [], {}, ["x"]])
    elif field in INT_FIELDS:
        value = rng.choice([None, "1", 1.5, True, [], {}])
    elif field in LITERAL_FIELDS:
        value = rng.choice([None, 1, "bogus", ["market"]])
    elif field == "completions":
        value = rng.choice([None, "long 1 h5", {}, list(range(n)), [None] * n])
    elif field == "candidate_indices":
        value = rng.choice([None, "0", [0.5] * n, [str(i) for i in range(n)], [True] * n])
    elif field in ("rewards", "advantages"):
        value = rng.choice([None, "1.0", [str(x) for x in d[field]], [True] * n, [None] * n, [[1.0]] * n])
    elif field == "skip_reason":
        value = rng.choice([1, [], {}, True])
    elif field == "type":
        value = rng.choice(["learn.nope", "market.trade", "learn.update", None, 7])
    else:  # schema_version: newer than the reader, older without an upgrader, or not an int
        value = rng.choice([2, 0, -1, "1", None, 1.0])
    d[field] = value
    return dumps(d, rng)


def m_missing_or_extra(rng, g):
    d = json.loads(encode(g))
    if rng.random() < 0.5:
        del d[rng.choice(REQUIRED)]
    else:
        d[rng.choice(["extra", "reward", "weights", "__class__"])] = rng.choice([1, "x", None, []])
    return dumps(d, rng)


def m_out_of_bounds(rng, g):
    d = json.loads(encode(g))
    n = len(d["completions"])
    kind = rng.choice(["prompt", "completion", "candidates", "negative"])
    if kind == "prompt":
        d["prompt"] = "M " + "x" * (MAX_PROMPT_CHARS + rng.randint(0, 100))
    elif kind == "completion":
        d["completions"][rng.randrange(n)] = "long " + "9" * (MAX_COMPLETION_CHARS + rng.randint(0, 100))
    elif kind == "candidates":
        m = MAX_CANDIDATES + rng.randint(1, 20)
        d.update(completions=["flat 0 h5"] * m, candidate_indices=list(range(m)),
                 rewards=[float(i % 3) for i in range(m)], advantages=[float(i % 3) - 1 for i in range(m)])
    else:
        d[rng.choice(["policy_version", "group_size", "ts_event", "ts_ingest"])] = rng.choice([-1, -(2 ** 62)])
    return dumps(d, rng)


def m_float32_overflow(rng, g):
    """Finite in the record (float64), inf as float32: decodes, and the step must refuse it."""
    d = json.loads(encode(g))
    d["advantages"][rng.randrange(len(d["advantages"]))] = rng.choice([1, -1]) * 10 ** rng.uniform(38.6, 307)
    return dumps(d, rng)


MUTATIONS: list[Callable[[random.Random, GRPOGroup], bytes]] = [
    m_truncate, m_high_bit, m_control_byte, m_concatenated, m_garbage, m_non_finite, m_length_mismatch,
    m_huge_int, m_deep_nesting, m_wrong_type, m_missing_or_extra, m_out_of_bounds, m_float32_overflow,
]


def learn(state: LearnerState, raw: bytes) -> tuple[str, list]:
    """The learner loop's path for one record: ("decode", []), ("refused", []) or ("applied", updates)."""
    try:
        group = decode(raw)
    except DecodeError:
        return "decode", []
    if not isinstance(group, GRPOGroup):
        return "decode", []  # the loop dead-letters it as WrongType
    _, updates = step(state, group)
    return ("refused", []) if state.last_refusal is not None else ("applied", updates)


def assert_finite(state: LearnerState) -> None:
    for name, p in state.model.named_parameters():
        assert torch.isfinite(p).all(), f"{name} is not finite"
    for opt in state.optimizers:
        for st in opt.state.values():
            for k, v in st.items():
                assert torch.isfinite(v).all(), f"optimiser {k} is not finite"


def test_mutated_groups_never_reach_the_model():
    rng = random.Random(17)
    valid = [valid_group(rng, i) for i in range(N_VALID)]
    at = set(rng.sample(range(N_RECORDS), N_VALID))  # where the valid records sit, in their order
    next_valid = iter(valid)
    mixed: list[tuple[str, bytes]] = []
    for n in range(N_RECORDS):
        if n in at:
            mixed.append(("valid", encode(next(next_valid))))
        else:
            mutate = rng.choice(MUTATIONS)
            mixed.append((mutate.__name__, mutate(rng, rng.choice(valid))))

    state = fresh()
    outcome: dict[str, int] = {}
    wrongly_accepted = []
    for n, (kind, raw) in enumerate(mixed):
        got, updates = learn(state, raw)
        outcome[f"{kind}:{got}"] = outcome.get(f"{kind}:{got}", 0) + 1
        if kind == "valid":
            assert got == "applied", f"record {n}: a valid group was {got}: {state.last_refusal}"
        elif got == "applied":
            wrongly_accepted.append(f"{n} {kind}: {raw[:200]!r}")
        if n % 250 == 0:
            assert_finite(state)
    assert not wrongly_accepted, "poison reached the model:\n" + "\n".join(wrongly_accepted)
    assert_finite(state)
    assert outcome.get("m_float32_overflow:refused", 0) > 50  # the step's own guard was exercised
    assert state.refused_steps == outcome["m_float32_overflow:refused"]

    clean = fresh()
    for g in valid:
        assert learn(clean, encode(g))[0] == "applied"
    assert clean.policy_version == state.policy_version > 0
    assert checksum(state) == checksum(clean)
    assert clean.generator.get_state().equal(state.generator.get_state())


# --- the refusal itself ---------------------------------------------------------------------------

def good(i: int = 0, advantages=(1.0, -0.5, -0.5)) -> GRPOGroup:
    return GRPOGroup(group_id=f"g{i}", symbol="BTCUSDT", policy_version=0, prompt=f"M BTCUSDT r1=+0.{i}>",
                     completions=["long 0.5 h5", "short 1 h10", "flat 0 h5"], candidate_indices=[0, 1, 2],
                     rewards=list(advantages), advantages=list(advantages), group_size=3,
                     ts_event=1_700_000_000_000_000_000 + i)


def frozen(state: LearnerState) -> dict:
    """Everything a refused step must leave alone, copied."""
    return {
        "params": [p.detach().clone() for p in state.model.parameters()],
        "moments": [copy.deepcopy(o.state_dict()) for o in state.optimizers],
        "rng": state.generator.get_state().clone(),
        "counters": (state.policy_version, state.step, list(state.block_steps), state.skipped_groups,
                     state.rr_cursor, list(state.loss_ema)),
    }


def assert_same(a: dict, b: dict) -> None:
    assert all(torch.equal(p, q) for p, q in zip(a["params"], b["params"]))
    for sa, sb in zip(a["moments"], b["moments"]):
        assert sa["state"].keys() == sb["state"].keys()
        for k in sa["state"]:
            for name, v in sa["state"][k].items():
                assert torch.equal(v, sb["state"][k][name]), f"moment {name} of param {k} changed"
        assert sa["param_groups"] == sb["param_groups"]
    assert torch.equal(a["rng"], b["rng"])
    assert a["counters"] == b["counters"]


def trained(n: int = 2, **kw) -> LearnerState:
    state = build_state(LearnerConfig(**{**TINY, **kw}))
    for i in range(n):
        state, ups = step(state, good(i))
        assert ups
    return state


@pytest.mark.parametrize("advantages", [
    [float("nan"), 1.0, -1.0], [1.0, float("inf"), -1.0], [float("-inf")] * 3, [1e39, -1e39, 0.0], [1.0, -1.0],
], ids=["nan", "inf", "all-inf", "float32-overflow", "length-mismatch"])
def test_a_step_with_non_finite_advantages_is_refused_and_changes_nothing(advantages):
    state = trained()
    before = frozen(state)
    # model_construct skips the schema's checks, as a group built in code would
    bad = GRPOGroup.model_construct(**{**good(9).model_dump(), "advantages": advantages})
    state, updates = step(state, bad)
    assert updates == [] and state.last_refusal and state.refused_steps == 1
    assert_same(before, frozen(state))
    state, updates = step(state, good(9))  # the next good group is learned, and clears the refusal
    assert updates and state.last_refusal is None


def reference_after(groups: list[GRPOGroup], **kw) -> str:
    state = trained(**kw)
    for g in groups:
        state, ups = step(state, g)
        assert ups
    return checksum(state)


def test_non_finite_gradients_of_one_block_refuse_every_block():
    state = trained()
    before = frozen(state)
    poisoned = next(state.model.blocks[1].parameters())
    handle = poisoned.register_hook(lambda grad: grad * float("nan"))
    state, updates = step(state, good(5))
    handle.remove()
    assert updates == [] and state.refused_steps == 1
    assert "block 1" in state.last_refusal and "block 0" not in state.last_refusal
    assert_same(before, frozen(state))
    assert all(p.grad is None for p in state.model.parameters())
    # the model goes on exactly as if the refused step had never been tried
    state, _ = step(state, good(6))
    assert checksum(state) == reference_after([good(6)])


def test_a_non_finite_loss_is_refused(monkeypatch):
    state = trained()
    before = frozen(state)
    real = core.block_loss
    monkeypatch.setattr(core, "block_loss", lambda *a, **kw: real(*a, **kw) + float("inf"))
    state, updates = step(state, good(5))
    assert updates == [] and "loss inf" in state.last_refusal
    assert_same(before, frozen(state))


def test_a_refusal_in_a_later_inner_step_rolls_the_earlier_ones_back():
    kw = dict(inner_steps=3, block_selection="round_robin", blocks_per_group=1)
    state = trained(**kw)
    before = frozen(state)
    calls = []

    def third_backward_is_nan(grad):
        calls.append(1)
        return grad * float("nan") if len(calls) == 3 else grad

    block = state.rr_cursor  # the block round robin picks next
    handle = next(state.model.blocks[block].parameters()).register_hook(third_backward_is_nan)
    state, updates = step(state, good(5))
    handle.remove()
    assert len(calls) == 3, "two inner steps were taken before the refusal"
    assert updates == [] and f"block {block}" in state.last_refusal
    assert_same(before, frozen(state))
    state, _ = step(state, good(6))
    assert checksum(state) == reference_after([good(6)], **kw)
