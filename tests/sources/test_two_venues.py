"""Binance and OKX BTC/USDT at once: two replay servers (each on its own clock: 2024-08 and
2022-05), the daemon's market source for both venues into a real Kafka broker, then the actor's
context and schedule and the stream processor's scoring on what the broker gave back.

What runs for real: both replay servers, ccxt.pro's binance and okx parsers, ``MarketSource``,
the producer, the broker, the reader, ``ContextWindow``, ``Actor`` (scheduling, prompts, action
records; a stub policy stands in for the model), and ``streams.engine.SymbolEngine``, the pure
engine the Faust worker wraps, fed the consumed records in log order. The Faust worker process
itself is not started here (tests/e2e runs it); what it adds is transport, not keying.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from source_helpers import Collector, capture_data, run

from daemon.eventlog import EventProducer, read_range
from daemon.service.actor import Actor
from daemon.service.context import ContextWindow
from daemon.sources.market import MarketSource
from daemon.tools.capture_servers.binance_server import BinanceReplayServer
from daemon.tools.capture_servers.okx_server import REPLAY_OPTIONS, OkxReplayServer
from schemas import Action, BookTicker, MarketTrade, MarketWatermark, Outcome
from schemas.codec import decode, encode
from schemas.settings import ActorSettings, ExchangeSettings, GroupConfig, RewardConfig
from streams.engine import SymbolEngine, state_key

SYM = "BTC/USDT"
S = 1_000_000_000
OKX_DAY = (1_652_400_000 * S, 1_652_486_400 * S)  # 2022-05-13 UTC
BIN_DAYS = (1_723_075_200 * S, 1_723_248_000 * S)  # 2024-08-08 .. 09 UTC
CADENCE_S, HORIZON_S = 2.0, 2.0


class _Policy:
    """Stands in for the model: three valid candidates, so every group has a reward spread."""

    async def sample(self, prompt, n, seed, temperature=None, top_p=None):
        return ["long 1 h2", "short 1 h2", "flat 0 h2"][:n], 0


async def _read(settings, topic: str) -> list:
    return [ev async for _, ev in read_range(settings, topic)]


@pytest.mark.kafka
def test_binance_and_okx_btc_usdt_keep_their_own_windows_actions_and_outcomes(data_root: Path, kafka_settings):
    if not (data_root / "exchange_okx" / "OKX.ws.1.0").is_file():
        pytest.skip("OKX recording not found")
    bin_trades = {str(d["t"]) for d in capture_data(data_root, "spot", "spot", "btcusdt", "btcusdt@trade")}
    s = kafka_settings

    async def ingest() -> None:
        """Both venues through the market source into ``market.events``, as the daemon sends them."""
        dead = Collector()
        async with EventProducer(s) as producer:
            seen = Collector()

            async def sink(ev) -> None:
                await producer.send_retrying("market.events", ev, key=ev.symbol)  # the daemon's key
                await seen(ev)

            async with BinanceReplayServer(data_root, {"spot": ["BTCUSDT"]}, speed=4) as bsrv, \
                    OkxReplayServer(data_root, ["BTC-USDT"], speed=2) as osrv:
                venues = [ExchangeSettings(name="binance", symbols=[SYM], ws_url=bsrv.ws_url("spot"),
                                           rest_url=bsrv.rest_url), osrv.exchange_settings()]
                async with MarketSource(venues, sink, dead_letter=dead, exchange_options={"okx": REPLAY_OPTIONS}):
                    assert await bsrv.wait_subscribed([("spot", "btcusdt@trade"), ("spot", "btcusdt@bookTicker")], 30)
                    assert await osrv.wait_subscribed([("trades", "BTC-USDT"), ("tickers", "BTC-USDT")], 30)
                    bsrv.play()
                    osrv.play()
                    await asyncio.wait_for(osrv.finished.wait(), 60)
                    # Binance: at least the 11 s OKX recorded, in its own (2024) time
                    await seen.wait(lambda c: _span(c.of("market.book_ticker", exchange="binance")) > 14 * S and
                                    len(c.of("market.trade", exchange="okx")) == osrv.sent[("trades", "BTC-USDT")],
                                    60, "both venues' records")
            await producer.flush()
        assert dead.events == []

    run(ingest(), 150)
    market = asyncio.run(_read(s, "market.events"))
    quotes = {ex: [e for e in market if isinstance(e, BookTicker) and e.exchange == ex] for ex in ("binance", "okx")}
    trades = {ex: [e for e in market if isinstance(e, MarketTrade) and e.exchange == ex] for ex in ("binance", "okx")}
    assert all(len(quotes[ex]) >= 10 and len(trades[ex]) >= 20 for ex in quotes)
    assert {e.symbol for e in market} == {SYM}
    # each venue's records are its own: OKX's 2022 clock and trade ids, Binance's 2024 ones
    assert all(OKX_DAY[0] < e.ts_event < OKX_DAY[1] for e in quotes["okx"] + trades["okx"])
    assert all(BIN_DAYS[0] < e.ts_event < BIN_DAYS[1] for e in quotes["binance"] + trades["binance"])
    assert {t.trade_id for t in trades["binance"]} <= bin_trades
    assert not {t.trade_id for t in trades["okx"]} & bin_trades
    assert {e.source for e in market} == {"binance:spot", "okx:spot"}

    # the daemon's side: context and actor on the records as the broker delivered them ----------
    context = ContextWindow()
    decided: list[list[Action]] = []
    engine = SymbolEngine(RewardConfig(latency_ms=0.0, fee_bps=0.0, slippage_model="none"),
                          GroupConfig(group_size=3, grace_s=1.0), book={}, index={}, pending={},
                          agenda={}, closed={})
    emits = []

    async def decide_all() -> None:
        async def emit(topic, ev):
            if topic == "agent.actions":
                decided[-1].append(ev)

        actor = Actor(_Policy(), context, emit, None, ActorSettings(cadence_s=CADENCE_S, horizon_s=HORIZON_S),
                      GroupConfig(group_size=3), run_key="two-venues")
        async with EventProducer(s) as producer:
            for off, ev in enumerate(market):
                # the stream processor sees the record, then the actor decides on it (the live order)
                emits.extend(engine.on_market(encode(ev), topic="market.events", offset=off, wall_ns=ev.ts_ingest))
                if not isinstance(ev, (BookTicker, MarketTrade)):
                    continue
                context.observe(ev)
                actor.on_market_event(ev.exchange, ev.symbol, ev.ts_event)
                d = actor.take_due(ev.exchange, ev.symbol)
                if d is None:
                    continue
                decided.append([])
                await actor.decide(d)
                for a in decided[-1]:
                    await producer.send_retrying("agent.actions", a)
                    emits.extend(engine.on_internal(encode(a), topic="internal", wall_ns=ev.ts_ingest))
            # the end of the replay: a watermark per market past every horizon closes the rest
            for ex in ("binance", "okx"):
                last = max(e.ts_event for e in quotes[ex] + trades[ex])
                wm = MarketWatermark(exchange=ex, symbol=SYM, reason="end of replay", key=SYM, source="test",
                                     ts_event=last + round((HORIZON_S + 2) * 1e9))
                emits.extend(engine.on_market(encode(wm), topic="market.events", wall_ns=wm.ts_event))
            await producer.flush()

    asyncio.run(decide_all())
    # two windows, each with only its venue's prices (Binance ~61k in 2024, OKX ~30k in 2022)
    assert set(context.markets) == {("binance", SYM), ("okx", SYM)}
    assert all(q[1] > 50_000 for q in context.markets[("binance", SYM)].quotes)
    assert all(q[1] < 40_000 for q in context.markets[("okx", SYM)].quotes)

    actions = [a for a in asyncio.run(_read(s, "agent.actions")) if isinstance(a, Action)]
    assert len(actions) == 3 * len(decided)
    venue = {a.group_id: a.exchange for a in actions}
    per_venue = {ex: {g for g, v in venue.items() if v == ex} for ex in ("binance", "okx")}
    assert len(per_venue["okx"]) >= 3 and len(per_venue["binance"]) >= 3, per_venue
    for a in actions:  # the decision time is the venue's own clock
        lo, hi = OKX_DAY if a.exchange == "okx" else BIN_DAYS
        assert lo < a.ts_event < hi and a.symbol == SYM and a.parsed is not None

    # outcomes: every candidate scored, on its own venue's book
    outcomes = [decode(e.value) for e in emits if e.topic == "agent.outcomes"]
    assert all(isinstance(o, Outcome) for o in outcomes)
    assert {(o.group_id, o.candidate_index) for o in outcomes} == {(a.group_id, a.candidate_index) for a in actions}
    for o in outcomes:
        if o.exit_reason == "flat":
            continue
        assert o.valid and o.entry_price is not None, o
        assert (o.entry_price < 40_000) == (venue[o.group_id] == "okx"), (venue[o.group_id], o.entry_price)
        assert (o.exit_price < 40_000) == (venue[o.group_id] == "okx")
    groups = [decode(e.value) for e in emits if e.topic == "learn.groups"]
    assert {g.group_id for g in groups} == set(venue)
    assert not [e for e in emits if e.topic == "deadletter"]
    # the engine kept one state per market
    assert set(engine.index) == {state_key("binance", SYM), state_key("okx", SYM)}


def _span(events: list) -> int:
    return events[-1].ts_event - events[0].ts_event if len(events) > 1 else 0
