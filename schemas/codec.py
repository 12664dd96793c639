"""JSON (de)serialisation with schema versions.

Writers always write the newest version of a record. Readers accept the current and the
previous version: an *upgrader* turns a previous-version dict into the current shape before
validation. Errors are ``DecodeError``s whose message names the offending field, so dead
letters carry a reason a person can act on.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Mapping

from pydantic import ValidationError

from schemas.agent import Action, Outcome, Prompt
from schemas.base import Event
from schemas.deadletter import DeadLetter
from schemas.learn import BATCH_ID_SEP, BlockUpdate, GRPOGroup, GuardAction, SnapshotMarker
from schemas.market import BookTicker, DepthUpdate, MarketTrade, MarketWatermark, StreamGap
from schemas.social import SocialEngagement, SocialPost

RECORD_TYPES: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (
        MarketTrade, BookTicker, DepthUpdate, StreamGap, MarketWatermark, SocialPost, SocialEngagement, Prompt,
        Action, Outcome, GRPOGroup, BlockUpdate, SnapshotMarker, GuardAction, DeadLetter,
    )
}

Upgrader = Callable[[dict[str, Any]], dict[str, Any]]


def _market_trade_v1_to_v2(d: dict[str, Any]) -> dict[str, Any]:
    d = dict(d)
    d["qty"] = d.pop("amount")
    d.setdefault("exchange", d.get("source", ""))
    return d


def _block_update_v1_to_v2(d: dict[str, Any]) -> dict[str, Any]:
    # v1 named a coalesced batch only by its joined id; v2 lists the members
    d = dict(d)
    d["group_ids"] = str(d["group_id"]).split(BATCH_ID_SEP)
    return d


# (type, version it reads) -> function producing the next version's dict
UPGRADERS: dict[tuple[str, int], Upgrader] = {
    (MarketTrade.TYPE, 1): _market_trade_v1_to_v2,
    (BlockUpdate.TYPE, 1): _block_update_v1_to_v2,
}


class DecodeError(ValueError):
    """A record could not be decoded. ``reason`` is one line naming the field at fault."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def encode(event: Event) -> bytes:
    return event.model_dump_json().encode("utf-8")


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        loc = ".".join(str(x) for x in e["loc"]) or "<record>"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


# What a parser or validator raises on hostile input besides its own errors: nesting deeper
# than the interpreter's stack (RecursionError), an integer past Python's 4,300-digit limit
# (ValueError), a lone surrogate (UnicodeError), a float conversion that overflows. Escaping
# ``decode``, any of them crash-loops every consumer of the record instead of dead-lettering it.
_PARSE_FAILURES = (RecursionError, ValueError, TypeError, OverflowError, UnicodeError)


def _parse_failure(err: BaseException) -> DecodeError:
    if isinstance(err, RecursionError):
        return DecodeError("value: nested too deeply to parse")
    detail = str(err).splitlines()[0] if str(err) else ""
    return DecodeError(f"value: cannot parse ({type(err).__name__}: {detail[:200]})")


def decode_dict(d: Any, raw: bytes | str | None = None, *,
                types: Mapping[str, type[Event]] = RECORD_TYPES) -> Event:
    """A parsed JSON object to a typed record (upgrading a previous version), or ``DecodeError``.
    ``types``: the record types the reader accepts, by ``TYPE``."""
    try:
        return _decode_dict(d, raw, types)
    except DecodeError:
        raise
    except _PARSE_FAILURES as e:
        raise _parse_failure(e) from e


def _decode_dict(d: Any, raw: bytes | str | None, types: Mapping[str, type[Event]]) -> Event:
    if not isinstance(d, dict):
        raise DecodeError(f"record: expected a JSON object, got {type(d).__name__}")
    rtype = d.get("type")
    cls = types.get(rtype) if isinstance(rtype, str) else None
    if cls is None:
        raise DecodeError(f"type: unknown record type {rtype!r}")
    version = d.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise DecodeError(f"schema_version: expected an integer, got {version!r}")
    if version > cls.VERSION:
        raise DecodeError(f"schema_version: {rtype} v{version} is newer than this reader (v{cls.VERSION})")
    original_version = version
    while version < cls.VERSION:
        upgrade = UPGRADERS.get((rtype, version))
        if upgrade is None:
            raise DecodeError(f"schema_version: {rtype} v{version} is too old (this reader accepts v{cls.VERSION - 1}+)")
        try:
            d = upgrade(d)
        except (KeyError, TypeError, ValueError) as e:
            raise DecodeError(f"schema_version: cannot upgrade {rtype} v{version}: missing {e}") from e
        version += 1
        d["schema_version"] = version
    try:
        # JSON-mode validation: strict about types, yet a JSON array may fill a tuple field
        if raw is not None and version == original_version:
            return cls.model_validate_json(raw)
        return cls.model_validate_json(json.dumps(d))
    except ValidationError as e:
        raise DecodeError(f"{rtype}: {_describe(e)}") from e


# Our encoder writes the envelope first, so "type" and "schema_version" sit near the start of
# every record it produced: reading them with a regex lets current-version records go straight
# to pydantic's JSON validator, parsed once. Anything else takes the general path.
_HEAD = re.compile(rb'^\{"event_id":"[^"]*","type":"([a-z_.]+)","schema_version":(\d{1,9}),')


def decode(raw: bytes | str | None, *, types: Mapping[str, type[Event]] = RECORD_TYPES) -> Event:
    """Bytes from Kafka to a typed record, or ``DecodeError`` with the reason; never another error.
    ``types``: the record types the reader accepts, by ``TYPE`` (default: the catalogue's)."""
    try:
        return _decode(raw, types)
    except DecodeError:
        raise
    except _PARSE_FAILURES as e:
        raise _parse_failure(e) from e


def _decode(raw: bytes | str | None, types: Mapping[str, type[Event]]) -> Event:
    if raw is None:
        raise DecodeError("value: record has no value (tombstone)")
    if isinstance(raw, bytes):
        m = _HEAD.match(raw)
        if m is not None:
            cls = types.get(m.group(1).decode())
            if cls is not None and int(m.group(2)) == cls.VERSION:
                try:
                    return cls.model_validate_json(raw)
                except ValidationError as e:
                    raise DecodeError(f"{cls.TYPE}: {_describe(e)}") from e
    if not isinstance(raw, (bytes, bytearray, str)):
        raise DecodeError(f"value: expected bytes or str, got {type(raw).__name__}")
    try:
        d = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DecodeError(f"value: not valid JSON ({e})") from e
    return decode_dict(d, raw, types=types)


def decode_as(raw: bytes | str | None, cls: type[Event]) -> Event:
    ev = decode(raw)
    if not isinstance(ev, cls):
        raise DecodeError(f"type: expected {cls.TYPE}, got {ev.type}")
    return ev
