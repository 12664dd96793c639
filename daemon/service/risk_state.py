"""The hard limits in front of every order (``RiskGate``) and the part of them that must survive
a restart (``RiskStateFile``).

Positions are keyed by (exchange, symbol): the same symbol on two venues is two positions. The
order-rate window holds wall-clock times (``time.time()``), not monotonic ones, because it is
written to disk and read back by the next process: a limit hit just before a crash still holds
for the rest of its minute after the restart. A wall clock stepped back makes the window hold
longer (the safe side); one stepped forward can end it early by that step.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from daemon.errors import EigenloopError
from schemas.settings import ExecutorSettings, Settings

PositionKey = tuple[str, str]  # (exchange, symbol)
RATE_WINDOW_S = 60.0


class RiskStateError(EigenloopError):
    """The persisted risk state cannot be read: live trading does not start without it."""


class Engaged(Protocol):
    engaged: bool
    reason: str


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (a reader sees the old or the new file, never a
    torn one) and durably (file and directory entry are on disk when this returns)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


@dataclass
class RiskGate:
    cfg: ExecutorSettings
    kill: Engaged
    positions: dict[PositionKey, float] = field(default_factory=dict)  # signed notional
    recent: deque = field(default_factory=deque)  # wall-clock times of orders in the last minute

    def check(self, key: PositionKey, signed_notional: float, now: float | None = None) -> str | None:
        """None if the order may go, else the reason it may not."""
        if self.kill.engaged:
            return f"kill switch engaged ({self.kill.reason})"
        if abs(signed_notional) > self.cfg.max_notional + 1e-9:
            return f"notional {abs(signed_notional):.2f} above max_notional {self.cfg.max_notional}"
        after = self.positions.get(key, 0.0) + signed_notional
        if abs(after) > self.cfg.max_position + 1e-9:
            return f"position {after:.2f} would exceed max_position {self.cfg.max_position}"
        self.prune(time.time() if now is None else now)
        if len(self.recent) >= self.cfg.max_orders_per_minute:
            return f"{self.cfg.max_orders_per_minute} orders in the last minute"
        return None

    def prune(self, now: float) -> None:
        while self.recent and self.recent[0] < now - RATE_WINDOW_S:
            self.recent.popleft()

    def note_order(self, now: float | None = None) -> None:
        self.recent.append(time.time() if now is None else now)

    def add_position(self, key: PositionKey, signed_notional: float) -> None:
        self.positions[key] = self.positions.get(key, 0.0) + signed_notional

    def record(self, key: PositionKey, signed_notional: float, now: float | None = None) -> None:
        self.note_order(now)
        self.add_position(key, signed_notional)


@dataclass
class OpenPosition:
    """A live position opened by one executed action, to be closed at its horizon."""

    group_id: str
    exchange: str
    symbol: str
    side: str  # the opening order's side: buy | sell
    qty: float  # base amount (contracts for derivatives)
    signed_notional: float
    exit_ns: int  # market time at which it is closed
    maybe_sent: bool = False  # a close may have reached the exchange: look it up before sending


@dataclass
class RiskState:
    order_times: list[float] = field(default_factory=list)
    open: list[OpenPosition] = field(default_factory=list)


def risk_state_path(settings: Settings) -> Path:
    return (Path(settings.data_dir) / "risk-state.json").absolute()


class RiskStateFile:
    """``<data_dir>/risk-state.json``: the order-rate window and the open live positions with
    their horizons. Positions themselves are not trusted from here: the exchange is asked."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> RiskState:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return RiskState()
        except OSError as e:
            raise RiskStateError(f"cannot read the risk state {self.path}: {e}") from e
        try:
            raw: Any = json.loads(text)
            times = [float(t) for t in raw["order_times"]]
            if not all(math.isfinite(t) for t in times):
                raise ValueError("order time not finite")
            open_ = [OpenPosition(**p) for p in raw["open"]]
        except (ValueError, KeyError, TypeError) as e:
            raise RiskStateError(f"the risk state {self.path} is damaged ({e!r}); check the venues' positions "
                                 "and orders, then move the file aside (runbooks/kill-switch-and-live-trading.md)") from e
        return RiskState(times, open_)

    def save(self, state: RiskState) -> None:
        write_durably(self.path, json.dumps({"order_times": state.order_times,
                                             "open": [asdict(p) for p in state.open]}, indent=1) + "\n")
