"""The state of ``streams.engine.SymbolEngine`` as records, and the stored form of each.

Plain Python (no Faust, no Flink): the Faust worker keeps these in tables and in-memory dicts, the
PyFlink job in keyed state, the tests in dicts. Per ``exchange|symbol`` (``sk``) and per group:

- ``Quote``: one top-of-book quote of the book, in a bucket of event time;
- ``BucketSpan``: the first and last bucket the book holds for a symbol (the *symbol index*);
- ``PendingGroup`` of ``PendingCandidate``: the candidates of a group that arrived, until it closes;
- ``AgendaEntry`` of ``GroupDue``: when each pending group of a symbol next needs the engine;
- ``ClosedGroups``: the window ends of a symbol's recently closed groups;
- ``LastEvent``: the clock's reference for the idle estimate of a symbol.

The per-event values (``Quote``, ``LastEvent``) are named tuples: one is built for every market
record, and ``rewards.BookPath`` reads quotes as ``(ts, bid, bid_qty, ask, ask_qty)`` ticks. The
others are frozen dataclasses. None is mutated: the engine builds a new one and writes it back,
which is what changelog-backed tables and Flink's ``MapState`` need to see a change.

Stored forms. What a changelog or a checkpoint holds is plain JSON (``to_json`` / ``from_json``),
never a pickled class: a stored form outlives the code that wrote it. Pending groups, closed groups
and the agenda are JSON objects with ``"v": STATE_FORMAT``; quotes, spans and scored outcomes keep
the compact array and object forms they always had. A changelog or checkpoint written before the
records existed holds the objects without ``"v"`` (pending ``{"sk", "t0", "a", "he", "o", "last"}``,
closed ``{group_id: window_end}``, agenda ``{"due", "expiry", "grace", "groups"}``): ``from_json``
reads those too, so a running deployment upgrades in place. A form it cannot read (a newer
worker's, or a damaged record) raises ``StateFormatError`` naming the table and key.
(Input cursors and book marks, ``streams.cursor``, are stored as plain JSON integers.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, Mapping, MutableMapping, NamedTuple, TypeVar

STATE_FORMAT = 2  # the stored form this module writes; 1 is the form without "v"
NEVER = 1 << 62  # a due time that never comes (a group whose candidates are all scored)


class StateFormatError(ValueError):
    """A stored state record this worker cannot read."""


class Quote(NamedTuple):
    """A top-of-book quote whose prices changed. ``offset``: its source offset in the market
    partition (-1: none), so that a record delivered again after a restart is recognised even
    among quotes sharing a timestamp."""

    ts_ns: int
    bid: float
    bid_qty: float
    ask: float
    ask_qty: float
    offset: int = -1


def quotes_to_json(quotes: tuple[Quote, ...]) -> list[list]:
    return [list(q) for q in quotes]


def quotes_from_json(obj: Any) -> tuple[Quote, ...]:
    return tuple(Quote(*q) for q in obj)


@dataclass(frozen=True, slots=True)
class BucketSpan:
    """The buckets of one symbol's book, numbered ``ts_event // bucket_ns``: ``first`` to
    ``last``, both held (older ones have expired)."""

    first: int
    last: int

    def to_json(self) -> list[int]:
        return [self.first, self.last]

    @classmethod
    def from_json(cls, obj: Any) -> BucketSpan:
        first, last = obj
        return cls(int(first), int(last))


class LastEvent(NamedTuple):
    """What the clock keeps of a symbol's latest event for the idle estimate."""

    ts_event: int
    ts_ingest: int
    seen_wall_ns: int  # wall time the symbol was last seen active


@dataclass(frozen=True, slots=True)
class PendingCandidate:
    action_json: str  # the ``agent.action`` record as it arrived
    horizon_end_ns: int  # event time after which its outcome is final


