"""The daemon process: sources → Kafka, actor, executor, learner loop, HTTP. One asyncio loop.

``Daemon.start()`` brings the parts up in dependency order (model, producer, learner, actor,
sources, HTTP); ``stop()`` takes them down in reverse, then flushes and writes a final snapshot,
so a SIGTERM loses nothing that was acknowledged.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.errors import retriable
from daemon.eventlog import DeliveryFatal, EventProducer
from daemon.eventlog.broker_address import broker_answers
from daemon.logging import bind_task, get_logger, register_secret
from daemon.service import metrics, snapshots
from daemon.service.actor import Actor
from daemon.service.context import ContextWindow
from daemon.service.due_groups import DueGroups
from daemon.service.executors import KillSwitch, PaperExecutor, kill_switch_path
from daemon.service.heartbeat import LoopHeartbeat, liveness, model_loaded, task_alive
from daemon.service.http import HttpServer, resolve_admin_token
from daemon.service.learner_loop import LearnerLoop
from daemon.service.learner_settings import learner_config
from daemon.service.live_executor import LiveExecutor, LiveVenue
from daemon.service.policy import ResidentPolicy
from daemon.service.risk_state import risk_state_path
from daemon.service.run_summary import RunLedger, curve_path
from daemon.sources import up_down
from daemon.sources.pace import PaceLink
from schemas import (BookTicker, DeadLetter, Event, MarketTrade, MarketWatermark, SocialEngagement, SocialPost,
                     StreamGap)
from schemas.settings import ExchangeSettings, Settings

log = get_logger("daemon")
SETTLE_PATIENCE_S = 60.0  # how long a paced decision waits for the groups due before it


@dataclass(frozen=True)
class PartFailure:
    """A part of the daemon (learner, actor, producer) whose task ended on an error."""

    part: str
    error: BaseException


def apply_torch_threads(settings: Settings) -> None:
    if settings.learner.torch_threads:
        import torch

        torch.set_num_threads(settings.learner.torch_threads)


def settings_wants_cuda(settings: Settings) -> bool:
    return settings.learner.device == "cuda" or settings.learner.config.get("device") == "cuda"


def load_or_bootstrap(settings: Settings, progress: bool = False) -> tuple[Any, Path]:
    """The newest snapshot under the data folder that loads (a damaged one is skipped for the one
    before it); else the configured initial snapshot; else a freshly bootstrapped model saved as
    the initial snapshot. The path returned is the one loaded: the caller resumes from its offsets."""
    from learners.bootstrap import ensure_initial_snapshot

    apply_torch_threads(settings)
    root = snapshots.snapshot_root(settings.data_dir)
    device = None if settings.learner.device == "auto" else settings.learner.device
    loaded = snapshots.load_newest(root, device=device)
    if loaded is not None:
        return loaded
    initial = settings.learner.initial_snapshot or root / "0000000000-bootstrap"
    log.info("no snapshot yet: bootstrapping the initial model", path=str(initial))
    initial = ensure_initial_snapshot(initial, learner_config(settings), steps=settings.learner.bootstrap_steps,
                                      progress=progress, report=lambda fields: log.info("bootstrap", **fields))
    return snapshots.load(initial, device=device), initial


class Daemon:
    def __init__(self, settings: Settings, *, exchanges: list[ExchangeSettings] | None = None,
                 jetstream_url: str | None = None, live_trading_acknowledged: bool = False,
                 live_venues: dict[str, LiveVenue] | None = None):
        self.s = settings
        self.exchanges = exchanges if exchanges is not None else settings.sources.exchanges
        self.jetstream_url = jetstream_url
        self.context = ContextWindow()
        self.kill = KillSwitch(kill_switch_path(settings))
        if settings.executor.mode == "live":
            self.executor: Any = LiveExecutor.create(settings.executor, self.kill, live_venues or {},
                                                     state_file=risk_state_path(settings),
                                                     acknowledged=live_trading_acknowledged)
        else:
            self.executor = PaperExecutor(settings.executor, self.kill)
        self.events_in = 0
        self.market_first_ns = 0
        self.market_last_ns = 0
        self.dead_letters = 0
        self.started_at = time.time()
        self.started = False  # every part up (``start`` returned)
        self.heartbeat = LoopHeartbeat()
        self._broker_ok_at = 0.0
        self.parts: list[Any] = []
        self.sources: list[Any] = []  # started MarketSource / JetstreamSource, for up/down in status
        self.pace: PaceLink | None = None
        self.due: DueGroups | None = None
        self.curve: str | None = None
        self.settle_timeouts = 0
        self.drained_passes = 0  # passes whose every group is applied (their summary is ready)

    async def start(self) -> None:
        s = self.s
        learner_config(s)  # a bad learner option fails here, not after the model has loaded
        # first: an unreadable admin_token_file should fail the start before minutes of model loading
        token = resolve_admin_token(s, generate=True)
        register_secret(token)
        self.heartbeat.start()
        state, snap = await asyncio.to_thread(load_or_bootstrap, s)
        self.policy = ResidentPolicy(state, s.actor.temperature, s.actor.top_p)
        self.loaded_snapshot = snap
        offset = snapshots.snapshot_offsets(snap).get("learn.groups:0", 0)
        log.info("model loaded", snapshot=str(snap), policy_version=state.policy_version, offset=offset)
        metrics.POLICY_VERSION.set(state.policy_version)
        metrics.CUDA_AVAILABLE.set(1 if state.device.type == "cuda" else 0)
        if settings_wants_cuda(s) and state.device.type != "cuda":
            log.warning("no GPU: the learner runs on CPU", requested=s.learner.device)
        self.producer = await self._connect_producer()
        self._broker_ok_at = time.monotonic()
        recent = snapshots.read_snapshot_info(snap).get("metadata", {}).get("recent_groups", [])
        paced = s.replay.pace_url is not None
        # paced: the learner applies this run's groups in the input's order, the actor samples only
        # once the groups due by then are applied, and ids derive from (seed, starting model, decision)
        self.due = DueGroups() if paced else None
        self.ledger = RunLedger(self.context, s.reward, s.actor.horizon_s)
        self.learner = LearnerLoop(s, self.policy, self.producer, snapshots.snapshot_root(s.data_dir), offset,
                                   recent_groups=recent, order=self.due, on_applied=self.ledger.applied,
                                   on_probe=self.ledger.probed)
        await self.learner.start()
        # live: positions from the venues and the persisted rate window, before any decision
        await self.executor.start()
        run_key = f"{s.replay.seed}|{state.policy_version}|{self.learner.checksum()[:16]}" if paced else None
        self.actor = Actor(self.policy, self.context, self._emit, self.executor.execute, s.actor, s.groups,
                           seed=int(time.time()), run_key=run_key,
                           before_decide=self._settle_weights if paced else None, on_decided=self._decided)
        await self.actor.start()
        self.parts = [self.learner, self.actor]
        if self.exchanges:
            from daemon.sources.market import MarketSource

            self.market = MarketSource(self.exchanges, self.on_market, dead_letter=self.on_dead_letter,
                                       backoff_initial_s=s.sources.backoff_initial_s,
                                       backoff_max_s=s.sources.backoff_max_s)
            await self.market.start()
            self.parts.append(self.market)
            self.sources.append(self.market)
        if self.jetstream_url:
            from daemon.sources.social import JetstreamSource

            self.social = JetstreamSource(self.jetstream_url, self.on_social, dead_letter=self.on_dead_letter,
                                          collections=s.sources.social_collections)
            await self.social.start()
            self.parts.append(self.social)
            self.sources.append(self.social)
        if paced:
            self.pace = PaceLink(s.replay.pace_url, self.sources, self.actor.idle, self._end_of_replay,
                                 on_pass=self._pass_begins)
            self.actor.on_idle = self.pace.poke
            await self.pace.start()
            self.parts.append(self.pace)
        self.http = HttpServer(s.http.host, s.http.port, health=self.health, ready=self.readiness,
                               kill_switch=self.kill, snapshot=self._snapshot_now, admin_token=token,
                               status=self.status, pin=self.pin)
        self.http_port = await self.http.start()
        self._status_task = asyncio.create_task(self._status_loop(), name="status")
        self.started = True
        log.info("daemon started", http=f"{s.http.host}:{self.http_port}", exchanges=[x.name for x in self.exchanges],
                 kill_switch_file=str(self.kill.flag_file))

    async def _connect_producer(self, patience_s: float = 300.0) -> EventProducer:
        """Wait for the broker (restarts and outages happen) rather than crash at start."""
        from aiokafka.errors import KafkaConnectionError

        deadline = time.monotonic() + patience_s
        delay = 0.5
        while True:
            producer = EventProducer(self.s)
            try:
                await producer.start()
                return producer
            except KafkaConnectionError as e:
                await producer.stop()
                if time.monotonic() > deadline:
                    raise
                log.warning("broker unreachable at start; waiting", error=repr(e), retry_in_s=delay)
                await asyncio.sleep(delay)  # backoff before the next attempt
                delay = min(5.0, delay * 2)

    async def run_until(self, stop: asyncio.Event) -> PartFailure | None:
        """Wait for ``stop``, or for a part's task to end on an error; returns that failure."""
        # the producer "fails" when an event cannot be delivered and re-sending cannot help:
        # going on would leave a hole in the log
        delivery = asyncio.create_task(self.producer.wait_fatal())
        watched = {"learner": self.learner.task, "actor": self.actor.task, "producer": delivery}
        stopper = asyncio.create_task(stop.wait())
        tasks = [t for t in watched.values() if t is not None]
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        delivery.cancel()
        for name, task in watched.items():
            if task in done and not task.cancelled() and task.exception() is not None:
                error = task.exception()
                log.error("daemon part failed", part=name, error=repr(error), retriable=retriable(error))
                return PartFailure(name, error)
        return None

    async def stop(self) -> None:
        """Graceful: stop inputs first, let the model finish, flush, final snapshot."""
        self._status_task.cancel()
        for part in reversed(self.parts):
            try:
                await part.stop()
            except Exception as e:  # noqa: BLE001 - keep stopping the others; the error is logged
                log.error("stopping part failed", part=type(part).__name__, error=repr(e))
        await self.executor.close()  # live: closes in flight finish and are persisted
        try:
            await self.producer.flush()
        except DeliveryFatal as e:
            # an event could not be written: a final snapshot would claim steps whose updates are
            # not in the log, so a restart resumes from the last snapshot taken before the hole
            log.error("no final snapshot: events were not delivered", error=repr(e))
            path = None
        else:
            path = await self.learner.snapshot()
        await self.http.stop()
        await self.heartbeat.stop()
        await self.producer.stop()
        log.info("daemon stopped", final_snapshot=str(path), policy_version=self.policy.policy_version)

    async def _send(self, topic: str, event: Event, key: str | None = None) -> None:
        """Queue an event for Kafka, waiting out a broker outage (``EventProducer.send_retrying``):
        the stream that called stops reading meanwhile (ccxt and the replay/exchange buffer),
        memory stays bounded, and a failed delivery is re-sent until acknowledged (or stops the
        daemon), market and social records too: a live feed cannot be read again."""
        await self.producer.send_retrying(topic, event, key=key)

    async def _emit(self, topic: str, event: Event) -> None:
        await self._send(topic, event)

    async def on_market(self, ev: Event) -> None:
        await self._send("market.events", ev, key=getattr(ev, "symbol", ev.key))
        self.events_in += 1
        if isinstance(ev, MarketTrade):
            self.market_first_ns = self.market_first_ns or ev.ts_event
            self.market_last_ns = max(self.market_last_ns, ev.ts_event)
        metrics.EVENTS_IN.labels(ev.type).inc()
        if isinstance(ev, (BookTicker, MarketTrade)):
            self.context.observe(ev)
            if self.due is not None:
                self.due.observe(f"{ev.exchange}|{ev.symbol}", ev.ts_event)
            self.actor.on_market_event(ev.exchange, ev.symbol, ev.ts_event)
            self.executor.on_market_time(ev.exchange, ev.symbol, ev.ts_event)
        elif isinstance(ev, StreamGap):
            log.warning("stream gap", exchange=ev.exchange, symbol=ev.symbol, stream=ev.stream, reason=ev.reason)

    async def on_social(self, ev: Event) -> None:
        key = ev.uri if isinstance(ev, SocialPost) else getattr(ev, "subject_uri", ev.key)
        await self._send("social.events", ev, key=key)
        self.events_in += 1
        metrics.EVENTS_IN.labels(ev.type).inc()
        if isinstance(ev, (SocialPost, SocialEngagement)):
            self.context.observe(ev)

    # a paced replay --------------------------------------------------------------------------
    async def _settle_weights(self) -> None:
        """Before a paced decision samples: every group due by now is applied. A group that never
        comes (a worker that lost it) must not hang the replay: after ``SETTLE_PATIENCE_S`` the
        decision goes ahead, logged and counted (the run is then no longer reproducible)."""
        assert self.due is not None
        if not await self.due.wait_settled(SETTLE_PATIENCE_S):
            self.settle_timeouts += 1
            metrics.PACE_SETTLE_TIMEOUTS.inc()
            log.error("groups due were not applied in time; deciding anyway", due=list(self.due.due)[:5],
                      patience_s=SETTLE_PATIENCE_S)

    def _decided(self, actions: list) -> None:
        self.ledger.opened(actions)
        if self.due is not None:
            from streams.rewards import horizon_end_ns

            a = actions[0]
            self.due.opened(a.group_id, f"{a.exchange}|{a.symbol}", [horizon_end_ns(x) for x in actions])

    def _pass_begins(self, k: int) -> None:
        self.curve = None
        log.info("replay pass begins", lap=k)

    async def _end_of_replay(self, lines: int) -> None:
        """The finite replay is over: a watermark per symbol past every horizon closes the last
        groups in event time; once they are applied the run is drained and the curve written."""
        s = self.s
        assert self.due is not None
        past = round((s.actor.horizon_s + s.groups.grace_s + 1.0) * 1e9)
        for sk, ts in sorted(self.due.watermarks().items()):
            exchange, symbol = sk.split("|", 1)
            wm = MarketWatermark(exchange=exchange, symbol=symbol, reason="end of replay", ts_event=ts + past,
                                 key=symbol, source="daemon")
            await self._send("market.events", wm, key=symbol)
        await self.producer.flush()
        self.due.end()
        log.info("replay input over", lines=lines, open_groups=self.due.open_count, due=len(self.due.due))
        asyncio.get_running_loop().create_task(self._when_drained(), name="drain")

    async def _when_drained(self) -> None:
        assert self.due is not None
        await self.due.wait_settled()
        async with self.learner.lock:
            await asyncio.to_thread(self.learner.refresh_side_probe)
        self.ledger.probed(self.learner.side_probe)
        path = await asyncio.to_thread(self.ledger.write_curve, curve_path(self.s.data_dir))
        self.curve = str(path) if path else None
        self.drained_passes += 1
        log.info("replay drained", groups=self.learner.groups_applied, policy_version=self.policy.policy_version,
                 curve=self.curve)

    def replay_status(self) -> dict[str, Any] | None:
        if self.pace is None or self.due is None:
            return None
        return {"paced": True, "pass": self.pace.passes - 1, "frames": self.pace.frames(),
                "link_up": self.pace.connected,
                "ended": self.pace.ended, "open_groups": self.due.open_count, "due_groups": len(self.due.due),
                "held_groups": len(self.learner.held), "settle_timeouts": self.settle_timeouts,
                "drained": self.pace.ended and self.due.settled() and self.curve is not None,
                "drained_passes": self.drained_passes}

    async def on_dead_letter(self, dl: DeadLetter) -> None:
        await self._send("deadletter", dl)
        self.dead_letters += 1
        metrics.DEAD_LETTERS.labels(dl.source or "source").inc()

    def health(self) -> dict[str, Any]:
        """Liveness: the loop turns, the learner and the actor run, the model is loaded. The
        parts are checked only once started (the probe may come while ``start`` still works)."""
        tasks = ({"learner": task_alive(self.learner.task), "actor": task_alive(self.actor.task)}
                 if self.started else {})
        body = liveness(self.heartbeat, tasks, model_loaded(self.policy.state.model), self.s.http.liveness_stall_s)
        return {**body, "policy_version": self.policy.policy_version,
                "uptime_s": round(time.time() - self.started_at, 1)}

    async def readiness(self) -> dict[str, Any]:
        bootstrap = self.producer.raw.client.hosts[0] if self.producer.raw.client.hosts else None
        broker = bool(bootstrap) and await asyncio.to_thread(broker_answers, f"{bootstrap[0]}:{bootstrap[1]}", 1.0)
        learner = self.learner.ready.is_set() and task_alive(self.learner.task)
        model = model_loaded(self.policy.state.model)
        return {"ok": broker and learner and model, "broker": broker, "learner": learner, "model_loaded": model}

    async def pin(self, snapshot: str, blocks: list[int], reason: str) -> dict[str, Any]:
        """Restore ``blocks`` from ``snapshot`` in the running model (per-block rollback), record it
        as a GuardAction, and snapshot at once so replays start after the intervention.

        Only snapshots under this daemon's snapshot root are accepted (the path arrives over
        HTTP), and a snapshot that fails to load leaves the model as it was (``pin_blocks``)."""
        from learners.snapshot import pin_blocks
        from schemas import GuardAction

        n_blocks = self.policy.with_state(lambda st: len(st.model.blocks))
        bad = [b for b in blocks if not 0 <= b < n_blocks]  # type: ignore[operator]
        if bad or not blocks:
            raise ValueError(f"blocks {blocks}: the model has blocks 0..{n_blocks - 1}")  # type: ignore[operator]
        async with self.learner.lock:  # not in the middle of applying a poll's groups
            root = snapshots.snapshot_root(self.s.data_dir)
            state = await asyncio.to_thread(self.policy.with_state,
                                            lambda st: pin_blocks(st, snapshot, blocks, root=root))
            self.policy.replace_state(state)  # type: ignore[arg-type]
            await asyncio.to_thread(self.learner.refresh_checksums)
            event = GuardAction(action="pin_blocks", reason=reason, policy_version=self.policy.policy_version,
                                blocks=blocks, key=str(self.policy.policy_version), source="operator")
            await self.producer.send_and_wait("learn.guard", event)
            path = await self.learner.snapshot_locked()
        log.warning("blocks pinned", blocks=blocks, source_snapshot=snapshot, new_snapshot=str(path))
        return {"blocks": blocks, "policy_version": self.policy.policy_version, "snapshot": str(path)}

    async def _snapshot_now(self) -> str:
        return str(await self.learner.snapshot())

    def status(self, with_summary: bool = True) -> dict[str, Any]:
        lat = sorted(self.learner.latencies)
        p = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 3) if lat else None)
        return {"events": self.events_in, "decisions": self.actor.decisions, "groups": self.learner.groups_applied,
                "updates": self.learner.updates_applied, "policy_version": self.policy.policy_version,
                "reward_ewma": None if self.learner.reward.value is None else round(self.learner.reward.value, 4),
                "group_to_weights_p50_s": p(0.5), "group_to_weights_p99_s": p(0.99),
                "dead_letters": self.dead_letters, "checksum": self.learner.checksum()[:12],
                "learn_offset": self.learner.next_offset, "learn_lag": self.learner.lag(),
                "market_span_s": round((self.market_last_ns - self.market_first_ns) / 1e9, 1),
                "side_probe": self.learner.side_probe,
                "skipped": self.actor.skipped,
                "valid_share": (round(self.actor.valid_actions / self.actor.actions_sampled, 4)
                                if self.actor.actions_sampled else None),
                "replay": self.replay_status(), "curve": self.curve,
                **({"summary": self.ledger.summary()} if with_summary else {}),
                # events=0 alone does not say why: no input yet, or no stream connected at all
                "sources": up_down(self.sources)}

    async def _status_loop(self) -> None:
        bind_task(task="status")
        while True:
            await asyncio.sleep(10)
            log.info("status", **self.status(with_summary=False))  # the summary is /status's, not the log's
