"""Bluesky Jetstream over ``websockets``, normalised into SocialPost and SocialEngagement."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable
from urllib.parse import urlencode, urlsplit, urlunsplit

import websockets
from pydantic import ValidationError

from daemon.errors import ConfigError, MalformedInput
from daemon.logging import bind_task, get_logger
from daemon.sources import metrics
from schemas.base import Event
from schemas.deadletter import DeadLetter
from schemas.settings import SourcesSettings
from schemas.social import SocialEngagement, SocialPost

try:
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    from json import loads as _loads

log = get_logger(__name__)

Sink = Callable[[Event], Awaitable[None]]
SOURCE = "bluesky:jetstream"
POST, LIKE, REPOST = "app.bsky.feed.post", "app.bsky.feed.like", "app.bsky.feed.repost"
_ENGAGEMENT = {LIKE: "like", REPOST: "repost"}


@dataclass
class SocialState:
    up: bool = False
    events: int = 0
    drops: int = 0
    cursor: int | None = None  # newest time_us seen
    error: str | None = None
    failed: bool = False


class JetstreamSource:
    """Jetstream posts, likes and reposts, emitted to ``sink``.

    Delivery: each record is awaited in ``sink`` before the next frame is read (a slow sink
    slows the socket; Jetstream may then drop us, and we resume from the cursor). After a drop
    it reconnects with exponential backoff and full jitter, asking for ``cursor = newest
    time_us seen - rewind_us`` (Jetstream's ``time_us`` is not monotonic across repositories, so
    resuming exactly at the newest one could skip events): the overlap is removed by a dedupe
    window over event identity, so each event is emitted once. No StreamGap is emitted: with
    the cursor, a drop loses nothing Jetstream still holds.

    Ordering: the server's. Creates of other collections, deletes, identity and account events
    are counted (``eigenloop_source_skipped_total``) and not emitted. Frames that are not JSON or
    lack what a post/like/repost needs go to ``dead_letter`` as ``DeadLetter`` with the raw
    frame, and the malformed counter moves; the stream goes on.

    Cancellation: ``stop()`` cancels the reader, a ``sink`` call in progress included, and
    closes the socket. If ``sink`` raises, the source stops and ``wait()`` re-raises.
    """

    def __init__(self, url: str, sink: Sink, *, dead_letter: Sink | None = None,
                 collections: Iterable[str] = (POST, LIKE, REPOST), cursor: int | None = None,
                 rewind_us: int = 2_000_000, backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0,
                 dedupe_window: int = 100_000, open_timeout_s: float = 10.0, rng: random.Random | None = None) -> None:
        if not url.startswith(("ws://", "wss://")):
            raise ConfigError(f"jetstream url must be ws:// or wss://, got {url!r}")
        self.url, self.sink, self.dead_letter = url, sink, dead_letter
        self.collections = tuple(collections)
        self.rewind_us = rewind_us
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self.dedupe_window, self.open_timeout_s = dedupe_window, open_timeout_s
        self.rng = rng or random.Random()
        self.state = SocialState(cursor=cursor)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._ws: Any = None
        # a loop-paced replay (``daemon.sources.pace``) reads these to tell when every frame is handled
        self.frames_in = 0
        self.frames_done = 0
        self.on_progress: Callable[[], None] | None = None

    @classmethod
    def from_settings(cls, settings: SourcesSettings, sink: Sink, **kw: Any) -> "JetstreamSource":
        kw.setdefault("collections", settings.social_collections)
        kw.setdefault("backoff_initial_s", settings.backoff_initial_s)
        kw.setdefault("backoff_max_s", settings.backoff_max_s)
        return cls(settings.jetstream_url, sink, **kw)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="jetstream")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    def quiescent(self) -> bool:
        return self.frames_done >= self.frames_in

    def streams_up(self) -> dict[str, bool]:
        """The one stream -> up: its websocket is connected."""
        return {SOURCE: self.state.up}

    async def wait(self) -> None:
        if self._task is not None:
            await self._task

    async def __aenter__(self) -> "JetstreamSource":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def subscribe_url(self) -> str:
        """The URL the next connection uses: filters plus the resume cursor."""
        parts = urlsplit(self.url)
        query = [("wantedCollections", c) for c in self.collections]
        if self.state.cursor is not None:
            query.append(("cursor", str(max(0, self.state.cursor - self.rewind_us))))
        extra = "&".join(q for q in (parts.query, urlencode(query)) if q)
        return urlunsplit((parts.scheme, parts.netloc, parts.path or "/subscribe", extra, ""))

    async def _run(self) -> None:
        bind_task(task="social")
        attempt = 0
        while True:
            try:
                async with websockets.connect(self.subscribe_url(), open_timeout=self.open_timeout_s,
                                              max_size=2**22) as ws:
                    self._ws = ws
                    if attempt:
                        log.info("social.stream_up", after_attempts=attempt, cursor=self.state.cursor)
                    self.state.up, attempt = True, 0
                    async for frame in ws:
                        self.frames_in += 1
                        try:
                            await self._on_frame(frame)
                        finally:
                            self.frames_done += 1
                            if self.on_progress is not None:
                                self.on_progress()
                raise ConnectionError("closed by the server")
            except asyncio.CancelledError:
                raise
            except _SinkError as e:
                self.state.up, self.state.failed, self.state.error = False, True, f"sink: {e.__cause__!r}"
                log.error("social.sink_failed", error=self.state.error)
                raise e.__cause__ from None  # type: ignore[misc]
            except Exception as e:  # closed, refused, timed out: reconnect from the cursor
                attempt += 1
                self.state.error = f"{type(e).__name__}: {e}"[:500]
                if self.state.up:
                    self.state.up, self.state.drops = False, self.state.drops + 1
                metrics.RECONNECTS.labels(source=SOURCE, stream="jetstream").inc()
                delay = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (attempt - 1))
                delay = self.rng.uniform(0.1 * delay, delay)
                log.warning("social.stream_down", error=self.state.error, attempt=attempt,
                            retry_in_s=round(delay, 3), cursor=self.state.cursor)
                await asyncio.sleep(delay)

    async def _on_frame(self, frame: str | bytes) -> None:
        now = time.time_ns()
        try:
            d = _loads(frame)
            if not isinstance(d, dict):
                raise MalformedInput("not a JSON object")
            event = self._normalise(d, now)
        except (MalformedInput, ValidationError, ValueError, TypeError, KeyError, AttributeError) as e:
            await self._dead(frame, e)
            return
        if event is None:
            return
        commit = d.get("commit") or {}
        ident = f"{d['did']}|{d['time_us']}|{commit.get('rev')}|{commit.get('collection')}|{commit.get('rkey')}"
        if ident in self._seen:
            metrics.DUPLICATES.labels(source=SOURCE).inc()
            return
        self._seen[ident] = None
        if len(self._seen) > self.dedupe_window:
            self._seen.popitem(last=False)
        try:
            await self.sink(event)
        except Exception as e:
            raise _SinkError() from e
        self.state.events += 1
        metrics.EVENTS_IN.labels(source=SOURCE, type=event.type).inc()

    def _normalise(self, d: dict[str, Any], now: int) -> Event | None:
        did, time_us, kind = d.get("did"), d.get("time_us"), d.get("kind")
        if not isinstance(did, str) or not did.startswith("did:"):
            raise MalformedInput("missing or invalid 'did'")
        if not isinstance(time_us, int) or time_us <= 0:
            raise MalformedInput("missing or invalid 'time_us'")
        if not isinstance(kind, str):
            raise MalformedInput("missing 'kind'")
        # the cursor moves on every well-formed event, kept or not: it is a position
        self.state.cursor = max(self.state.cursor or 0, time_us)
        if kind != "commit":
            metrics.SKIPPED.labels(source=SOURCE, reason=kind[:32]).inc()
            return None
        commit = d.get("commit")
        if not isinstance(commit, dict):
            raise MalformedInput("commit event without 'commit'")
        op, coll, rkey = commit.get("operation"), commit.get("collection"), commit.get("rkey")
        if not isinstance(coll, str) or not isinstance(rkey, str) or not isinstance(op, str):
            raise MalformedInput("commit without operation/collection/rkey")
        if op != "create" or coll not in (POST, LIKE, REPOST):
            metrics.SKIPPED.labels(source=SOURCE, reason=f"{op}:{coll}" if coll.startswith("app.bsky.") else op).inc()
            return None
        record = commit.get("record")
        if not isinstance(record, dict):
            raise MalformedInput(f"{coll} create without 'record'")
        env = dict(ts_event=time_us * 1000, ts_ingest=now, source=SOURCE)
        if coll == POST:
            text, langs = record.get("text"), record.get("langs") or []
            if not isinstance(text, str):
                raise MalformedInput("post without text")
            uri = f"at://{did}/{coll}/{rkey}"
            return SocialPost(did=did, uri=uri, text=text, langs=list(langs), time_us=time_us, key=uri, **env)
        subject = (record.get("subject") or {}).get("uri")
        if not isinstance(subject, str) or not subject.startswith("at://"):
            raise MalformedInput(f"{_ENGAGEMENT[coll]} without a subject at:// uri")
        return SocialEngagement(did=did, kind=_ENGAGEMENT[coll], subject_uri=subject, time_us=time_us,  # type: ignore[arg-type]
                                key=subject, **env)

    async def _dead(self, frame: str | bytes, e: Exception) -> None:
        metrics.MALFORMED.labels(source=SOURCE).inc()
        log.warning("social.malformed_frame", reason=str(e)[:200], error_type=type(e).__name__)
        dl = DeadLetter.from_input(frame, source_topic="social.events", reason=str(e)[:1000] or type(e).__name__,
                                   error_type=type(e).__name__, source=SOURCE, key=SOURCE)
        if self.dead_letter is None:
            log.warning("social.dead_letter_unrouted", reason=dl.reason)
            return
        try:
            await self.dead_letter(dl)
        except Exception as err:  # the dead-letter path must not stop the stream
            log.error("social.dead_letter_failed", error=repr(err))


class _SinkError(Exception):
    """Wraps a sink failure so the reconnect loop does not mistake it for a network error."""