@dataclass(frozen=True, slots=True)
class PendingGroup:
    """The candidates of one group that arrived so far, by candidate index, in arrival order."""

    state_key: str
    t0_ns: int  # the earliest candidate's event time
    candidates: Mapping[int, PendingCandidate]
    last_arrival_wall_ns: int  # wall time the latest candidate arrived
    # outcomes kept with the candidates in changelogs of the earliest stored form; this worker
    # keeps outcomes in memory (``SymbolEngine.scored``) and writes none here
    stored_outcomes: Mapping[int, str] = field(default_factory=dict)

    @classmethod
    def first(cls, state_key: str, index: int, candidate: PendingCandidate, ts_event: int,
              wall_ns: int) -> PendingGroup:
        return cls(state_key, ts_event, {index: candidate}, wall_ns)

    def with_candidate(self, index: int, candidate: PendingCandidate, ts_event: int, wall_ns: int) -> PendingGroup:
        return PendingGroup(self.state_key, min(self.t0_ns, ts_event), {**self.candidates, index: candidate},
                            wall_ns, self.stored_outcomes)

    def horizon_ends(self) -> list[int]:
        return [c.horizon_end_ns for c in self.candidates.values()]

    def to_json(self) -> dict:
        out = {"v": STATE_FORMAT, "state_key": self.state_key, "t0_ns": self.t0_ns,
               "last_arrival_wall_ns": self.last_arrival_wall_ns,
               "candidates": {str(i): {"action": c.action_json, "horizon_end_ns": c.horizon_end_ns}
                              for i, c in self.candidates.items()}}
        if self.stored_outcomes:
            out["stored_outcomes"] = {str(i): o for i, o in self.stored_outcomes.items()}
        return out

    @classmethod
    def from_json(cls, obj: Any) -> PendingGroup:
        if _stored_format(obj) == 1:
            return cls(obj["sk"], int(obj["t0"]),
                       {int(i): PendingCandidate(a, int(obj["he"][i])) for i, a in obj["a"].items()},
                       int(obj.get("last", 0)), {int(i): o for i, o in (obj.get("o") or {}).items()})
        return cls(obj["state_key"], int(obj["t0_ns"]),
                   {int(i): PendingCandidate(c["action"], int(c["horizon_end_ns"]))
                    for i, c in obj["candidates"].items()},
                   int(obj["last_arrival_wall_ns"]),
                   {int(i): o for i, o in (obj.get("stored_outcomes") or {}).items()})


@dataclass(frozen=True, slots=True, order=True)
class GroupDue:
    """When one pending group next needs the engine. Ordered by these fields, in this order."""

    due_ns: int  # the earliest horizon end among its unscored candidates (``NEVER``: none)
    window_end_ns: int  # event time after which it may close ``expired``
    grace_end_wall_ns: int  # ... and wall time before which it may not (last arrival + grace_s)


@dataclass(frozen=True, slots=True)
class AgendaEntry:
    """A symbol's pending groups by due time, with the earliest of each time over them."""

    groups: Mapping[str, GroupDue]
    due_ns: int
    expiry_ns: int
    grace_end_wall_ns: int

    @classmethod
    def of(cls, groups: Mapping[str, GroupDue]) -> AgendaEntry | None:
        """The entry for these groups; None when there are none."""
        if not groups:
            return None
        return cls(groups, min(g.due_ns for g in groups.values()), min(g.window_end_ns for g in groups.values()),
                   min(g.grace_end_wall_ns for g in groups.values()))

    def to_json(self) -> dict:
        return {"v": STATE_FORMAT,
                "groups": {gid: [g.due_ns, g.window_end_ns, g.grace_end_wall_ns] for gid, g in self.groups.items()}}

    @classmethod
    def from_json(cls, obj: Any) -> AgendaEntry:
        _stored_format(obj)  # both forms list the groups as [due, window end, grace end]
        entry = cls.of({gid: GroupDue(int(d), int(e), int(g)) for gid, (d, e, g) in obj["groups"].items()})
        if entry is None:
            raise StateFormatError("an agenda entry lists no group")
        return entry


