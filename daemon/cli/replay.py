"""The ``eigenloop replay`` command: argument handling, progress and the summary.

Exit codes: 0 replayed (and verified, with --verify); 1 a divergence was found; 2 the
command could not run (bad snapshot, bad range, broker unreachable), with one error line.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any, Optional

import typer


def _ms(value: Optional[str], flag: str) -> Optional[int]:
    """Epoch milliseconds from an ISO 8601 time (UTC unless it says otherwise) or a number."""
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{flag}: {value!r} is neither an ISO 8601 time nor epoch milliseconds") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return int(t.timestamp() * 1000)


def _parse_offsets(spec: Optional[str]) -> Optional[dict[int, int]]:
    """``"123"`` (partition 0) or ``"0:123,1:40"``."""
    if spec is None:
        return None
    out: dict[int, int] = {}
    for part in spec.split(","):
        p, _, o = part.strip().rpartition(":")
        out[int(p) if p else 0] = int(o)
    return out


def _load_reward(path: Path):
    import yaml
    from pydantic import ValidationError

    from schemas.settings import RewardConfig

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ValueError(f"--what-if {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"--what-if {path}: not valid YAML ({e})") from None
    data = data.get("reward", data) if isinstance(data, dict) else data  # a whole settings file works too
    try:
        return RewardConfig.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        raise ValueError(f"--what-if {path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


async def _run(settings: Any, snapshot: Path, *, from_offset: Optional[str], from_time: Optional[str],
               to_offset: Optional[str], to_time: Optional[str], verify: bool, what_if: Optional[Path],
               device: str, console: Any) -> tuple[dict[str, Any], bool]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from daemon.service.learning import in_applied_order, recorded_batches
    from daemon.tools.replay import rebuild as rp
    from learners.core import step

    reward = _load_reward(what_if) if what_if is not None else None
    start_ms, end_ms = _ms(from_time, "--from-time"), _ms(to_time, "--to-time")
    rp.deterministic_torch()
    state, info = rp.load_state(snapshot, device)
    start = _parse_offsets(from_offset)
    if start is None and start_ms is None:
        start = rp.snapshot_offsets(info)  # the snapshot's own position: replay what came after it
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        reading = progress.add_task("reading learn.groups", total=None)
        groups = await rp.read_groups(settings, start_offsets=start, start_ms=start_ms,
                                      end_offsets=_parse_offsets(to_offset), end_ms=end_ms,
                                      on_record=lambda: progress.advance(reading))
        progress.update(reading, total=len(groups), completed=len(groups))
        # the recorded updates say in which order the live learner applied the groups (and which it
        # coalesced): the replay follows it, and --verify also compares every checksum with them
        since = min((p.timestamp_ms for p, _ in groups), default=None)
        updates = await rp.read_updates(settings, since)
        groups = in_applied_order(groups, updates.values())
        recorded = updates if verify else None
        applying = progress.add_task("what-if" if reward else "replaying", total=len(groups))
        if reward is not None:
            from daemon.tools.replay.whatif import what_if as run_what_if

            shadow, _ = rp.load_state(snapshot, device)
            result = await run_what_if(settings, reward, groups, state, shadow, step,
                                       on_group=lambda: progress.advance(applying))
            return {"what_if": result.summary()}, True
        _, res = rp.replay(state, groups, step, recorded=recorded, on_group=lambda: progress.advance(applying),
                           seen_groups=info.get("metadata", {}).get("recent_groups", ()),
                           batches=recorded_batches(updates.values()))
    summary = res.summary()
    summary["verified"] = verify
    return summary, res.divergence is None


def replay_command(
    snapshot: Path = typer.Argument(..., help="snapshot directory to start from (weights, optimiser, RNG, offsets)"),
    from_offset: Optional[str] = typer.Option(None, help="learn.groups offset to start at: N or P:N[,P:N]; "
                                                          "default: the snapshot's consumed offset"),
    from_time: Optional[str] = typer.Option(None, help="start at this record time (ISO 8601 UTC or epoch ms)"),
    to_offset: Optional[str] = typer.Option(None, help="stop before this offset (N or P:N[,P:N]); default: the end"),
    to_time: Optional[str] = typer.Option(None, help="stop before this record time"),
    verify: bool = typer.Option(False, "--verify", help="compare every step's checksum with learn.updates"),
    what_if: Optional[Path] = typer.Option(None, "--what-if", metavar="REWARD_CONFIG",
                                           help="YAML RewardConfig: re-score into shadow topics + a shadow model"),
    device: str = typer.Option("cpu", help="torch device; recorded checksums reproduce on cpu"),
    fmt: str = typer.Option("table", "--format", "-f", help="table or json"),
) -> None:
    """Rebuild the model from a snapshot plus learn.groups; verify it or try another reward."""
    from aiokafka.errors import KafkaError
    from rich.console import Console

    from daemon.cli.context import fail, settings
    from daemon.eventlog.broker_address import BrokerError

    if from_offset and from_time:
        raise fail("give --from-offset or --from-time, not both")
    if what_if is not None and verify:
        raise fail("--verify checks the recorded model; run it without --what-if")
    console = Console(stderr=True)
    try:
        summary, ok = asyncio.run(_run(settings(), snapshot, from_offset=from_offset, from_time=from_time,
                                       to_offset=to_offset, to_time=to_time, verify=verify, what_if=what_if,
                                       device=device, console=console))
    except (ValueError, FileNotFoundError) as e:
        raise fail(str(e))
    except (KafkaError, BrokerError, OSError) as e:
        raise fail(f"kafka: {e}")
    if fmt == "json":
        typer.echo(json.dumps(summary, indent=2))
    else:
        _print(summary)
    if not ok:
        raise typer.Exit(1)


def _print(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    body = summary.get("what_if", summary)
    table = Table(title="what-if" if "what_if" in summary else "replay", title_justify="left", show_header=False)
    for key, value in body.items():
        if key == "checksums":
            continue
        table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    for block, c in body.get("checksums", {}).items():
        table.add_row(f"block {block} checksum", json.dumps(c) if isinstance(c, dict) else c)
    Console().print(table)
    div = body.get("first_divergence")
    if summary.get("verified"):
        typer.echo(f"first divergence: {div}" if div else "verified: every replayed checksum matches learn.updates")
