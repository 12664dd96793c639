"""Real orders through ccxt ``create_order`` (market orders, taker), one exchange per venue.

- Routing: an action goes to the venue it names (``Action.exchange``); one naming a venue that is
  not configured is refused and recorded, never sent elsewhere.
- Errors: every order carries a client order id derived from its group id, so a retry can be
  recognised. After a network error or timeout (ccxt ``NetworkError``: the order may or may not
  have reached the venue) the executor waits (backoff), looks the order up by that id, and only
  re-sends when the venue says it does not exist. An exchange error (``InsufficientFunds``,
  ``InvalidOrder``, ...) is the venue's answer: refused and recorded, not retried. No exchange
  error or timeout escapes ``execute``: the daemon keeps running.
- Restarts: at ``start()`` positions are read from the venues (``fetch_positions`` for
  derivatives, ``fetch_balance`` for spot) into the gate; the order-rate window and the open
  positions' horizons are reloaded from ``<data_dir>/risk-state.json`` (``daemon.service.risk_state``).
- Horizons: when market time on (exchange, symbol) passes a position's horizon, the reducing
  order goes out (in a task, so the market stream is not held up); a failed close is retried and
  recorded like an opening order.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import ccxt.async_support as ccxt

from daemon.errors import EigenloopError
from daemon.logging import get_logger
from daemon.service import metrics
from daemon.service.executors import KillSwitch, LiveTradingRefused, order_of
from daemon.service.risk_state import OpenPosition, PositionKey, RiskGate, RiskState, RiskStateFile
from schemas import Action
from schemas.settings import ExecutorSettings

log = get_logger("executor")


class ReconcileError(EigenloopError):
    """Positions could not be read from a venue at start: live trading does not start blind."""

    retriable = True  # the venue's REST API was unreachable or refused for now


@dataclass
class LiveVenue:
    """One configured exchange: its ccxt client and the symbols the daemon trades there."""

    name: str
    exchange: Any
    symbols: list[str] = field(default_factory=list)


@dataclass
class Placement:
    outcome: str  # sent | rejected | unknown
    order: Any = None
    error: str = ""


def client_order_id(group_id: str, purpose: str = "open") -> str:
    """Deterministic per (group, purpose): a retry carries the same id as the first try. 32
    alphanumerics fit Binance (36, ``[.A-Z:/a-z0-9_-]``) and OKX (32, alphanumeric)."""
    return "el" + hashlib.sha256(f"{purpose}|{group_id}".encode()).hexdigest()[:30]


class LiveExecutor:
    """Construct it only through ``create``: it refuses unless both switches are on."""

    name = "live"

    def __init__(self, cfg: ExecutorSettings, kill: KillSwitch, venues: Mapping[str, LiveVenue],
                 state_file: Path | None = None):
        self.gate = RiskGate(cfg, kill)
        self.cfg = cfg
        self.venues = dict(venues)
        self.state_file = RiskStateFile(state_file) if state_file is not None else None
        self.open: list[OpenPosition] = []
        self.refused: deque[tuple[str, str]] = deque(maxlen=cfg.keep_recent)  # (group_id, reason)
        self.unknown: deque[tuple[str, str]] = deque(maxlen=cfg.keep_recent)  # sent, outcome not known
        self._closing: dict[str, asyncio.Task] = {}  # group_id -> its close in flight

    @classmethod
    def create(cls, cfg: ExecutorSettings, kill: KillSwitch, venues: Mapping[str, LiveVenue], *,
               acknowledged: bool, state_file: Path | None = None) -> "LiveExecutor":
        env_on = os.environ.get("EIGENLOOP_LIVE_TRADING") == "1"
        if not (env_on and acknowledged):
            missing = [m for m, ok in (("EIGENLOOP_LIVE_TRADING=1", env_on),
                                       ("--i-understand-live-trading", acknowledged)) if not ok]
            raise LiveTradingRefused("live trading refused: missing " + " and ".join(missing))
        return cls(cfg, kill, venues, state_file)

    # lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Reload the rate window and open horizons, then read positions from every venue."""
        if self.state_file is not None:
            state = self.state_file.load()
            self.gate.recent.extend(sorted(state.order_times))
            self.open = state.open
        for venue in self.venues.values():
            try:
                positions = await self._venue_positions(venue)
            except ccxt.BaseError as e:
                raise ReconcileError(f"cannot read positions from {venue.name}: {e}") from e
            self.gate.positions.update(positions)
        log.info("live executor started", venues=sorted(self.venues), positions=len(self.gate.positions),
                 open_horizons=len(self.open), orders_last_minute=len(self.gate.recent))

    async def close(self) -> None:
        """Let the closes in flight finish (their outcome is persisted), then close the clients."""
        await self.settle()
        for venue in self.venues.values():
            await venue.exchange.close()

    async def settle(self) -> None:
        """Wait for the horizon closes in flight."""
        while self._closing:
            await asyncio.gather(*list(self._closing.values()))

    async def _venue_positions(self, venue: LiveVenue) -> dict[PositionKey, float]:
        ex = venue.exchange
        await ex.load_markets()
        contracts = [s for s in venue.symbols if ex.market(s).get("contract")]
        spot = [s for s in venue.symbols if s not in contracts]
        out: dict[PositionKey, float] = {}
        if contracts:
            for p in await ex.fetch_positions(contracts):
                notional = abs(float(p.get("notional") or 0.0))
                if p.get("symbol") in contracts and notional:
                    out[(venue.name, p["symbol"])] = -notional if p.get("side") == "short" else notional
        if spot:
            totals = (await ex.fetch_balance()).get("total", {})
            for symbol in spot:
                held = float(totals.get(ex.market(symbol)["base"]) or 0.0)
                if held:
                    # the whole holding of the base asset counts, whoever bought it: the limit is
                    # on what the account risks
                    last = (await ex.fetch_ticker(symbol)).get("last")
                    if last is None:
                        raise ReconcileError(f"{venue.name} {symbol}: no last price to value {held} held")
                    out[(venue.name, symbol)] = held * float(last)
        return out

    def _persist(self) -> bool:
        """Write the rate window and open horizons; False (logged) when the disk refuses."""
        if self.state_file is None:
            return True
        self.gate.prune(time.time())
        try:
            self.state_file.save(RiskState(list(self.gate.recent), list(self.open)))
        except OSError as e:
            metrics.ORDERS.labels(self.name, "state_unsaved").inc()
            log.error("risk state not saved", path=str(self.state_file.path), error=repr(e))
            return False
        return True

    # orders ----------------------------------------------------------------------------------
    def _refuse(self, group_id: str, reason: str, outcome: str) -> None:
        self.refused.append((group_id, reason))
        metrics.ORDERS.labels(self.name, outcome).inc()
        log.warning("live order refused", group_id=group_id, reason=reason, outcome=outcome)

    async def execute(self, action: Action, quote: tuple) -> Any:
        order = order_of(action, self.cfg)
        if order is None:
            return None
        venue = self.venues.get(action.exchange)
        if venue is None:
            self._refuse(action.group_id, f"unknown venue {action.exchange!r} (configured: "
                         f"{', '.join(sorted(self.venues))})", "unknown_venue")
            return None
        ts, bid, _, ask, _ = quote
        sign, notional, key, spec = order.sign, order.notional, order.key, order.spec
        reason = self.gate.check(key, sign * notional)
        if reason is not None:
            self._refuse(action.group_id, reason, "refused")
            return None
        side = "buy" if sign > 0 else "sell"
        qty = notional / (ask if sign > 0 else bid)
        # counted from the moment it may reach the venue, and on disk before it is sent: a crash
        # mid-order must not give the next process a fresh minute
        self.gate.note_order()
        if not self._persist():
            self._refuse(action.group_id, "risk state could not be saved (failing closed)", "refused")
            return None
        placed = await self._place(venue, action.symbol, side, qty, client_order_id(action.group_id), {},
                                   action.group_id)
        if placed.outcome == "rejected":
            self._refuse(action.group_id, f"rejected by {venue.name}: {placed.error}", "rejected")
            return None
        # sent, or unknown: counted as held either way, so the limits never undercount exposure
        self.gate.add_position(key, sign * notional)
        if placed.outcome == "sent":
            self.open.append(OpenPosition(action.group_id, action.exchange, action.symbol, side, qty,
                                          sign * notional, ts + int(spec.horizon_s * 1e9)))
            metrics.ORDERS.labels(self.name, "sent").inc()
        else:
            # not closed automatically: a close for an order that never existed would sell what
            # the account holds; the next start reconciles the position from the venue
            self.unknown.append((action.group_id, placed.error))
            metrics.ORDERS.labels(self.name, "unknown").inc()
            log.error("live order outcome unknown after retries; check the venue by client order id",
                      group_id=action.group_id, exchange=venue.name, client_order_id=client_order_id(action.group_id),
                      error=placed.error)
        self._persist()
        return placed.order

    async def _place(self, venue: LiveVenue, symbol: str, side: str, qty: float, cid: str,
                     params: dict[str, Any], group_id: str, *, maybe_sent: bool = False) -> Placement:
        """Send one market order, retrying network errors without ever placing it twice."""
        ex = venue.exchange
        last = ""
        for attempt in range(self.cfg.order_retries + 1):
            if attempt:
                metrics.ORDERS.labels(self.name, "retried").inc()
                await asyncio.sleep(self.cfg.order_backoff_s * 2 ** (attempt - 1))  # backoff, not a sync
            if maybe_sent:
                try:
                    order = await ex.fetch_order(None, symbol, {"clientOrderId": cid})
                    log.info("order found by client order id; not re-sent", group_id=group_id, client_order_id=cid)
                    return Placement("sent", order)
                except ccxt.OrderNotFound:
                    maybe_sent = False  # the venue says it never got it: safe to send
                except ccxt.BaseError as e:
                    last = f"lookup: {e!r}"  # cannot tell: look again after the next backoff
                    log.warning("order lookup failed", group_id=group_id, client_order_id=cid, error=last)
                    continue
            try:
                order = await ex.create_order(symbol, "market", side, qty, None, {**params, "clientOrderId": cid})
                return Placement("sent", order)
            except ccxt.NetworkError as e:
                maybe_sent = True
                last = repr(e)
                log.warning("order request failed; will look it up and retry", group_id=group_id,
                            exchange=venue.name, client_order_id=cid, attempt=attempt, error=last)
            except ccxt.BaseError as e:
                return Placement("rejected", error=str(e))
        return Placement("unknown", error=last)

    # horizons --------------------------------------------------------------------------------
    def on_market_time(self, exchange: str, symbol: str, ts_ns: int) -> None:
        """Send the reducing order of every position on (exchange, symbol) whose horizon passed.
        With the kill switch engaged nothing is sent; the closes go once it is released."""
        due = [p for p in self.open if p.exchange == exchange and p.symbol == symbol and ts_ns >= p.exit_ns
               and p.group_id not in self._closing]
        if not due or self.gate.kill.engaged:
            return
        for p in due:
            task = asyncio.get_running_loop().create_task(self._close(p), name=f"close-{p.group_id}")
            self._closing[p.group_id] = task
            task.add_done_callback(lambda _t, g=p.group_id: self._closing.pop(g, None))

    async def _close(self, p: OpenPosition) -> None:
        venue = self.venues[p.exchange]
        side = "sell" if p.side == "buy" else "buy"
        market = venue.exchange.market(p.symbol) if venue.exchange.markets else {}
        params = {"reduceOnly": True} if market.get("contract") else {}
        cid = client_order_id(p.group_id, "close")
        placed = await self._place(venue, p.symbol, side, p.qty, cid, params, p.group_id, maybe_sent=p.maybe_sent)
        if placed.outcome == "sent":
            self.open.remove(p)
            self.gate.add_position((p.exchange, p.symbol), -p.signed_notional)
            metrics.ORDERS.labels(self.name, "close_sent").inc()
        elif placed.outcome == "rejected":
            # the position stays counted: it is still held until someone flattens it
            self.open.remove(p)
            self._refuse(p.group_id, f"close rejected by {venue.name}: {placed.error}", "close_rejected")
            log.error("horizon close rejected; the position stays open on the venue", group_id=p.group_id,
                      exchange=p.exchange, symbol=p.symbol, qty=p.qty)
        else:
            p.maybe_sent = True  # the next market event tries again, looking it up first
            self.unknown.append((p.group_id, placed.error))
            metrics.ORDERS.labels(self.name, "close_unknown").inc()
            log.error("horizon close outcome unknown; retried on the next market event", group_id=p.group_id,
                      exchange=p.exchange, client_order_id=cid, error=placed.error)
        self._persist()
