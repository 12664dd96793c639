"""Short efficacy run (one symbol, a couple of hundred decisions): are the figures consistent?

Asserts only bookkeeping, never efficacy:
- every baseline is reproduced from fills recomputed here, from the raw capture lines, by a
  fill written independently of ``streams.rewards`` (entry at the touch 100 ms after the
  decision, exit at the touch at the horizon, fee per side);
- every candidate's reward in the GRPO group the learner stepped on, and the learned policy's
  figure, equal ``streams.rewards.paper_fill`` of that completion (parsed and clamped as the
  actor does) against the recorded book;
- the summary's table is the mean of those records, the learner moved once per group with
  signal, and the PNG and JSON exist;
- two seeds run as independent learners on the same decisions, and the pooled figures average
  each decision over them.
"""

from __future__ import annotations

import gzip
import json
import math
import random
from bisect import bisect_right
from pathlib import Path

import pytest

from daemon.tools.efficacy import EfficacyConfig, run_efficacy
from learners.grammar import Invalid, parse_action
from schemas.market import MarketFeatures
from schemas.settings import RewardConfig
from streams.rewards import BookPath, horizon_end_ns, paper_fill

SYMBOL_FILES = ["spot_btcusdt_20240808.gz", "spot_btcusdt_20240809.gz"]
FEES = [0.0, 4.5]
SEEDS = [0, 1]
HORIZON_NS = 5_000_000_000
LATENCY_NS = 100_000_000
TINY = {"model": {"n_blocks": 2, "n_layer": 1, "n_embd": 32, "n_head": 2}, "gen_len": 20,
        "sample_steps": 4, "remasking": "random", "reveal_window": 4, "mc_draws": 1, "device": "cpu",
        "likelihood": "elbo"}  # 4 steps for 20 bytes: fast, and not sequential, so the ELBO


@pytest.fixture(scope="module")
def run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("efficacy")
    cfg = EfficacyConfig(captures=shared_data / "exchange_binance", include=SYMBOL_FILES,
                         holdout=["*_20240809.gz"], fees_bps=FEES, epochs=1, max_decisions=100,
                         group_size=4, learner=TINY, bootstrap_steps=40, lr=1e-3, cache_dir=None,
                         reference_capture=SYMBOL_FILES[0], jobs=1, probe_every=0, seeds=SEEDS)
    summary = run_efficacy(cfg, out)
    records = {fee: _records(out, fee, 0) for fee in FEES}  # the checks below read the first seed's
    return out, summary, records


def _records(out: Path, fee: float, seed: int) -> list[dict]:
    return [json.loads(line) for line in open(out / f"decisions-fee{fee:g}-seed{seed}.jsonl")]


def _raw_quotes(path: Path) -> list[tuple[int, float, float, float, float]]:
    """(receive ns, bid, bid qty, ask, ask qty) straight from the gz lines, no project code."""
    out = []
    with gzip.open(path, "rt") as fh:
        for line in fh:
            recv, _, payload = line.partition(" ")
            if "@bookTicker" not in payload[:60]:
                continue
            d = json.loads(payload)["data"]
            b, a = float(d["b"]), float(d["a"])
            if b > 0 and a > 0:
                out.append((int(recv), b, float(d["B"]), a, float(d["A"])))
    return out


@pytest.fixture(scope="module")
def quotes(shared_data: Path):
    """Per phase: the quotes the phase's decisions may use (a phase never sees the other's)."""
    root = shared_data / "exchange_binance" / "spot"
    return {"train1": _raw_quotes(root / SYMBOL_FILES[0]), "heldout": _raw_quotes(root / SYMBOL_FILES[1])}


def _touch(q, t_ns):
    i = bisect_right([x[0] for x in q], t_ns) - 1
    assert i >= 0, "a decision before the first quote"
    return q[i]


def _independent_fills(q, t0: int, fee: float) -> dict[str, float]:
    _, bid_in, _, ask_in, _ = _touch(q, t0 + LATENCY_NS)
    _, bid_out, _, ask_out, _ = _touch(q, t0 + HORIZON_NS)
    return {"long": (bid_out - ask_in) / ask_in * 1e4 - 2 * fee,
            "short": (bid_in - ask_out) / bid_in * 1e4 - 2 * fee, "flat": 0.0}


