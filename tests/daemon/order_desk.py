"""A local Binance "order desk": just enough of the signed REST API for ccxt's own
``create_order``, ``fetch_order`` (by client order id), ``fetch_balance``, ``fetch_ticker`` and
``fetch_positions`` (USD-M ``positionRisk``), for spot (``/api/v3``) and USD-M (``/fapi``).

Point a ccxt binance / binanceusdm exchange at it with
``daemon.sources.ccxt_glue.make_exchange(name, symbols, rest_url=desk.url)`` and the desk's key
and secret. Requests must carry the API key header and a valid HMAC-SHA256 signature, as on
Binance, so a test proves ccxt really signed what it sent.

Market orders fill at once at the desk's price. A client order id is NOT unique here once its
order is filled (Binance only rejects duplicates of open orders), so a client that blindly
re-sends after a timeout gets a second fill: the case the executor must avoid.

Faults for the next order requests (``fail_next``): ``"http500"`` (5xx, nothing placed),
``"hang_before"`` (no answer, nothing placed), ``"hang_after"`` (the order IS placed, then no
answer), ``"insufficient"`` (Binance -2010, insufficient balance). Hung requests are released by
``stop()``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from daemon.tools.capture_servers.captures import exchange_info

API_KEY = "desk-test-key"
SECRET = "desk-test-secret"


@dataclass
class DeskOrder:
    market: str  # "spot" | "usdm"
    symbol: str  # exchange id, e.g. BTCUSDT
    side: str  # BUY | SELL
    qty: float
    price: float
    client_id: str
    order_id: int
    reduce_only: bool = False
    ts_ms: int = 0


@dataclass
class OrderDesk:
    prices: dict[str, float] = field(default_factory=lambda: {"BTCUSDT": 100.0, "ETHUSDT": 10.0})
    balances: dict[str, float] = field(default_factory=lambda: {"USDT": 1_000_000.0})
    positions: dict[str, float] = field(default_factory=dict)  # usdm: signed qty per symbol
    orders: list[DeskOrder] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) seen
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        self._faults: list[str] = []
        self._ids = itertools.count(1000)
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.hung = 0  # requests currently held without an answer

    # lifecycle -------------------------------------------------------------------------------
    async def start(self) -> "OrderDesk":
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self.host, 0))  # our own socket: its port is known before serving starts
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def stop(self) -> None:
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> "OrderDesk":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def fail_next(self, fault: str, times: int = 1) -> None:
        assert fault in ("http500", "hang_before", "hang_after", "insufficient"), fault
        self._faults += [fault] * times

    def order_posts(self) -> int:
        return sum(1 for m, p in self.requests if m == "POST" and p.endswith("/order"))

    # serving ---------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.requests.append((request.method, path))
        market = "usdm" if path.startswith("/fapi/") else "spot"
        endpoint = path.rsplit("/", 1)[-1]
        query = dict(parse_qsl(request.query_string, keep_blank_values=True))
        if endpoint == "exchangeInfo":
            info = json.loads(exchange_info(market, list(self.prices)))
            for s in info["symbols"]:
                s.setdefault("orderTypes", ["LIMIT", "MARKET"])  # the replay's futures info has none
            return web.json_response(info)
        if endpoint in ("ping", "time"):
            return web.json_response({"serverTime": 0} if endpoint == "time" else {})
        if endpoint in ("24hr", "bookTicker", "price"):
            return self._ticker(query.get("symbol", ""))
        # everything below is signed
        body = await request.text()
        raw = body if request.method == "POST" and body else request.query_string
        params = dict(parse_qsl(raw, keep_blank_values=True))
        problem = self._auth_problem(request, raw)
        if problem:
            return web.json_response({"code": -1022, "msg": problem}, status=401)
        if endpoint == "order" and request.method == "POST":
            return await self._new_order(market, params)
        if endpoint == "order" and request.method == "GET":
            return self._get_order(market, params)
        if endpoint == "account" and market == "spot":
            return web.json_response({"makerCommission": 0, "takerCommission": 0, "canTrade": True,
                                      "accountType": "SPOT", "updateTime": 0, "permissions": ["SPOT"],
                                      "balances": [{"asset": a, "free": f"{v:.8f}", "locked": "0"}
                                                   for a, v in self.balances.items()]})
        if endpoint == "leverageBracket":
            return web.json_response([{"symbol": s, "brackets": [{"bracket": 1, "initialLeverage": 20,
                                       "notionalCap": 1e9, "notionalFloor": 0, "maintMarginRatio": 0.004,
                                       "cum": 0}]} for s in self.prices])
        if endpoint == "positionRisk":
            return web.json_response([self._position(s, q) for s, q in self.positions.items()])
        return web.json_response({"code": -1, "msg": f"order desk: not served: {request.method} {path}"}, status=404)

    def _auth_problem(self, request: web.Request, raw: str) -> str | None:
        if request.headers.get("X-MBX-APIKEY") != API_KEY:
            return "API-key format invalid."
        unsigned, sep, signature = raw.rpartition("&signature=")
        if not sep:
            return "Signature for this request is not valid."
        expected = hmac.new(SECRET.encode(), unsigned.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            return "Signature for this request is not valid."
        return None

    def _ticker(self, symbol: str) -> web.Response:
        if symbol not in self.prices:
            return web.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)
        p = f"{self.prices[symbol]:.8f}"
        return web.json_response({"symbol": symbol, "lastPrice": p, "bidPrice": p, "askPrice": p, "openPrice": p,
                                  "highPrice": p, "lowPrice": p, "volume": "0", "quoteVolume": "0",
                                  "openTime": 0, "closeTime": 0, "priceChange": "0", "priceChangePercent": "0",
                                  "weightedAvgPrice": p, "prevClosePrice": p, "bidQty": "1", "askQty": "1",
                                  "count": 0})

    async def _hang(self) -> web.Response:
        self.hung += 1
        try:
            await self._released.wait()  # until stop(): the client gives up first
        finally:
            self.hung -= 1
        return web.json_response({"code": -1007, "msg": "Timeout waiting for response from backend server."},
                                 status=503)

    async def _new_order(self, market: str, params: dict[str, str]) -> web.Response:
        fault = self._faults.pop(0) if self._faults else None
        if fault == "http500":
            return web.Response(status=500, text="Internal Server Error")
        if fault == "hang_before":
            return await self._hang()
        if fault == "insufficient":
            return web.json_response({"code": -2010, "msg": "Account has insufficient balance for requested action."},
                                     status=400)
        symbol = params["symbol"]
        if symbol not in self.prices:
            return web.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)
        order = DeskOrder(market, symbol, params["side"], float(params["quantity"]), self.prices[symbol],
                          params.get("newClientOrderId") or f"desk-{next(self._ids)}", next(self._ids),
                          params.get("reduceOnly") == "true", int(params.get("timestamp", "0")))
        self.orders.append(order)
        sign = 1.0 if order.side == "BUY" else -1.0
        if market == "usdm":
            self.positions[symbol] = self.positions.get(symbol, 0.0) + sign * order.qty
        else:
            base = symbol[: -len("USDT")]
            self.balances[base] = self.balances.get(base, 0.0) + sign * order.qty
            self.balances["USDT"] = self.balances.get("USDT", 0.0) - sign * order.qty * order.price
        if fault == "hang_after":
            return await self._hang()
        return web.json_response(self._order_json(order))

    def _get_order(self, market: str, params: dict[str, str]) -> web.Response:
        cid = params.get("origClientOrderId")
        oid = params.get("orderId")
        for order in self.orders:
            if order.market == market and order.symbol == params.get("symbol") and (
                    order.client_id == cid or str(order.order_id) == oid):
                return web.json_response(self._order_json(order))
        return web.json_response({"code": -2013, "msg": "Order does not exist."}, status=400)

    def _order_json(self, o: DeskOrder) -> dict[str, Any]:
        qty, quote = f"{o.qty:.8f}", f"{o.qty * o.price:.8f}"
        common = {"symbol": o.symbol, "orderId": o.order_id, "clientOrderId": o.client_id, "price": "0",
                  "origQty": qty, "executedQty": qty, "status": "FILLED", "timeInForce": "GTC", "type": "MARKET",
                  "side": o.side}
        if o.market == "usdm":
            return {**common, "avgPrice": f"{o.price:.8f}", "cumQuote": quote, "reduceOnly": o.reduce_only,
                    "positionSide": "BOTH", "updateTime": o.ts_ms}
        return {**common, "transactTime": o.ts_ms, "cummulativeQuoteQty": quote, "orderListId": -1,
                "fills": [{"price": f"{o.price:.8f}", "qty": qty, "commission": "0", "commissionAsset": "USDT"}]}

    def _position(self, symbol: str, qty: float) -> dict[str, Any]:
        price = self.prices[symbol]
        return {"symbol": symbol, "positionSide": "BOTH", "positionAmt": f"{qty:.8f}", "entryPrice": f"{price:.8f}",
                "breakEvenPrice": "0", "markPrice": f"{price:.8f}", "unRealizedProfit": "0",
                "liquidationPrice": "0", "isolatedMargin": "0", "notional": f"{qty * price:.8f}",
                "marginAsset": "USDT", "isolatedWallet": "0", "initialMargin": "0", "maintMargin": "0",
                "positionInitialMargin": "0", "openOrderInitialMargin": "0", "adl": 0, "bidNotional": "0",
                "askNotional": "0", "updateTime": 0}
