"""The efficacy report's statistics on small hand-made records (no learner, no captures).

Every expected figure is computed by hand in the test (or in its comment), not by the code under
test: paired differences and their SE, per capture vs pooled, seeds pooled per decision, the
spread across seeds, the targets (the probe gap from the last probe) and the markdown.
"""

from __future__ import annotations

import math

import pytest

from daemon.tools.efficacy.config import EfficacyConfig
from daemon.tools.efficacy.markdown import render_markdown
from daemon.tools.efficacy.report import summarise
from daemon.tools.efficacy.stats import (by_capture, paired, paired_report, paired_table, pool_seeds, probe_gap,
                                   spread)
from daemon.tools.efficacy.targets import evaluate, facts, mean_facts


def rec(learned: float, random: float = 0.0, heuristic: float = 0.0, *, capture: str = "a.gz", t0: int = 0,
        phase: str = "heldout", symbol: str = "BTC/USDT", random_expected: float = 0.0) -> dict:
    """A decision record with the fields the report reads; the other rows are set from these."""
    return {"phase": phase, "capture": capture, "symbol": symbol, "t0_ns": t0, "policy_version": t0,
            "learned": learned, "learned_unit": learned, "learned_modal": learned, "group_mean": learned,
            "random": random, "random_expected": random_expected, "flat": 0.0, "heuristic": heuristic,
            "hindsight": max(learned, random, heuristic), "executed_side": "long" if learned else "flat",
            "sides": ["long", "flat"], "imbalance": 0.0}


def probe_at(version: int, high: tuple[float, float], low: tuple[float, float]) -> dict:
    """A probe whose P(long), P(short) at imbalance +0.8 and -0.8 are given (flat takes the rest)."""
    def shares(ls):
        return {"long": ls[0], "short": ls[1], "flat": 1 - ls[0] - ls[1], "invalid": 0.0}
    return {"closed": version, "phase": "heldout", "policy_version": version,
            "im=-0.8": shares(low), "im=+0.0": shares((0.3, 0.3)), "im=+0.8": shares(high)}


def test_paired_difference_mean_and_se_by_hand():
    records = [rec(1, 0), rec(2, 0, t0=1), rec(3, 1, t0=2), rec(6, 2, t0=3)]
    # differences 1, 2, 2, 4: mean 2.25; sample var ((1.25)^2 + 0.25^2 + 0.25^2 + 1.75^2) / 3 = 4.75 / 3
    d = paired(records, "learned", "random")
    assert d["mean"] == pytest.approx(2.25)
    assert d["se"] == pytest.approx(math.sqrt(4.75 / 3 / 4))
    assert d["n"] == 4
    table = paired_table(records)
    assert set(table) == {"learned-random", "learned-heuristic", "learned-random_expected"}
    assert table["learned-heuristic"]["mean"] == pytest.approx(3.0)  # heuristic 0 throughout


def test_paired_se_cancels_what_both_sides_share():
    # learned = random + 1 + tiny noise: both swing with the market, the difference barely does
    records = [rec(m + 1 + e, m, t0=i) for i, (m, e) in enumerate([(-5, 0.1), (7, -0.1), (-3, 0.0), (9, 0.0)])]
    d = paired(records, "learned", "random")
    assert d["mean"] == pytest.approx(1.0)
    # differences 1.1, 0.9, 1, 1: sample var 0.02 / 3
    assert d["se"] == pytest.approx(math.sqrt(0.02 / 3 / 4))


def test_per_capture_and_pooled():
    a = [rec(1, 0, capture="a.gz", t0=0), rec(3, 0, capture="a.gz", t0=1)]
    b = [rec(-2, 1, capture="b.gz", t0=2), rec(0, 1, capture="b.gz", t0=3), rec(2, 1, capture="b.gz", t0=4)]
    report = paired_report(b[:1] + a + b[1:])  # interleaved on purpose
    assert list(by_capture(a + b)) == ["a.gz", "b.gz"]
    lr = "learned-random"
    assert report["by_capture"]["a.gz"][lr]["mean"] == pytest.approx(2.0)
    assert report["by_capture"]["a.gz"][lr]["se"] == pytest.approx(1.0)  # diffs 1, 3: sd sqrt(2), / sqrt(2)
    assert report["by_capture"]["b.gz"][lr]["mean"] == pytest.approx(-1.0)  # diffs -3, -1, 1
    assert report["by_capture"]["b.gz"][lr]["se"] == pytest.approx(2 / math.sqrt(3))
    # pooled: diffs 1, 3, -3, -1, 1 -> mean 0.2 (the decision-weighted mean, not (2 + -1) / 2)
    assert report["pooled"][lr]["mean"] == pytest.approx(0.2)
    assert report["pooled"][lr]["n"] == 5
    var = sum((x - 0.2) ** 2 for x in (1, 3, -3, -1, 1)) / 4
    assert report["pooled"][lr]["se"] == pytest.approx(math.sqrt(var / 5))


