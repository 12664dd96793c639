"""``eigenloop replay`` on the real broker: --verify reproduces the recorded checksums on CPU and
names the first corrupted update; --what-if writes shadow topics only."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from pathlib import Path

import pytest
import torch

from schemas import Action, BookTicker, GRPOGroup, MarketActionSpec
from schemas.settings import GroupConfig, RewardConfig, Settings
from schemas.topics import CATALOGUE, topic_name

from .helpers import cli_env


def run_cli(settings: Settings, *args: str):
    """The real command, in this process: the learner's torch start-up (~5 s) is paid once."""
    from typer.testing import CliRunner

    from daemon.cli import app

    env = {k: v for k, v in cli_env(settings).items() if k.startswith("EIGENLOOP_")}
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)

pytestmark = pytest.mark.kafka

N_GROUPS = 10
SIDES = ("long", "short", "flat")


def tiny_config():
    from learners.core import LearnerConfig
    from learners.model import ModelConfig

    return LearnerConfig(model=ModelConfig(n_blocks=3, n_layer=1, n_embd=32, n_head=2), gen_len=12,
                         sample_steps=6, lr=1e-3, device="cpu", keep_reference=False, likelihood="elbo", kl_bootstrap_coef=0.0,
                         reveal_window=2)


@functools.lru_cache(maxsize=1)
def recorded_run() -> tuple[list[tuple[str, object]], list]:
    """A learner run through the real pure pipeline: actions scored by streams.rewards against a
    book path, grouped by streams.grouping, learned by learners.core.step."""
    from learners.core import build_state, step
    from streams.grouping import close_group
    from streams.rewards import BookPath, score_action, to_outcome

    base = (int(time.time()) - 3600) * 1_000_000_000
    log: list[tuple[str, object]] = []
    ticks = []
    for k in range(N_GROUPS * 20):  # a quote every 100 ms, drifting up and down
        ts = base + k * 100_000_000
        mid = 100.0 + ((k // 7) % 5) * 0.05 - ((k // 11) % 3) * 0.04
        ticks.append((ts, mid - 0.01, 1.0, mid + 0.01, 1.0))
        log.append(("market.events", BookTicker(exchange="binance", symbol="BTC/USDT", bid_price=mid - 0.01,
                                                bid_qty=1.0, ask_price=mid + 0.01, ask_qty=1.0, ts_event=ts,
                                                key="BTC/USDT")))
    book = BookPath(ticks)
    torch.use_deterministic_algorithms(True)
    state = build_state(tiny_config())
    updates = []
    for g in range(N_GROUPS):
        gid = f"grp-{g}"
        t0 = base + g * 2_000_000_000
        acts = [Action(group_id=gid, candidate_index=i, group_size=3, policy_version=state.policy_version, seed=i,
                       prompt_id=gid, symbol="BTC/USDT", exchange="binance", prompt=f"M BTC r={g}>",
                       completion=f"{SIDES[i]} 0.5 h1", ts_event=t0, key=gid,
                       parsed=MarketActionSpec(side=SIDES[i], size=0.5, horizon_s=1.0)) for i in range(3)]
        outs = {a.candidate_index: to_outcome(a, score_action(a, RewardConfig(), book)) for a in acts}
        group = close_group(acts, outs, GroupConfig(group_size=3), close_reason="all_in",
                            window_end=t0 + 3_000_000_000)
        log += [("agent.actions", a) for a in acts] + [("agent.outcomes", o) for o in outs.values()]
        log.append(("learn.groups", group))
        state, ups = step(state, group)
        updates += ups
    return log, updates


def snapshot(tmp_path: Path) -> Path:
    from learners.core import build_state
    from learners.snapshot import save_snapshot

    torch.use_deterministic_algorithms(True)
    return save_snapshot(build_state(tiny_config()), tmp_path / "snap", {"offsets": {"learn.groups:0": 0}})


async def _produce(settings: Settings, log, updates) -> None:
    from daemon.eventlog import EventProducer

    async with EventProducer(settings) as p:
        for topic, ev in log:
            await p.send(topic, ev)  # type: ignore[arg-type]
        for u in updates:
            await p.send("learn.updates", u)
        await p.flush()


async def _end_offsets(settings: Settings, names: list[str]) -> dict[str, int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from daemon.eventlog import client_kwargs

    c = AIOKafkaConsumer(**client_kwargs(settings))
    await c.start()
    try:
        # full cluster metadata: the consumer's own view only covers topics it has touched
        md = await c._client.fetch_all_metadata()
        tps = [TopicPartition(n, p) for n in names for p in sorted(md.partitions_for_topic(n) or ())]
        ends = await c.end_offsets(tps)
        return {f"{tp.topic}:{tp.partition}": o for tp, o in ends.items()}
    finally:
        await c.stop()


def test_verify_reproduces_recorded_checksums(kafka_settings: Settings, tmp_path: Path):
    log, updates = recorded_run()
    asyncio.run(_produce(kafka_settings, log, updates))
    r = run_cli(kafka_settings, "replay", str(snapshot(tmp_path)), "--verify", "--format", "json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["groups"] == N_GROUPS and out["first_divergence"] is None
    assert out["verified_updates"] == len(updates) > 0
    assert out["checksums"] == {str(u.block): u.checksum for u in updates}


def test_verify_reports_first_corrupted_update(kafka_settings: Settings, tmp_path: Path):
    log, updates = recorded_run()
    bad = {4: None, 7: None}  # corrupt two updates; the earlier one must be reported
    corrupted = [u.model_copy(update={"checksum": "0" * 64}) if i in bad else u for i, u in enumerate(updates)]
    asyncio.run(_produce(kafka_settings, log, corrupted))
    r = run_cli(kafka_settings, "replay", str(snapshot(tmp_path)), "--verify")
    assert r.exit_code == 1, r.output
    first = updates[4]
    assert f"group {first.group_id} block {first.block} policy_version {first.policy_version}" in r.stdout
    assert "recorded checksum 000000000000" in r.stdout


def test_what_if_writes_only_shadow_topics(kafka_settings: Settings, tmp_path: Path):
    log, updates = recorded_run()
    asyncio.run(_produce(kafka_settings, log, updates))
    production = [t.name for t in CATALOGUE]
    prod_names = [topic_name(n, kafka_settings.kafka.topic_prefix) for n in production]
    before = asyncio.run(_end_offsets(kafka_settings, prod_names))
    cfg = tmp_path / "reward.yaml"
    cfg.write_text("reward:\n  kind: risk_adjusted\n  fee_bps: 0.0\n  drawdown_penalty: 0.0\n")
    r = run_cli(kafka_settings, "replay", str(snapshot(tmp_path)), "--what-if", str(cfg), "--format", "json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)["what_if"]
    assert out["groups"] == N_GROUPS and out["groups_missing_actions"] == 0
    assert out["mean_abs_reward_delta"] > 0  # no fees, risk-adjusted: the rewards must move
    after = asyncio.run(_end_offsets(kafka_settings, prod_names))
    assert after == before, "a production topic was written"
    prefix = out["shadow_prefix"]
    assert prefix.startswith(kafka_settings.kafka.topic_prefix + "whatif-")
    shadow_names = {t: topic_name(t, prefix) for t in ("agent.outcomes", "learn.groups")}
    shadow = asyncio.run(_end_offsets(kafka_settings, list(shadow_names.values())))
    by_topic: dict[str, int] = {}
    for key, end in shadow.items():
        by_topic[key.rsplit(":", 1)[0]] = by_topic.get(key.rsplit(":", 1)[0], 0) + end
    assert by_topic[shadow_names["agent.outcomes"]] == 3 * N_GROUPS
    assert by_topic[shadow_names["learn.groups"]] == N_GROUPS
    assert out["shadow_records_written"]["learn.groups"] == N_GROUPS
    assert set(out["checksums"]) == {"0", "1", "2"}
