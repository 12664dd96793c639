"""A write-behind view of a Faust table for one batch of records.

A Faust table sends one changelog record per assignment. The engine updates the same few keys
(the current market bucket, the agenda, a pending group) on nearly every record, so writing
through costs a changelog record per input record. Inside a batch the engine works on this view
instead; ``flush`` writes each changed key once, before the batch's input offsets are acked, so a
worker killed mid-batch replays the batch from the last commit and loses nothing.

A changelog record goes to the partition of the input record that caused the change (that is how
Faust keys table partitions to input partitions), so each change remembers its record.
"""

from __future__ import annotations

import weakref
from typing import Any, Iterator, MutableMapping

from faust.streams import _current_event

_DELETED = object()


class WriteBehind(MutableMapping):
    def __init__(self, table: MutableMapping):
        self.table = table
        self._cache: dict[Any, Any] = {}
        self._cause: dict[Any, Any] = {}  # key -> the event whose processing changed it last
        self.event: Any = None  # the record being processed now

    def __getitem__(self, key: Any) -> Any:
        if key in self._cache:
            value = self._cache[key]
            if value is _DELETED:
                raise KeyError(key)
            return value
        return self.table[key]

    def __contains__(self, key: object) -> bool:
        if key in self._cache:
            return self._cache[key] is not _DELETED
        return key in self.table

    def __setitem__(self, key: Any, value: Any) -> None:
        self._cache[key] = value
        self._cause[key] = self.event

    def __delitem__(self, key: Any) -> None:
        if key not in self:
            raise KeyError(key)
        self._cache[key] = _DELETED
        self._cause[key] = self.event

    def __iter__(self) -> Iterator[Any]:
        for key in self.table:
            if key not in self._cache:
                yield key
        for key, value in self._cache.items():
            if value is not _DELETED:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    @property
    def pending(self) -> int:
        return len(self._cache)

    def flush(self) -> int:
        """Write every changed key to the table (one changelog record each); returns how many."""
        n = 0
        for key, value in self._cache.items():
            event = self._cause[key]
            token = _current_event.set(weakref.ref(event) if event is not None else None)
            try:
                if value is _DELETED:
                    if key in self.table:
                        del self.table[key]
                else:
                    self.table[key] = value
            finally:
                _current_event.reset(token)
            n += 1
        self._cache.clear()
        self._cause.clear()
        return n