@dataclass(frozen=True, slots=True)
class ClosedGroups:
    """A symbol's recently closed groups: group id -> window end. Replayed or late candidates of
    these are dropped instead of opening the group again."""

    window_ends: Mapping[str, int] = field(default_factory=dict)

    def __contains__(self, group_id: object) -> bool:
        return group_id in self.window_ends

    def with_closed(self, group_id: str, window_end_ns: int, retention_ns: int) -> ClosedGroups:
        """Add one, dropping those whose window ended more than ``retention_ns`` before it."""
        kept = {g: end for g, end in self.window_ends.items() if end >= window_end_ns - retention_ns}
        kept[group_id] = window_end_ns
        return ClosedGroups(kept)

    # Read on every candidate that arrives, and ten minutes of groups long: neither direction
    # copies the mapping (no record ever changes it, ``with_closed`` builds a new one).
    def to_json(self) -> dict:
        return {"v": STATE_FORMAT, "window_ends": self.window_ends}

    @classmethod
    def from_json(cls, obj: Any) -> ClosedGroups:
        if isinstance(obj, dict) and "v" not in obj:
            return cls(obj)  # the first form: the mapping itself
        _stored_format(obj)
        ends = obj["window_ends"]
        if not isinstance(ends, dict):
            raise StateFormatError(f"window_ends: expected a JSON object, got {type(ends).__name__}")
        return cls(ends)


def outcomes_to_json(outcomes: Mapping[int, str]) -> dict[str, str]:
    """Scored outcomes of an open group (candidate index -> ``agent.outcome`` JSON)."""
    return {str(i): o for i, o in outcomes.items()}


def outcomes_from_json(obj: Any) -> dict[int, str]:
    return {int(i): o for i, o in obj.items()}


def _stored_format(obj: Any) -> int:
    """The stored form's version: 1 (no ``"v"``) or ``STATE_FORMAT``; anything else raises."""
    if not isinstance(obj, dict):
        raise StateFormatError(f"expected a JSON object, got {type(obj).__name__}")
    version = obj.get("v", 1)
    if version not in (1, STATE_FORMAT):
        raise StateFormatError(f"stored form v{version!r} is not one this worker reads (v1, v{STATE_FORMAT}): "
                               "written by a newer worker?")
    return version


R = TypeVar("R")


@dataclass(frozen=True)
class StoredForm(Generic[R]):
    """How one kind of state value is stored: its name (the table's, in errors) and its JSON form."""

    name: str
    to_json: Callable[[R], Any]
    from_json: Callable[[Any], R]


PENDING = StoredForm("pending-candidates", PendingGroup.to_json, PendingGroup.from_json)
CLOSED = StoredForm("closed-groups", ClosedGroups.to_json, ClosedGroups.from_json)
BOOK = StoredForm("book", quotes_to_json, quotes_from_json)
INDEX = StoredForm("index", BucketSpan.to_json, BucketSpan.from_json)
AGENDA = StoredForm("agenda", AgendaEntry.to_json, AgendaEntry.from_json)
SCORED = StoredForm("scored", outcomes_to_json, outcomes_from_json)


class StoredRecords(MutableMapping, Generic[R]):
    """Records over a mapping that holds their stored forms (a Faust table, Flink keyed state, a
    dict): a record is turned into its form on write and read back on every read."""

    def __init__(self, store: MutableMapping, form: StoredForm[R]):
        self.store, self.form = store, form

    @classmethod
    def over(cls, store: MutableMapping, form: StoredForm[R]) -> StoredRecords[R]:
        """A view of ``store``; the view itself when ``store`` already is one of this form."""
        if isinstance(store, StoredRecords) and store.form is form:
            return store
        return cls(store, form)

    def _load(self, key: Any, obj: Any) -> R:
        try:
            return self.form.from_json(obj)
        except StateFormatError as e:
            raise StateFormatError(f"{self.form.name}[{key!r}]: {e}") from e
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise StateFormatError(f"{self.form.name}[{key!r}]: unreadable stored form ({e!r})") from e

    def __getitem__(self, key: Any) -> R:
        return self._load(key, self.store[key])

    def get(self, key: Any, default: Any = None) -> Any:
        obj = self.store.get(key)  # one lookup: Flink keyed state is a round trip per call
        return default if obj is None else self._load(key, obj)

    def __setitem__(self, key: Any, value: R) -> None:
        self.store[key] = self.form.to_json(value)

    def __delitem__(self, key: Any) -> None:
        del self.store[key]

    def __contains__(self, key: object) -> bool:
        return key in self.store

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self.store))

    def __len__(self) -> int:
        return len(self.store)

    def items(self):  # type: ignore[override]
        return [(k, self._load(k, v)) for k, v in list(self.store.items())]
