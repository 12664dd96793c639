"""The daemon's inputs: exchange websockets through ccxt.pro (``market``) and Bluesky Jetstream
(``social``). Each source reports its streams as up or down (``streams_up``); ``up_down`` sums
them for the daemon's ``/status`` and ``eigenloop run``'s status line."""

from __future__ import annotations

from typing import Any, Iterable


def up_down(sources: Iterable[Any]) -> dict[str, Any]:
    """``{"up": n, "total": m, "down": [stream names]}`` over the sources' streams. A stream that
    never connected (no network, a wrong URL) is down, however long it has been retrying."""
    streams: dict[str, bool] = {}
    for source in sources:
        streams.update(source.streams_up())
    down = sorted(name for name, up in streams.items() if not up)
    return {"up": len(streams) - len(down), "total": len(streams), "down": down}