def test_seeds_pool_per_decision_not_as_more_decisions():
    seed0 = [rec(1, 0, t0=0), rec(3, 0, t0=1), rec(5, 2, t0=2)]
    seed1 = [rec(3, 2, t0=0), rec(-1, 0, t0=1)]  # its group at t0=2 ran past the phase's end
    pooled = pool_seeds([seed0, seed1], ("learned", "random"))
    assert [(r["t0_ns"], r["learned"], r["random"], r["seeds"]) for r in pooled] == [
        (0, 2.0, 1.0, 2), (1, 1.0, 0.0, 2), (2, 5.0, 2.0, 1)]
    d = paired(pooled, "learned", "random")
    assert d["n"] == 3  # decisions, not decisions x seeds
    assert d["mean"] == pytest.approx((1 + 1 + 3) / 3)
    # the same instant in another phase (a second training pass) is another decision
    other = pool_seeds([[rec(1, t0=0, phase="train1")], [rec(2, t0=0, phase="train2")]], ("learned",))
    assert len(other) == 2


def test_spread_across_seeds():
    s = spread([1.0, 2.0, 4.0, None, math.nan])
    assert s["n"] == 3
    assert s["mean"] == pytest.approx(7 / 3)
    assert s["sd"] == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert (s["min"], s["max"]) == (1.0, 4.0)
    assert spread([2.5])["sd"] is None and spread([2.5])["mean"] == 2.5
    assert spread([None])["n"] == 0


def test_probe_gap_by_hand():
    # +0.8: 0.6 - 0.2 = 0.4; -0.8: 0.1 - 0.5 = -0.4; gap 0.8
    assert probe_gap(probe_at(7, high=(0.6, 0.2), low=(0.1, 0.5))) == pytest.approx(0.8)
    assert probe_gap(None) is None


def test_targets_at_zero_fee_read_heldout_and_the_last_probe():
    held = [rec(1.0, 0.0, 2.0, t0=0), rec(1.2, 0.2, 2.0, t0=1), rec(0.8, -0.2, 2.0, t0=2)]
    # the first probe follows the imbalance strongly, the last one does not: the last one counts
    probes = [probe_at(0, high=(0.9, 0.0), low=(0.0, 0.9)), probe_at(50, high=(0.4, 0.3), low=(0.35, 0.35))]
    f = facts(held, probes)
    assert f["learned"] == pytest.approx(1.0) and f["heuristic"] == pytest.approx(2.0)
    assert f["probe_gap"] == pytest.approx(0.1)
    got = {t["name"]: t for t in evaluate(0.0, f)}
    assert len(got) == 3
    vs_heuristic = got["learned >= 0.6 x heuristic"]
    assert (vs_heuristic["value"], vs_heuristic["threshold"], vs_heuristic["met"]) == (
        pytest.approx(1.0), pytest.approx(1.2), False)
    vs_random = got["learned - random >= 2 SE (paired)"]
    # differences exactly 1, 1, 1: SE 0, so 1 >= 0
    assert (vs_random["value"], vs_random["threshold"], vs_random["met"]) == (pytest.approx(1.0), 0.0, True)
    gap = got["probe gap >= 0.3 (last probe)"]
    assert (gap["value"], gap["threshold"], gap["met"]) == (pytest.approx(0.1), 0.3, False)
    # without a probe the probe target is not measured, not missed
    assert {t["name"]: t["met"] for t in evaluate(0.0, facts(held, []))}["probe gap >= 0.3 (last probe)"] is None


def test_fee_targets_and_the_across_seed_mean():
    seed_a = facts([rec(-0.4, t0=0), rec(-0.6, t0=1), rec(-0.2, t0=2)], [])   # learned -0.4
    seed_b = facts([rec(-0.9, t0=0), rec(-0.7, t0=1)], [])                   # learned -0.8
    assert [t["met"] for t in evaluate(4.5, seed_a)] == [True]
    assert [t["met"] for t in evaluate(4.5, seed_b)] == [False]
    mean = mean_facts([seed_a, seed_b])
    assert mean["learned"] == pytest.approx(-0.6)
    (t,) = evaluate(4.5, mean)
    assert (t["value"], t["threshold"], t["met"]) == (pytest.approx(-0.6), -0.5, False)
    assert evaluate(1.0, mean) == []  # a fee without targets


def two_seed_runs() -> list[dict]:
    """Fee 0, seeds 0 and 1; two held-out captures and a training pass, the same decisions."""
    def records(shift: float) -> list[dict]:
        train = [rec(0.5 + shift, 0.0, 0.2, phase="train1", capture="t.gz", t0=i) for i in range(4)]
        held_a = [rec(1.0 + shift, 0.0, 0.5, capture="a.gz", t0=10), rec(2.0 + shift, 1.0, 0.5, capture="a.gz", t0=11)]
        held_b = [rec(-1.0 + shift, 0.0, 0.5, capture="b.gz", t0=12, symbol="ETH/USDT")]
        return train + held_a + held_b

    def run(seed: int, shift: float, gap_long: float) -> dict:
        return {"fee_bps": 0.0, "seed": seed, "records": records(shift), "captures": [],
                "probes": [probe_at(9, high=(gap_long, 0.0), low=(0.0, 0.0))],
                "phases": [], "timing": {}, "unclosed_groups": 0, "final_policy_version": 9, "skipped_groups": 0}

    return [run(0, 0.0, 0.6), run(1, 1.0, 0.2)]


