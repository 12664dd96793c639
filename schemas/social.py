"""Social records normalised from Bluesky Jetstream. Keyed by post URI (posts) or subject URI."""

from __future__ import annotations

from typing import Literal

from schemas.base import Event


class SocialPost(Event):
    TYPE = "social.post"

    did: str
    uri: str
    text: str
    langs: list[str] = []
    time_us: int


class SocialEngagement(Event):
    """A like or a repost of ``subject_uri``."""

    TYPE = "social.engagement"

    did: str
    kind: Literal["like", "repost"]
    subject_uri: str
    time_us: int
