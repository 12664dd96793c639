"""The keyed operator of the PyFlink job: ``SymbolEngine`` over Flink keyed state, Flink timers.

The Faust worker and this operator run the *same* ``streams.engine.SymbolEngine``, so outcomes
and groups come from the same pure functions (``rewards.score_action``/``to_outcome``,
``grouping.close_group``) by the same rules. Only the plumbing differs:

- **State.** The engine's mappings (book buckets, index, market partitions, pending
  candidates, scored outcomes, agenda, closed groups) are Flink ``MapState`` of the current key
  (the symbol), through ``StateMap``. Their values are the records of ``streams.state``, held in
  their JSON forms (``StoredRecords``; the engine does it for pending and closed itself), so a
  checkpoint holds plain data that outlives the classes, and the forms of checkpoints taken
  before the records existed still read. Flink checkpoints them together with the Kafka offsets,
  so a restart from a checkpoint resumes exactly where the outputs of that checkpoint were
  committed.
- **Event time.** An event-time timer is set at each symbol's earliest group window end; the
  job's watermark (from the Kafka sources, bounded out-of-orderness, idle partitions ignored)
  fires it, and it ticks the engine with that watermark, which closes the windows that are over.
- **Idle streams.** A processing-time timer every ``idle_tick_s`` while the symbol has pending
  work does what the Faust worker's wall-clock timer does: when no event comes at all, the
  watermark does not move, yet windows must close. The engine's idle estimate (last event time
  plus the wall time since it was ingested, ``Clock.idle_now``) is used only once the job has
  read everything of the symbol's market partition (``streams.flink_lag.LagProbe``, the same
  condition as the Faust worker's); while there is a backlog, event time advances by events and
  the watermark only, so a replay's results do not depend on how fast this machine is.

Rows in: ``(kind, sym, v, topic, partition, offset, ...)``; kind ``m`` = market.events record,
``a`` = agent.actions record. Rows out: ``(k, v)`` bytes, on the main output (agent.outcomes)
or the side outputs ``GROUPS`` and ``DEADLETTER``.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Iterator, MutableMapping

from pyflink.common import Row, Types
from pyflink.datastream import KeyedProcessFunction, OutputTag, RuntimeContext
from pyflink.datastream.functions import TimerService
from pyflink.datastream.state import MapState, MapStateDescriptor

from schemas.settings import GroupConfig, RewardConfig
from streams.engine import Emit, SymbolEngine, idle_tick
from streams.flink_lag import LagProbe
from streams.state import AGENDA, BOOK, INDEX, SCORED, StoredRecords

OUT_TYPE = Types.ROW_NAMED(["k", "v"], [Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.PRIMITIVE_ARRAY(Types.BYTE())])
GROUPS = OutputTag("learn.groups", OUT_TYPE)
DEADLETTER = OutputTag("deadletter", OUT_TYPE)
STATES = ("book", "index", "tp_store", "pending", "scored", "agenda", "closed")
# states whose values go through their JSON form here (pending and closed: in the engine)
STORED_FORMS = {"book": BOOK, "index": INDEX, "scored": SCORED, "agenda": AGENDA}
_MS = 1_000_000


class StateMap(MutableMapping):
    """A ``MutableMapping`` view of one ``MapState`` (of whatever key is current).

    The engine reads a value, builds a new one and writes it back (it never mutates in place),
    which is what ``MapState`` needs: values are pickled on ``put``.
    """

    def __init__(self, state: MapState):
        self._s = state

    def __getitem__(self, key: Any) -> Any:
        value = self._s.get(key)
        if value is None and not self._s.contains(key):
            raise KeyError(key)
        return value

    def get(self, key: Any, default: Any = None) -> Any:
        value = self._s.get(key)  # one round trip instead of contains() + get()
        return default if value is None else value

    def __setitem__(self, key: Any, value: Any) -> None:
        self._s.put(key, value)

    def __delitem__(self, key: Any) -> None:
        self._s.remove(key)

    def __contains__(self, key: object) -> bool:
        return self._s.contains(key)

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._s.keys()))

    def __len__(self) -> int:
        return sum(1 for _ in self._s.keys())

    def items(self):  # type: ignore[override]
        return list(self._s.items())


class SymbolProcess(KeyedProcessFunction):
    """Market events and candidates of one symbol -> outcomes, groups, dead letters."""

    def __init__(self, reward: dict, groups: dict, *, bucket_s: float, market_window_s: float,
                 idle_tick_s: float, lag_config: dict | None = None, source: str = "streams",
                 idle_close: bool = True):
        # ``source`` as the Faust worker's: the same logical event whichever engine produced it,
        # so records are identical field for field (ts_ingest aside) and switching is seamless
        # plain dicts: the function is pickled to the Python workers, settings are rebuilt there
        self.reward, self.groups = reward, groups
        self.bucket_s, self.market_window_s, self.idle_tick_s = bucket_s, market_window_s, idle_tick_s
        self.idle_close = idle_close
        self.source = source
        self.lag_config = lag_config  # librdkafka settings of the lag probe; None: never idle
        self.engine: SymbolEngine | None = None

    def open(self, ctx: RuntimeContext) -> None:
        pickled = Types.PICKLED_BYTE_ARRAY()
        maps = {name: StateMap(ctx.get_map_state(MapStateDescriptor(name, pickled, pickled))) for name in STATES}
        maps.update({name: StoredRecords(maps[name], form) for name, form in STORED_FORMS.items()})
        self.engine = SymbolEngine(RewardConfig(**self.reward), GroupConfig(**self.groups),
                                   bucket_s=self.bucket_s, market_window_s=self.market_window_s,
                                   idle_after_s=self.idle_tick_s, idle_close=self.idle_close, source=self.source,
                                   **maps)
        # derived, in-memory only (rebuilt from the next events after a restart, like the Clock)
        self._event_timer: dict[str, int] = {}  # sk -> event-time timer set (ms)
        self._idle_timer: dict[str, int] = {}  # key -> processing-time timer set (ms)
        self._processed: dict[tuple[str, int], int] = {}  # market (topic, partition) -> highest offset seen
        self._probe = LagProbe(self.lag_config, ttl_s=self.idle_tick_s) if self.lag_config else None
        self._seeded: set[str] = set()  # keys whose event-time clock was seeded since open()
        self.idle_tick_ms = max(1, round(self.idle_tick_s * 1000))

    # ---- inputs ---------------------------------------------------------------------------
    def process_element(self, row: Row, ctx: KeyedProcessFunction.Context) -> Iterable:
        engine = self.engine
        wall = time.time_ns()
        where = {"topic": row[3], "partition": row[4], "offset": row[5]}
        raw = bytes(row[2]) if row[2] is not None else None
        self._seed_clock(ctx.get_current_key(), wall)
        try:
            if row[0] == "m":
                emits = engine.on_market(raw, wall_ns=wall, **where)
                tp = (row[3], row[4])
                self._processed[tp] = max(row[5], self._processed.get(tp, -1))
            else:
                emits = engine.route_action(raw, **where)
                if emits and emits[0].topic == "internal":  # a valid action: already on its symbol's key
                    emits = engine.on_internal(raw, wall_ns=wall, **where)
        except Exception as e:  # noqa: BLE001 - one bad record must not stop the job (as in Faust)
            emits = [engine.dead_letter(raw, reason=f"processing failed: {e!r}", kind=type(e).__name__, **where)]
        yield from self._emit(emits)
        if emits or row[0] != "m":
            # a market record that emitted nothing resolved nothing, so the agenda is as it was:
            # skip the timers (reading the agenda is a state round trip to the JVM per record)
            self._schedule(ctx.timer_service(), ctx.get_current_key(), wall)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterable:
        engine = self.engine
        key = ctx.get_current_key()
        wall = time.time_ns()
        timers = ctx.timer_service()
        self._seed_clock(key, wall)
        emits: list[Emit] = []
        if self._idle_timer.get(key) == timestamp:
            del self._idle_timer[key]
        # Event time for this symbol: the engine's own clock (its market data's watermark, inside
        # on_internal) and, only once its market partition is read to the end and the symbol has
        # gone silent, the engine's idle estimate: the same two the Faust worker ticks with. Not
        # the job's watermark: it spans all inputs, and when the market partition is briefly
        # marked idle (a slow source) the candidates, which run ahead in catch-up, carry it past
        # quotes not yet read, and outcomes were scored on a book missing them (the parity test
        # caught it under load). The job's watermark only decides when this timer fires. The
        # engine decides what is due and what has expired (window over *and* grace_s of wall
        # time since the last candidate), so ticking every pending symbol on each timer is safe.
        for sk, _entry in engine.agenda.items():
            tp = engine.market_tp(sk)  # from keyed state after a restore, as idle_due
            idle = engine.clock.idle_now(sk, wall, caught_up=True) if tp and self._caught_up(tp) else None
            emits += engine.on_tick(idle_tick(sk, idle or 0), wall_ns=wall)
        yield from self._emit(emits)
        self._schedule(timers, key, wall)

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()

    # ---- helpers ----------------------------------------------------------------------------
    def _caught_up(self, tp: tuple[str, int]) -> bool:
        return self._probe is not None and self._probe.caught_up(tuple(tp), self._processed.get(tuple(tp))) is True

    def _seed_clock(self, key: str, wall: int) -> None:
        """After a (re)start, start each symbol's event time at its last stored quote, before the
        first record or timer of the key. A candidate arriving first seeds the same way inside the
        engine; a timer does not go through the engine's seeding (the Faust worker's ``idle_due``
        does it there), so without this a silent restored symbol would never tick.
        """
        if key in self._seeded:
            return
        self._seeded.add(key)
        for sk in list(self.engine.index):
            self.engine.clock.seed(sk, self.engine.last_quote_ts(sk), wall)

    def _schedule(self, timers: TimerService, key: str, wall: int) -> None:
        """An event-time timer at each window end; a processing-time tick while work is pending."""
        pending = False
        for sk, entry in self.engine.agenda.items():
            pending = True
            at = entry.expiry_ns // _MS + 1  # fires once the watermark is past the window end
            if self._event_timer.get(sk) != at:
                self._event_timer[sk] = at
                timers.register_event_time_timer(at)
        if pending and key not in self._idle_timer:
            at = wall // _MS + self.idle_tick_ms
            self._idle_timer[key] = at
            timers.register_processing_time_timer(at)

    def _emit(self, emits: list[Emit]) -> Iterator:
        for e in emits:
            row = Row(e.key.encode(), e.value)
            if e.topic == "agent.outcomes":
                yield row
            elif e.topic == "learn.groups":
                yield GROUPS, row
            elif e.topic == "deadletter":
                yield DEADLETTER, row
            else:  # the engine emits nothing else to us; failing loudly beats a silent drop
                raise ValueError(f"unexpected output topic {e.topic!r}")