def test_baselines_are_reproduced_from_independent_fills(run, quotes):
    _, _, records = run
    seed = 0  # the records are seed 0's; the random baseline draws from the run's seed
    for fee in FEES:
        assert len(records[fee]) >= 150, "the short run should close a couple of hundred decisions"
        for r in records[fee]:
            q = quotes[r["phase"]]
            fills = _independent_fills(q, r["t0_ns"], fee)
            for side in ("long", "short", "flat"):
                assert r["fills"][side] == pytest.approx(fills[side], abs=1e-9)
            _, _, bq, _, aq = _touch(q, r["t0_ns"])  # the quote the context held at the decision
            im = (bq - aq) / (bq + aq)
            assert r["imbalance"] == pytest.approx(im, abs=1e-12)
            side = "long" if im > 0.6 else "short" if im < -0.6 else "flat"
            pick = random.Random(f"{seed}|{r['symbol']}|{r['t0_ns']}").choice(("long", "short", "flat"))
            assert r["heuristic"] == pytest.approx(fills[side], abs=1e-9)
            assert r["random"] == pytest.approx(fills[pick], abs=1e-9)
            assert r["flat"] == 0.0
            assert r["hindsight"] == pytest.approx(max(fills.values()), abs=1e-9)


def test_learned_rewards_come_from_the_reward_function(run, quotes):
    _, _, records = run
    valid = 0
    for fee in FEES:
        cfg = RewardConfig(latency_ms=100, fee_bps=fee, slippage_model="none", kind="pnl")
        books = {phase: BookPath(q) for phase, q in quotes.items()}
        for r in records[fee]:
            for i, text in enumerate(r["completions"]):
                spec = parse_action(text, "market")
                if isinstance(spec, Invalid):
                    expected = cfg.min_reward
                else:
                    valid += 1
                    if spec.horizon_s > 5:
                        spec = spec.model_copy(update={"horizon_s": 5.0})  # the actor's clamp
                    expected = paper_fill(spec, r["t0_ns"], books[r["phase"]], cfg).reward
                assert r["rewards"][i] == pytest.approx(expected, abs=1e-9), (text, r["t0_ns"])
                assert r["bps"][i] == pytest.approx(expected, abs=1e-9)
            assert r["learned"] == r["bps"][r["executed"]]
            assert r["group_mean"] == pytest.approx(sum(r["bps"]) / len(r["bps"]))
            if any(s != "invalid" for s in r["sides"]):
                assert r["executed_side"] != "invalid", "the actor executes a valid candidate when it has one"
    # a 40-step bootstrap of a tiny model rarely writes a valid action; the valid path is
    # covered below with hand-written actions through the same driver code
    assert valid >= 0


def test_valid_actions_are_scored_and_learned_like_the_live_loop(run, quotes):
    """Hand-written candidates (the tiny model seldom parses) through the driver's close path."""
    from daemon.service.actor import Decision, clamp_horizon
    from daemon.service.policy import ResidentPolicy
    from daemon.tools.efficacy.driver import LoopDriver, OpenGroup
    from learners.core import LearnerConfig, build_state
    from schemas import Action
    from schemas.settings import ActorSettings, GroupConfig

    _, _, records = run
    texts = ["long 1 h5", "short 1 h5", "flat 0 h5", "short 0.5 h5 s1", "long 0.25 h300", "lnog 1 h5"]
    policy = ResidentPolicy(build_state(LearnerConfig(**TINY)))
    for fee in FEES:
        cfg = RewardConfig(latency_ms=100, fee_bps=fee, slippage_model="none", kind="pnl")
        driver = LoopDriver(policy, cfg, GroupConfig(group_size=len(texts)), ActorSettings(), seed=0)
        book = BookPath(quotes["train1"])
        for r in [r for r in records[fee] if r["phase"] == "train1"][:20]:
            actions = []
            for i, text in enumerate(texts):
                spec = parse_action(text, "market")
                common = dict(group_id=f"g{r['t0_ns']}", candidate_index=i, group_size=len(texts), policy_version=0,
                              seed=0, prompt_id="p", symbol=r["symbol"], prompt=r["prompt"], completion=text,
                              ts_event=r["t0_ns"], executed=i == 0)
                actions.append(Action(**common, invalid_reason=spec.reason) if isinstance(spec, Invalid)
                               else Action(**common, parsed=clamp_horizon(spec, 5.0)))
            d = Decision(r["symbol"], "binance", r["t0_ns"], MarketFeatures(imbalance=r["imbalance"]), ())
            version = policy.policy_version
            opened = OpenGroup(d, actions, [horizon_end_ns(a) for a in actions])
            rec = driver._close("train1", opened, book, lambda s, t: "x")
            fills = _independent_fills(quotes["train1"], r["t0_ns"], fee)
            assert rec["rewards"][0] == pytest.approx(fills["long"], abs=1e-9)
            assert rec["rewards"][1] == pytest.approx(fills["short"], abs=1e-9)
            assert rec["rewards"][2] == 0.0
            stop = paper_fill(actions[3].parsed, r["t0_ns"], book, cfg).reward  # the stop walks the path
            assert rec["rewards"][3] == pytest.approx(stop, abs=1e-9)
            assert rec["rewards"][4] == pytest.approx(0.25 * (fills["long"]), abs=1e-9)  # clamped to 5 s
            assert rec["rewards"][5] == cfg.min_reward
            assert rec["learned"] == rec["rewards"][0] and rec["learned_unit"] == rec["rewards"][0]
            assert policy.policy_version == version + 1, "a group with spread must move the learner"
    from daemon.service.side_probe import probe_policy as probe
    from learners.probe import PROBE_IMBALANCES

    # the probe is exact, so it needs the sequential sampler: the same tiny model, one byte per step
    sequential = ResidentPolicy(build_state(LearnerConfig(**{**TINY, "sample_steps": TINY["gen_len"],
                                                             "reveal_window": 1, "likelihood": "trajectory"})))
    answers = probe(sequential)
    policy = sequential
    assert answers["policy_version"] == policy.policy_version
    for im in PROBE_IMBALANCES:
        assert sum(answers[f"im={im:+.1f}"].values()) == pytest.approx(1.0)
    lo, hi = answers["im=-0.8"], answers["im=+0.8"]
    assert answers["gap"] == pytest.approx((hi["long"] - hi["short"]) - (lo["long"] - lo["short"]))


