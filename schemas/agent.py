"""What the agent saw, what it did and what came of it. Keyed by group_id."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.base import Event


class MarketActionSpec(BaseModel):
    """A parsed market action: go ``side`` with ``size`` of the allowed notional for ``horizon_s``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    kind: Literal["market"] = "market"
    side: Literal["long", "short", "flat"]
    size: float = Field(ge=0, le=1)
    horizon_s: float = Field(gt=0)
    stop_bps: float | None = Field(default=None, gt=0)


class SocialActionSpec(BaseModel):
    """A parsed social action: which of the K observed posts will get the most engagement."""

    model_config = ConfigDict(extra="forbid", strict=True)

    kind: Literal["social"] = "social"
    pick: int = Field(ge=0)
    horizon_s: float = Field(gt=0)


class Prompt(Event):
    """The context the policy saw: one prompt per group."""

    TYPE = "agent.prompt"

    prompt_id: str
    task: Literal["market", "social"] = "market"
    symbol: str
    text: str
    features: dict[str, float] = {}
    policy_version: int = Field(ge=0)


class Action(Event):
    """One candidate of a group. ``parsed`` is None exactly when ``invalid_reason`` is set."""

    TYPE = "agent.action"

    group_id: str
    candidate_index: int = Field(ge=0)
    group_size: int = Field(ge=1)
    policy_version: int = Field(ge=0)
    seed: int
    prompt_id: str
    task: Literal["market", "social"] = "market"
    symbol: str
    exchange: str = ""
    prompt: str
    completion: str
    parsed: MarketActionSpec | SocialActionSpec | None = Field(default=None, discriminator="kind")
    invalid_reason: str | None = None
    executed: bool = False
    # the social task's candidate posts (URIs), in the order the prompt listed them
    choices: list[str] = []


class RewardComponents(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    pnl_bps: float = 0.0
    fees_bps: float = 0.0
    slippage_bps: float = 0.0
    realised_vol_bps: float = 0.0
    drawdown_bps: float = 0.0
    risk_adjusted: float = 0.0
    engagement: float = 0.0


class Outcome(Event):
    """The reward of one candidate, computed from what the world did over its horizon."""

    TYPE = "agent.outcome"

    group_id: str
    candidate_index: int = Field(ge=0)
    group_size: int = Field(ge=1)
    action_event_id: str
    symbol: str
    policy_version: int = Field(ge=0)
    reward: float
    components: RewardComponents = RewardComponents()
    valid: bool = True
    reason: str | None = None
    entry_price: float | None = None
    exit_price: float | None = None
    exit_reason: Literal["horizon", "stop", "invalid", "no_data", "flat", "social"] = "horizon"
    horizon_end_ns: int = 0
