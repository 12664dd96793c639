"""ReplayCluster gives settings that the real sources can use as they are."""

from __future__ import annotations

from source_helpers import Collector, run

from daemon.sources.market import MarketSource
from daemon.sources.social import JetstreamSource
from daemon.tools.capture_servers import ReplayCluster


def test_cluster_feeds_market_and_social_sources_including_books(data_root):
    async def body():
        market, social = Collector(), Collector()
        async with ReplayCluster(data_root, speed=20, symbols=["BTC/USDT"], markets=["spot", "usdm"],
                                 social_speed=0.5, depth=True) as cluster:
            settings = cluster.sources_settings()
            assert [x.name for x in settings.exchanges] == ["binance", "binanceusdm"]
            assert settings.exchanges[1].symbols == ["BTC/USDT:USDT"]
            src = MarketSource.from_settings(settings, market, channels=("trades", "bids_asks", "order_book"))
            soc = JetstreamSource.from_settings(settings, social)
            async with src, soc:
                await market.wait(lambda c: all(len(c.of(t, exchange=x)) >= 5 for x in ("binance", "binanceusdm")
                                                for t in ("market.trade", "market.book_ticker", "market.depth")),
                                  60, "trades, tickers and books from both markets")
                await social.wait(lambda c: len(c.events) >= 20, 30, "social events")
        for ex in ("binance", "binanceusdm"):
            books = market.of("market.depth", exchange=ex)
            assert books[0].is_snapshot and not any(b.is_snapshot for b in books[1:])
            assert all(b.bids[0][0] < b.asks[0][0] and len(b.bids) == 20 for b in books)
            assert [b.update_id for b in books] == sorted(b.update_id for b in books)

    run(body(), 120)