def test_summary_is_the_mean_of_the_records(run):
    out, summary, records = run
    for fee in FEES:
        fs = summary["fees"][f"{fee:g}"]["per_seed"]["0"]  # the seed the records are from
        held = [r for r in records[fee] if r["phase"] == "heldout"]
        train = [r for r in records[fee] if r["phase"] == "train1"]
        for row in ("learned", "learned_unit", "random", "flat", "heuristic", "hindsight"):
            xs = [r[row] for r in held]
            m = sum(xs) / len(xs)
            se = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))
            assert fs["splits"]["heldout"][row]["mean"] == pytest.approx(m)
            assert fs["splits"]["heldout"][row]["se"] == pytest.approx(se)
            half = train[len(train) // 2:]
            expected = sum(r[row] for r in half) / len(half)
            assert fs["splits"]["train_second_half"][row]["mean"] == pytest.approx(expected)
        # the learner stepped once per group it learned from: every group here, since the KL to
        # the prior applies to groups without reward spread too (none is a dropped partial)
        assert fs["final_policy_version"] == len(records[fee])
        assert fs["reference_check"]["decisions"] == len(train)
    assert (out / "learning_curve.png").stat().st_size > 10_000
    assert json.loads((out / "summary.json").read_text())["fees"].keys() == {"0", "4.5"}


def test_seeds_are_independent_runs_pooled_per_decision(run):
    out, summary, _ = run
    assert set(summary["bootstrap"]) == {"0", "1"}
    assert summary["bootstrap"]["0"]["path"] != summary["bootstrap"]["1"]["path"]  # a bootstrap per seed
    for fee in FEES:
        fs = summary["fees"][f"{fee:g}"]
        assert fs["seeds"] == SEEDS and set(fs["per_seed"]) == {"0", "1"}
        per_seed = {s: [r for r in _records(out, fee, s) if r["phase"] == "heldout"] for s in SEEDS}
        assert per_seed[0] and per_seed[1]
        # the random baseline draws from each run's own seed: the two differ somewhere
        assert any(a["random_pick"] != b["random_pick"] for a, b in zip(per_seed[0], per_seed[1]))
        by_decision: dict[tuple, list[float]] = {}
        for s in SEEDS:
            for r in per_seed[s]:
                by_decision.setdefault((r["symbol"], r["t0_ns"]), []).append(r["learned"] - r["random"])
        diffs = [sum(v) / len(v) for v in by_decision.values()]
        pooled = fs["paired"]["heldout"]["pooled"]["learned-random"]
        assert pooled["n"] == len(by_decision)  # decisions, not decisions x seeds
        assert pooled["mean"] == pytest.approx(sum(diffs) / len(diffs))
        for s in SEEDS:
            own = fs["per_seed"][str(s)]["paired"]["heldout"]["pooled"]["learned-random"]
            xs = [r["learned"] - r["random"] for r in per_seed[s]]
            assert own["mean"] == pytest.approx(sum(xs) / len(xs))
        means = [fs["per_seed"][str(s)]["splits"]["heldout"]["learned"]["mean"] for s in SEEDS]
        assert fs["across_seeds"]["splits"]["heldout"]["learned"]["mean"] == pytest.approx(sum(means) / 2)
    md = (out / "summary.md").read_text()
    assert "learned − random" in md and "mean across seeds" in md
