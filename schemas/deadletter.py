"""Dead letters: input we could not use, kept with the reason instead of being dropped."""

from __future__ import annotations

import base64
from typing import Literal

from schemas.base import Event


class DeadLetter(Event):
    """``raw`` holds the original input: as text when it was valid UTF-8, else base64
    (``raw_encoding`` says which), so the original bytes are always recoverable."""

    TYPE = "deadletter"

    source_topic: str
    partition: int = -1
    offset: int = -1
    raw: str
    raw_encoding: Literal["utf-8", "base64"] = "utf-8"
    reason: str
    error_type: str = ""

    @classmethod
    def from_input(cls, raw: bytes | str | None, *, source_topic: str, reason: str,
                   error_type: str = "", **envelope: object) -> "DeadLetter":
        if raw is None:
            text, encoding = "", "utf-8"
        elif isinstance(raw, str):
            text, encoding = raw, "utf-8"
        else:
            try:
                text, encoding = raw.decode("utf-8"), "utf-8"
            except UnicodeDecodeError:
                text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
        return cls(source_topic=source_topic, raw=text, raw_encoding=encoding, reason=reason,
                   error_type=error_type, **envelope)

    def raw_bytes(self) -> bytes:
        if self.raw_encoding == "base64":
            return base64.b64decode(self.raw)
        return self.raw.encode("utf-8")
