"""Executors: where the chosen candidate goes. Paper by default; live only behind two switches.

Every executor passes through the same gate before an order: the kill switch, then the hard
limits (notional per order, absolute position per symbol, orders per minute). A refused order is
counted with its reason and never retried.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon import metrics
from daemon.errors import EigenloopError
from daemon.logging import get_logger
from schemas import Action
from schemas.settings import ExecutorSettings, Settings

log = get_logger("executor")


class LiveTradingRefused(EigenloopError):
    """Live trading needs EIGENLOOP_LIVE_TRADING=1 and --i-understand-live-trading, both."""


def kill_switch_path(settings: Settings) -> Path:
    """The one flag file the daemon, its HTTP route and the CLI all read and write:
    ``executor.kill_switch_file``, else ``<data_dir>/KILL``; absolute, so a process started from
    another directory still finds the same file."""
    configured = settings.executor.kill_switch_file
    return (configured if configured is not None else Path(settings.data_dir) / "KILL").absolute()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_flag(flag_file: Path, reason: str) -> None:
    """Create the flag durably: the file and its directory entry are on disk when this returns,
    so an engaged kill switch survives a crash or a node loss right after it was acknowledged."""
    flag_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = flag_file.with_name(f".{flag_file.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(f"engaged: {reason}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, flag_file)
    _fsync_dir(flag_file.parent)


def remove_flag(flag_file: Path) -> None:
    """Remove the flag durably (a release that a restart undid would be a surprise too)."""
    try:
        flag_file.unlink()
    except FileNotFoundError:
        return
    _fsync_dir(flag_file.parent)


def flag_present(flag_file: Path) -> bool | None:
    """True: the flag exists; False: it certainly does not; None: it cannot be told (permissions,
    I/O error, a path component that is not a directory), which callers treat as engaged."""
    try:
        os.stat(flag_file)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    return True


class KillSwitch:
    """Stops new orders at once when engaged: by ``engage()`` (the /kill endpoint) or by the
    flag file existing. The file is checked on every order, so creating it takes effect on the
    next order attempt, well within a second. It fails closed: a flag file whose state cannot be
    read counts as engaged, and an engage that cannot be persisted still stops orders here."""

    def __init__(self, flag_file: Path):
        self.flag_file = Path(flag_file)
        self._engaged = False
        self.reason = ""

    def _latch(self, reason: str) -> None:
        self._engaged = True
        self.reason = reason
        metrics.KILL_SWITCH.set(1)
        log.warning("kill switch engaged", reason=reason)

    def engage(self, reason: str = "http") -> None:
        """Stop orders now, then persist the flag; raises OSError when it cannot be persisted
        (orders stay stopped in this process, but a restart would not know)."""
        self._latch(reason)
        write_flag(self.flag_file, reason)

    def release(self) -> None:
        """Remove the flag, then let orders go; raises OSError (and stays engaged) when the flag
        cannot be removed, since the next restart would engage again anyway."""
        remove_flag(self.flag_file)
        self._engaged = False
        self.reason = ""
        metrics.KILL_SWITCH.set(0)
        log.warning("kill switch released")

    @property
    def engaged(self) -> bool:
        if self._engaged:
            return True
        present = flag_present(self.flag_file)
        if present is None:
            # not latched: the next order reads the flag again and trades once it is readable
            self.reason = f"flag file {self.flag_file} unreadable (failing closed)"
            metrics.KILL_SWITCH.set(1)
            return True
        if present:
            self._latch(f"flag file {self.flag_file}")
        elif self.reason:
            self.reason = ""  # an unreadable spell that is over
            metrics.KILL_SWITCH.set(0)
        return self._engaged


@dataclass
class Fill:
    symbol: str
    side: str
    qty: float
    price: float
    notional: float
    ts_ns: int
    group_id: str


@dataclass
class RiskGate:
    cfg: ExecutorSettings
    kill: KillSwitch
    positions: dict[str, float] = field(default_factory=dict)  # signed notional per symbol
    _recent: deque = field(default_factory=deque)

    def check(self, symbol: str, signed_notional: float, now: float | None = None) -> str | None:
        """None if the order may go, else the reason it may not."""
        if self.kill.engaged:
            return f"kill switch engaged ({self.kill.reason})"
        if abs(signed_notional) > self.cfg.max_notional + 1e-9:
            return f"notional {abs(signed_notional):.2f} above max_notional {self.cfg.max_notional}"
        after = self.positions.get(symbol, 0.0) + signed_notional
        if abs(after) > self.cfg.max_position + 1e-9:
            return f"position {after:.2f} would exceed max_position {self.cfg.max_position}"
        now = time.monotonic() if now is None else now
        while self._recent and self._recent[0] < now - 60:
            self._recent.popleft()
        if len(self._recent) >= self.cfg.max_orders_per_minute:
            return f"{self.cfg.max_orders_per_minute} orders in the last minute"
        return None

    def record(self, symbol: str, signed_notional: float, now: float | None = None) -> None:
        self._recent.append(time.monotonic() if now is None else now)
        self.positions[symbol] = self.positions.get(symbol, 0.0) + signed_notional


class PaperExecutor:
    """Simulated fills at the touch of the live book; positions close at their horizon."""

    name = "paper"

    def __init__(self, cfg: ExecutorSettings, kill: KillSwitch):
        self.gate = RiskGate(cfg, kill)
        self.cfg = cfg
        self.fills: list[Fill] = []
        self.refused: list[tuple[str, str]] = []
        self._open: list[tuple[int, str, float]] = []  # (exit time ns, symbol, signed notional)
        self.realised_pnl = 0.0

    async def execute(self, action: Action, quote: tuple) -> Fill | None:
        spec = action.parsed
        if spec is None or getattr(spec, "side", "flat") == "flat" or spec.size <= 0:
            return None
        ts, bid, _bq, ask, _aq = quote
        sign = 1.0 if spec.side == "long" else -1.0
        notional = spec.size * self.cfg.max_notional
        reason = self.gate.check(action.symbol, sign * notional)
        if reason is not None:
            self.refused.append((action.group_id, reason))
            metrics.ORDERS.labels(self.name, "refused").inc()
            log.info("order refused", group_id=action.group_id, reason=reason)
            return None
        price = ask if sign > 0 else bid
        fill = Fill(action.symbol, spec.side, notional / price, price, notional, ts, action.group_id)
        self.gate.record(action.symbol, sign * notional)
        self.fills.append(fill)
        self._open.append((ts + int(spec.horizon_s * 1e9), action.symbol, sign * notional))
        metrics.ORDERS.labels(self.name, "filled").inc()
        return fill

    def on_market_time(self, symbol: str, ts_ns: int) -> None:
        """Close positions whose horizon passed (market time)."""
        keep = []
        for exit_ns, sym, signed in self._open:
            if sym == symbol and ts_ns >= exit_ns:
                self.gate.positions[sym] = self.gate.positions.get(sym, 0.0) - signed
            else:
                keep.append((exit_ns, sym, signed))
        self._open = keep


class LiveExecutor:
    """Real orders through ccxt ``create_order`` (market orders, taker).

    Construct it only through ``create``: it refuses unless both switches are on.
    """

    name = "live"

    def __init__(self, cfg: ExecutorSettings, kill: KillSwitch, exchange: Any):
        self.gate = RiskGate(cfg, kill)
        self.cfg = cfg
        self.exchange = exchange

    @classmethod
    def create(cls, cfg: ExecutorSettings, kill: KillSwitch, exchange: Any, *, acknowledged: bool) -> "LiveExecutor":
        env_on = os.environ.get("EIGENLOOP_LIVE_TRADING") == "1"
        if not (env_on and acknowledged):
            missing = [m for m, ok in (("EIGENLOOP_LIVE_TRADING=1", env_on),
                                       ("--i-understand-live-trading", acknowledged)) if not ok]
            raise LiveTradingRefused("live trading refused: missing " + " and ".join(missing))
        return cls(cfg, kill, exchange)

    async def execute(self, action: Action, quote: tuple) -> Any:
        spec = action.parsed
        if spec is None or getattr(spec, "side", "flat") == "flat" or spec.size <= 0:
            return None
        _, bid, _, ask, _ = quote
        sign = 1.0 if spec.side == "long" else -1.0
        notional = spec.size * self.cfg.max_notional
        reason = self.gate.check(action.symbol, sign * notional)
        if reason is not None:
            metrics.ORDERS.labels(self.name, "refused").inc()
            log.warning("live order refused", group_id=action.group_id, reason=reason)
            return None
        price = ask if sign > 0 else bid
        self.gate.record(action.symbol, sign * notional)
        order = await self.exchange.create_order(action.symbol, "market", "buy" if sign > 0 else "sell",
                                                 notional / price)
        metrics.ORDERS.labels(self.name, "sent").inc()
        return order


class SocialPostExecutor:
    """Posting is dry-run by default: it logs what it would post and posts nothing."""

    def __init__(self, dry_run: bool = True):
        self.dry_run = dry_run
        self.would_post: list[str] = []

    async def post(self, text: str) -> None:
        if not self.dry_run:
            raise EigenloopError("posting to Bluesky is not implemented; keep executor.social_dry_run=true")
        self.would_post.append(text)
        log.info("social post (dry run)", text=text)
