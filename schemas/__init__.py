"""Event records, their JSON codec with schema versions, and the topic catalogue.

Imports nothing of eigenloop's own: every other package builds on this one.
"""

from schemas.agent import Action, MarketActionSpec, Outcome, Prompt, RewardComponents, SocialActionSpec
from schemas.base import Event, now_ns
from schemas.codec import RECORD_TYPES, DecodeError, decode, decode_as, decode_dict, encode
from schemas.deadletter import DeadLetter
from schemas.ids import deterministic_event_id, event_id_ms, new_event_id
from schemas.learn import BlockUpdate, GRPOGroup, GuardAction, SnapshotMarker
from schemas.market import BookTicker, DepthUpdate, MarketTrade, MarketWatermark, StreamGap
from schemas.social import SocialEngagement, SocialPost

__all__ = [
    "Action", "BlockUpdate", "BookTicker", "DeadLetter", "DecodeError", "DepthUpdate", "Event",
    "GRPOGroup", "GuardAction", "MarketActionSpec", "MarketTrade", "MarketWatermark", "Outcome", "Prompt",
    "RECORD_TYPES", "RewardComponents", "SnapshotMarker", "SocialActionSpec", "SocialEngagement",
    "SocialPost", "StreamGap", "decode", "decode_as", "decode_dict", "deterministic_event_id",
    "encode", "event_id_ms", "new_event_id", "now_ns",
]
