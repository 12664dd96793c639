"""Replay throughput: bookkeeping groups/s (read + decode + verify, no model) and model compute.

    .venv/bin/python benchmarks/replay_throughput.py [--groups 20000]

The broker: as every eigenloop command finds it (``EIGENLOOP_KAFKA__BOOTSTRAP``, the config file,
the local broker of ``eigenloop kafka start``), else a throwaway one (``benchmarks/bench_kafka.py``).

Writes N groups and their block updates to a fresh topic prefix on the broker, then times:
- bookkeeping: reading learn.groups and learn.updates from Kafka, decoding every record and
  running ``daemon.tools.replay.rebuild.replay`` with --verify matching, with a step function that
  does no model work (it returns the recorded updates). Goal: >= 5000 groups/s.
- model compute: ``learners.core.step`` on a small CPU model, per group, reported separately.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from any folder

from benchmarks.bench_kafka import bench_settings  # noqa: E402
from daemon.eventlog import EventProducer  # noqa: E402
from daemon.eventlog.admin import ensure_topics  # noqa: E402
from daemon.tools.replay import rebuild as rp  # noqa: E402
from schemas import BlockUpdate, GRPOGroup, deterministic_event_id  # noqa: E402
from schemas.settings import Settings  # noqa: E402


def make_log(n: int, blocks: int) -> tuple[list[GRPOGroup], list[BlockUpdate]]:
    base = (int(time.time()) - 3600) * 1_000_000_000
    groups, updates = [], []
    for g in range(n):
        ts = base + g * 1_000_000
        group = GRPOGroup(group_id=f"g{g}", symbol="BTC/USDT", policy_version=g, prompt="M BTC r=+1>",
                          completions=["long 0.5 h5", "short 1 h10", "flat 0 h5", "long 1 h5"],
                          candidate_indices=[0, 1, 2, 3], rewards=[1.0, -0.5, 0.0, 0.25],
                          advantages=[1.2, -1.0, -0.3, 0.1], group_size=4, ts_event=ts, key=f"g{g}")
        groups.append(group)
        for b in range(blocks):
            updates.append(BlockUpdate(event_id=deterministic_event_id(ts // 1_000_000, group.group_id, b, g + 1),
                                       ts_event=ts, block=b, step=g, group_id=group.group_id, loss=0.1,
                                       grad_norm=0.2, checksum=f"{g:064x}", policy_version=g + 1, key=str(b)))
    return groups, updates


async def produce(settings: Settings, groups: list[GRPOGroup], updates: list[BlockUpdate]) -> None:
    async with EventProducer(settings) as p:
        for g in groups:
            await p.send("learn.groups", g)
        for u in updates:
            await p.send("learn.updates", u)
        await p.flush()


async def bookkeeping(settings: Settings, n: int) -> dict:
    t0 = time.perf_counter()
    groups = await rp.read_groups(settings)
    t1 = time.perf_counter()
    recorded = await rp.read_updates(settings, None)
    t2 = time.perf_counter()
    by_group: dict[str, list[BlockUpdate]] = {}
    for u in recorded.values():
        by_group.setdefault(u.group_id, []).append(u)
    _, res = rp.replay(None, groups, lambda st, g: (st, by_group.get(g.group_id, [])), recorded=recorded)
    t3 = time.perf_counter()
    assert res.groups == n and res.divergence is None, res.summary()
    return {"groups": n, "read_groups_s": round(t1 - t0, 3), "read_updates_s": round(t2 - t1, 3),
            "verify_s": round(t3 - t2, 3), "total_s": round(t3 - t0, 3),
            "bookkeeping_groups_per_s": round(n / (t3 - t0)), "verified_updates": res.verified}


def model_compute(n: int) -> dict:
    import torch

    from learners.core import LearnerConfig, build_state, step
    from learners.model import ModelConfig

    torch.use_deterministic_algorithms(True)
    # the default model size, without the frozen reference (so without the KL it would feed)
    cfg = LearnerConfig(model=ModelConfig(), device="cpu", keep_reference=False, kl_bootstrap_coef=0.0)
    state = build_state(cfg)
    groups, _ = make_log(n, 0)
    step(state, groups[0])  # warm-up: first-call allocations are not steady state
    t0 = time.perf_counter()
    for g in groups[1:]:
        state, _ = step(state, g)
    dt = time.perf_counter() - t0
    return {"model": "default ModelConfig, cpu", "groups": n - 1, "seconds": round(dt, 3),
            "model_groups_per_s": round((n - 1) / dt, 1), "ms_per_group": round(1000 * dt / (n - 1), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=20000)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--model-groups", type=int, default=5)
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/eigenloop-bench"))
    args = ap.parse_args()
    # the settings as every command reads them, so EIGENLOOP_KAFKA__BOOTSTRAP is honoured here too
    with bench_settings("bench", data_dir=args.data_dir) as settings:
        asyncio.run(ensure_topics(settings))
        groups, updates = make_log(args.groups, args.blocks)
        t0 = time.perf_counter()
        asyncio.run(produce(settings, groups, updates))
        out = {"produce_s": round(time.perf_counter() - t0, 2)}
        out["bookkeeping"] = asyncio.run(bookkeeping(settings, args.groups))
    out["model_compute"] = model_compute(args.model_groups)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
