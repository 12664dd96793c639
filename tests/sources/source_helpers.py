"""Helpers for the source tests: ground truth read straight from the captures, and an event
collector that tests wait on (conditions with timeouts, never bare sleeps)."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path
from typing import Any, Callable


def capture_lines(root: Path, folder: str, prefix: str, symbol: str, stream: str) -> list[bytes]:
    """The raw payloads (without the timestamp) of one stream, read independently of the server."""
    out = []
    for path in sorted((root / "exchange_binance" / folder).glob(f"{prefix}_{symbol}_*.gz")):
        with gzip.open(path, "rb") as fh:
            for line in fh:
                payload = line.split(b" ", 1)[1].rstrip(b"\n")
                if payload.startswith(b'{"stream":"' + stream.encode() + b'"'):
                    out.append(payload)
    return out


def capture_data(root: Path, folder: str, prefix: str, symbol: str, stream: str) -> list[dict[str, Any]]:
    return [json.loads(p)["data"] for p in capture_lines(root, folder, prefix, symbol, stream)]


class Collector:
    """An async sink that records events and lets a test wait for a condition on them."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self._cond = asyncio.Condition()

    async def __call__(self, event: Any) -> None:
        async with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def of(self, type_: str, **fields: Any) -> list[Any]:
        return [e for e in self.events if e.type == type_ and all(getattr(e, k) == v for k, v in fields.items())]

    async def wait(self, pred: Callable[["Collector"], bool], timeout: float, what: str = "") -> None:
        async with self._cond:
            try:
                await asyncio.wait_for(self._cond.wait_for(lambda: pred(self)), timeout)
            except TimeoutError:
                kinds: dict[str, int] = {}
                for e in self.events:
                    kinds[e.type] = kinds.get(e.type, 0) + 1
                raise AssertionError(f"timed out after {timeout}s waiting for {what or pred}; got {kinds}") from None


def run(coro: Any, timeout: float = 90.0) -> Any:
    """Run an async test body with an overall deadline."""
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())
