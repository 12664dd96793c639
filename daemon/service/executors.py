"""Executors: where the chosen candidate goes. Paper by default; live (``daemon.service.live_executor``)
only behind two switches.

Every executor passes through the same gate before an order (``daemon.service.risk_state.RiskGate``):
the kill switch, then the hard limits (notional per order, absolute position per (exchange,
symbol), orders per minute). A refused order is counted with its reason and never retried.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.errors import EigenloopError
from daemon.logging import get_logger
from daemon.service import metrics
from daemon.service.risk_state import RiskGate, fsync_dir, write_durably
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


def write_flag(flag_file: Path, reason: str) -> None:
    """Create the flag durably: the file and its directory entry are on disk when this returns,
    so an engaged kill switch survives a crash or a node loss right after it was acknowledged."""
    write_durably(flag_file, f"engaged: {reason}\n")


def remove_flag(flag_file: Path) -> None:
    """Remove the flag durably (a release that a restart undid would be a surprise too)."""
    try:
        flag_file.unlink()
    except FileNotFoundError:
        return
    fsync_dir(flag_file.parent)


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


@dataclass(frozen=True)
class Order:
    """What an action asks an executor for, before any limit is checked."""

    key: tuple[str, str]  # (exchange, symbol)
    sign: float  # +1 long, -1 short
    notional: float
    spec: Any  # the parsed MarketActionSpec (side, size, horizon)


def order_of(action: Action, cfg: ExecutorSettings) -> Order | None:
    """The order ``action`` asks for; None for flat, unparsed or zero-size actions."""
    spec = action.parsed
    if spec is None or getattr(spec, "side", "flat") == "flat" or spec.size <= 0:
        return None
    return Order((action.exchange, action.symbol), 1.0 if spec.side == "long" else -1.0,
                 spec.size * cfg.max_notional, spec)


class PaperExecutor:
    """Simulated fills at the touch of the live book; positions close at their horizon.

    ``fills`` and ``refused`` keep the newest ``executor.keep_recent`` entries (an always-on
    daemon must not grow them forever); ``fills_total``/``refused_total`` count all of them."""

    name = "paper"

    def __init__(self, cfg: ExecutorSettings, kill: KillSwitch):
        self.gate = RiskGate(cfg, kill)
        self.cfg = cfg
        self.fills: deque[Fill] = deque(maxlen=cfg.keep_recent)
        self.refused: deque[tuple[str, str]] = deque(maxlen=cfg.keep_recent)
        self.fills_total = 0
        self.refused_total = 0
        # (exit time ns, (exchange, symbol), signed notional)
        self._open: list[tuple[int, tuple[str, str], float]] = []
        self.realised_pnl = 0.0

    async def start(self) -> None:
        """Nothing to restore: paper positions and limits start afresh."""

    async def close(self) -> None:
        """Nothing to release."""

    async def execute(self, action: Action, quote: tuple) -> Fill | None:
        order = order_of(action, self.cfg)
        if order is None:
            return None
        ts, bid, _bq, ask, _aq = quote
        sign, notional, key, spec = order.sign, order.notional, order.key, order.spec
        reason = self.gate.check(key, sign * notional)
        if reason is not None:
            self.refused.append((action.group_id, reason))
            self.refused_total += 1
            metrics.ORDERS.labels(self.name, "refused").inc()
            log.info("order refused", group_id=action.group_id, reason=reason)
            return None
        price = ask if sign > 0 else bid
        fill = Fill(action.symbol, spec.side, notional / price, price, notional, ts, action.group_id)
        self.gate.record(key, sign * notional)
        self.fills.append(fill)
        self.fills_total += 1
        self._open.append((ts + int(spec.horizon_s * 1e9), key, sign * notional))
        metrics.ORDERS.labels(self.name, "filled").inc()
        return fill

    def on_market_time(self, exchange: str, symbol: str, ts_ns: int) -> None:
        """Close the positions on (exchange, symbol) whose horizon passed (market time)."""
        keep = []
        for exit_ns, key, signed in self._open:
            if key == (exchange, symbol) and ts_ns >= exit_ns:
                self.gate.add_position(key, -signed)
            else:
                keep.append((exit_ns, key, signed))
        self._open = keep


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
