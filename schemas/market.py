"""Market data records, normalised from any exchange. Keyed by symbol."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

from pydantic import Field, model_validator

from schemas.base import Event


class MarketTrade(Event):
    """One public trade. ``side`` is the taker's side.

    Version history: v1 had ``amount`` and no ``exchange`` (it was the ``source``); v2 renamed
    ``amount`` to ``qty`` and added ``exchange``. ``schemas.codec`` upgrades v1 on read.
    """

    TYPE = "market.trade"
    VERSION = 2

    exchange: str
    symbol: str
    trade_id: str
    # allow_inf_nan: one inf price becomes every later reward and feature that reads it
    price: float = Field(gt=0, allow_inf_nan=False)
    qty: float = Field(ge=0, allow_inf_nan=False)
    side: Literal["buy", "sell"]


class BookTicker(Event):
    """Best bid and ask (top of book)."""

    TYPE = "market.book_ticker"

    exchange: str
    symbol: str
    bid_price: float = Field(ge=0, allow_inf_nan=False)
    bid_qty: float = Field(ge=0, allow_inf_nan=False)
    ask_price: float = Field(ge=0, allow_inf_nan=False)
    ask_qty: float = Field(ge=0, allow_inf_nan=False)
    update_id: int | None = None


class DepthUpdate(Event):
    """Order book levels: a snapshot (``is_snapshot``) or the top levels after a delta."""

    TYPE = "market.depth"

    exchange: str
    symbol: str
    bids: list[tuple[float, float]]
    asks: list[tuple[float, float]]
    is_snapshot: bool = False
    update_id: int | None = None

    # a validator rather than Annotated tuple items: the analytics DDL maps plain element types
    @model_validator(mode="after")
    def _finite_levels(self) -> "DepthUpdate":
        for side in ("bids", "asks"):
            for i, (price, qty) in enumerate(getattr(self, side)):
                if not (math.isfinite(price) and math.isfinite(qty)):
                    raise ValueError(f"{side}[{i}]: level ({price}, {qty}) is not finite")
        return self


class StreamGap(Event):
    """A stream dropped: whatever happened between ``gap_start_ns`` and the reconnect is missing."""

    TYPE = "market.stream_gap"

    exchange: str
    symbol: str
    stream: str
    reason: str
    gap_start_ns: int
    attempt: int = 0


class MarketWatermark(Event):
    """A source's promise: no record of (``exchange``, ``symbol``) older than ``ts_event`` follows.

    A finite replay ends each symbol's input with one, so the stream processors close what the
    end of the data makes final in event time, without a wall-clock guess about idle streams."""

    TYPE = "market.watermark"

    exchange: str
    symbol: str
    reason: str = ""


@dataclass(frozen=True)
class MarketFeatures:
    """What a market prompt shows of one market at one instant: returns over the last 1, 10 and
    60 s and the spread in bps, top-of-book imbalance in [-1, 1], quote notional traded recently,
    and social activity when a social stream feeds the context (None: not measured).

    One record for all who make or read one: the context measures it, the grammar writes it into
    the prompt, the bootstrap prior and the benchmark tasks draw synthetic ones. Not an event:
    ``Prompt.features`` carries ``as_dict()`` on the wire.
    """

    ret_1s: float = 0.0
    ret_10s: float = 0.0
    ret_60s: float = 0.0
    spread_bps: float = 0.0
    imbalance: float = 0.0
    volume: float = 0.0
    social_posts: float | None = None
    social_likes: float | None = None

    def as_dict(self) -> dict[str, float]:
        """Named values, the unmeasured ones left out."""
        return {k: float(v) for k, v in asdict(self).items() if v is not None}
