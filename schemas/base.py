"""The event envelope shared by every record.

Every record is one flat JSON object: the envelope fields below plus the record's own payload
fields. Keeping it flat lets generic consumers (dead-lettering, the analytics sink) read the
envelope without knowing the payload, and lets typed code write ``action.group_id``.
"""

from __future__ import annotations

import time
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from schemas.ids import new_event_id


def now_ns() -> int:
    return time.time_ns()


class Event(BaseModel):
    """Envelope. Subclasses set ``TYPE`` and ``VERSION`` and add payload fields.

    - ``event_id``: time-ordered unique id (UUIDv7), producer-assigned, used for dedupe.
    - ``ts_event``: world time in ns since the Unix epoch (exchange time for market data).
    - ``ts_ingest``: when our process first saw it, ns since the Unix epoch.
    - ``key``: the Kafka key; it decides the partition (see ``schemas.topics``).
    """

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=False)

    TYPE: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1

    event_id: str = Field(default_factory=new_event_id, min_length=1)
    type: str = ""
    schema_version: int = 0
    ts_event: int = Field(default_factory=now_ns, ge=0)
    ts_ingest: int = Field(default_factory=now_ns, ge=0)
    source: str = ""
    key: str = ""

    def model_post_init(self, __context: object) -> None:
        # type and version always describe the class that holds the data, whatever was passed
        object.__setattr__(self, "type", self.TYPE)
        object.__setattr__(self, "schema_version", self.VERSION)

    @property
    def ts_event_s(self) -> float:
        return self.ts_event / 1e9