def test_summary_pools_seeds_and_renders_the_paired_table():
    cfg = EfficacyConfig(fees_bps=[0.0], seeds=[0, 1])
    summary = summarise(cfg, two_seed_runs())
    fee = summary["fees"]["0"]
    assert fee["seeds"] == [0, 1]
    lr = "learned-random"
    # held out, seed 0: differences 1, 1, -1 (mean 1/3); seed 1: 2, 2, 0 (mean 4/3)
    assert fee["per_seed"]["0"]["paired"]["heldout"]["pooled"][lr]["mean"] == pytest.approx(1 / 3)
    assert fee["per_seed"]["1"]["paired"]["heldout"]["pooled"][lr]["mean"] == pytest.approx(4 / 3)
    # pooled: each decision averaged over the seeds -> 1.5, 1.5, -0.5; 3 decisions, not 6
    pooled = fee["paired"]["heldout"]["pooled"][lr]
    assert (pooled["mean"], pooled["n"]) == (pytest.approx(5 / 6), 3)
    assert pooled["se"] == pytest.approx(math.sqrt(((2 / 3) ** 2 * 2 + (4 / 3) ** 2) / 2 / 3))
    assert fee["paired"]["heldout"]["by_capture"]["b.gz"][lr]["mean"] == pytest.approx(-0.5)
    assert fee["splits"]["heldout"]["learned"]["n"] == 3
    assert fee["heldout_by_capture"]["a.gz"]["learned"]["mean"] == pytest.approx(2.0)  # (1, 2) and (2, 3)
    across = fee["across_seeds"]
    assert across["splits"]["heldout"][lr]["mean"] == pytest.approx(5 / 6)
    assert across["splits"]["heldout"][lr]["sd"] == pytest.approx(math.sqrt(0.5))  # 1/3 and 4/3
    assert (across["splits"]["heldout"]["learned"]["min"], across["splits"]["heldout"]["learned"]["max"]) == (
        pytest.approx(2 / 3), pytest.approx(5 / 3))
    assert across["probe_gap"]["mean"] == pytest.approx(0.4)  # 0.6 and 0.2
    # probe target: seed 0 met (0.6), seed 1 missed (0.2), the across-seed mean 0.4 met
    probe_met = [[t["met"] for t in fee["per_seed"][s]["targets"] if t["name"].startswith("probe")][0]
                 for s in ("0", "1")]
    assert probe_met == [True, False]
    assert [t["met"] for t in fee["targets_mean"]["targets"] if t["name"].startswith("probe")] == [True]
    # pooled, the reading: decisions averaged over seeds, SE over the 3 decisions
    pooled_lr = [t for t in fee["targets_pooled"]["targets"] if t["name"].startswith("learned - random")][0]
    assert pooled_lr["value"] == pytest.approx(5 / 6) and pooled_lr["threshold"] == pytest.approx(2 * pooled["se"])
    assert fee["targets_pooled"]["facts"]["probe_gap"] == pytest.approx(0.4)

    md = render_markdown(summary)
    assert "| split | capture | learned − random | learned − heuristic | learned − random_expected | n |" in md
    assert "| heldout | all captures | +0.833 ± 0.667 |" in md
    assert "| heldout | b.gz | -0.500 |" in md
    assert "| 0 | +0.667 ± 0.882 | +0.333 ± 0.667 |" in md  # seed 0: learned, learned - random
    assert "| mean across seeds | +1.167 | +0.833 |" in md
    assert "| sd across seeds | 0.707 | 0.707 |" in md
    assert "| probe gap >= 0.3 (last probe) | +0.600 vs +0.300: met | +0.200 vs +0.300: missed | " \
           "+0.400 vs +0.300: met | +0.400 vs +0.300: met |" in md
    assert "| 0 | v9 (heldout) | 0.00 / 0.00 / 1.00 | 0.30 / 0.30 / 0.40 | 0.60 / 0.00 / 0.40 | +0.60 |" in md
    assert "Wall time" in md


def test_config_seeds_and_one_config_per_seed():
    cfg = EfficacyConfig()
    assert cfg.seeds == [0, 1, 2]
    one = cfg.for_seed(2)
    assert (one.seed, one.seeds) == (2, [2])
    assert len({cfg.for_seed(s).bootstrap_key() for s in cfg.seeds}) == 3  # each seed its own bootstrap
    for bad in ([], [0, 0], ["a"], [1.5]):
        with pytest.raises(ValueError, match="seeds"):
            EfficacyConfig(seeds=bad)


def test_curve_draws_several_seeds_and_their_probes(tmp_path):
    from daemon.tools.efficacy.plots import write_curve

    runs = two_seed_runs()
    runs[1]["probes"].insert(0, probe_at(0, high=(0.3, 0.3), low=(0.3, 0.3)))
    write_curve(runs, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 10_000
