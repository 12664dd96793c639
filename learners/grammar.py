"""The prompt language, the action languages and their parser: the one place that defines them.

Bytes are tokens, so everything is terse.

Market prompt::   M BTCUSDT r1=+3 r10=-12 sp=1.2 im=+0.35 v=1.2k>
Market action::   <long|short|flat> <size in [0,1]> h<horizon seconds> [s<stop bps>]
                  e.g. ``long 0.5 h30 s20``, ``flat 0 h10``
Social prompt::   S h60 0:first post|1:second post|2:third post>
Social action::   pick <index> h<horizon seconds>      e.g. ``pick 2 h60``
                  (which of the K listed posts gets the most engagement within the horizon)

``parse_action`` never raises: a malformed completion becomes ``Invalid(reason)``.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Literal, Mapping

from schemas import MarketActionSpec, SocialActionSpec
from schemas.market import MarketFeatures

PROMPT_END = ">"
SIZES = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
HORIZONS = (5, 10, 30, 60, 300)
STOPS = (10, 20, 50, 100)

# short names keep prompts short; unknown features keep their own (underscore-free) name
_ALIASES = {"spread_bps": "sp", "imbalance": "im", "volume": "v", "social_posts": "sn",
            "social_likes": "sl", "social_reposts": "sr"}
# Non-directional features first, then returns, imbalance last: the last feature before ">" sits
# at a fixed distance from the completion, and positions count from the sequence end, so the sign
# of the imbalance is always the same position away from the first action byte. A byte model
# picks a fixed-position sign out far more easily than one whose place moves with the widths of
# the volume and return fields before it.
_ORDER = ["sp", "v", "sn", "sl", "sr", "r300", "r60", "r10", "r1", "im"]
# signed (directional) features: their sign flips in the mirror image of a market; the others
# (spread, volume, social counts) describe the market without a direction
SIGNED = ("r1", "r10", "r60", "r300", "im")
_RET = re.compile(r"^ret_(\d+)s$")


@dataclass(frozen=True)
class Invalid:
    """A completion that is not an action; ``reason`` says what is wrong with it."""

    reason: str
    kind: Literal["invalid"] = "invalid"


def _short_name(key: str) -> str:
    m = _RET.match(key)
    if m:
        return "r" + m.group(1)
    return _ALIASES.get(key, key.replace("_", ""))


def _compact(x: float) -> str:
    """Three significant digits at most, with k/M suffixes: 1234 -> 1.2k."""
    a = abs(x)
    for div, suf in ((1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{x / div:.3g}{suf}"
    return f"{x:.3g}"


def _format_value(short: str, v: float) -> str:
    if not math.isfinite(v):
        return "nan"
    # Signed features carry their sign, except zero, which has none: written "+0", a flat return
    # would share its sign byte with every rise, and a byte model reads "r60=+0" as "up" (measured:
    # a policy that learned momentum answered long to the neutral probe, whatever the imbalance).
    if short.startswith("r") and short[1:].isdigit():
        r = round(v)  # returns in bps: integer resolution is plenty
        return f"{r:+d}" if r else "0"
    if short == "im":
        x = round(max(-1.0, min(1.0, v)), 2)
        return f"{x:+.2f}" if x else "0.00"
    if short in ("sn", "sl", "sr"):
        return str(int(round(v)))
    return _compact(v)


def format_market_prompt(symbol: str, features: MarketFeatures | Mapping[str, float]) -> str:
    """``M <symbol> k=v ...>``; unknown features first (sorted), then the known ones in ``_ORDER``.
    A mapping may carry features ``MarketFeatures`` does not have (experiments, tests)."""
    named = features.as_dict() if isinstance(features, MarketFeatures) else features
    items = {_short_name(k): _format_value(_short_name(k), float(v)) for k, v in named.items()}
    keys = sorted(k for k in items if k not in _ORDER) + [k for k in _ORDER if k in items]
    return " ".join(["M", symbol, *(f"{k}={items[k]}" for k in keys)]) + PROMPT_END


def is_market_prompt(prompt: str) -> bool:
    return prompt.startswith("M ")


_SIGNED_VALUE = re.compile(r"(?<=[ ])(" + "|".join(SIGNED) + r")=([+-])([0-9.]+)(?=[ >])")


def _flip(m: re.Match) -> str:
    name, sign, digits = m.groups()
    if not any(ch in "123456789" for ch in digits):
        return m.group(0)  # zero has no direction (prompts written before zero lost its sign)
    return f"{name}={'-' if sign == '+' else '+'}{digits}"


def mirror_market_prompt(prompt: str) -> str:
    """The same market seen upside down: every signed feature's sign flipped, the rest unchanged.

    A text-level flip keeps the prompt's length (the mirror lines up with the original token for
    token) and is its own inverse.
    """
    return _SIGNED_VALUE.sub(_flip, prompt)


_MIRROR_SIDE = {"long": "short", "short": "long"}


def mirror_market_completion(text: str) -> str:
    """long <-> short in the leading side word; anything else (flat, malformed) is unchanged."""
    head, sep, rest = text.partition(" ")
    return _MIRROR_SIDE.get(head, head) + sep + rest


def _clean_post(text: str, max_chars: int) -> str:
    text = re.sub(r"[|>\s]+", " ", text).strip()
    return text.encode("utf-8")[:max_chars].decode("utf-8", errors="ignore")


def format_social_prompt(posts: list[str], horizon_s: int = 60, max_chars: int = 32) -> str:
    """``S h<horizon> 0:post|1:post...>``; each post squashed to one line of ``max_chars`` bytes."""
    body = "|".join(f"{i}:{_clean_post(p, max_chars)}" for i, p in enumerate(posts))
    return f"S h{int(horizon_s)} {body}{PROMPT_END}"


def _num(x: float) -> str:
    return f"{x:g}"


def format_market_action(spec: MarketActionSpec) -> str:
    out = f"{spec.side} {_num(spec.size)} h{_num(spec.horizon_s)}"
    return out + (f" s{_num(spec.stop_bps)}" if spec.stop_bps else "")


def format_social_action(spec: SocialActionSpec) -> str:
    return f"pick {spec.pick} h{_num(spec.horizon_s)}"


def _positive(tok: str, prefix: str, what: str) -> float | Invalid:
    if not tok.startswith(prefix):
        return Invalid(f"expected {what} as {prefix}<number>, got {tok!r}")
    try:
        v = float(tok[len(prefix):])
    except ValueError:
        return Invalid(f"{what} {tok!r} is not a number")
    if not math.isfinite(v) or v <= 0:
        return Invalid(f"{what} must be > 0, got {tok!r}")
    return v


def _parse_market(tokens: list[str]) -> MarketActionSpec | Invalid:
    if tokens[0] not in ("long", "short", "flat"):
        return Invalid(f"unknown side {tokens[0]!r}; expected long, short or flat")
    if len(tokens) not in (3, 4):
        return Invalid(f"expected '<side> <size> h<secs> [s<bps>]', got {len(tokens)} fields")
    try:
        size = float(tokens[1])
    except ValueError:
        return Invalid(f"size {tokens[1]!r} is not a number")
    if not 0 <= size <= 1:
        return Invalid(f"size {size} outside [0, 1]")
    horizon = _positive(tokens[2], "h", "horizon")
    if isinstance(horizon, Invalid):
        return horizon
    stop = None
    if len(tokens) == 4:
        stop = _positive(tokens[3], "s", "stop")
        if isinstance(stop, Invalid):
            return stop
    if tokens[0] == "flat":
        size = 0.0  # a flat position has no size, whatever was written
    return MarketActionSpec(side=tokens[0], size=size, horizon_s=horizon, stop_bps=stop)


def _parse_social(tokens: list[str], n_choices: int | None) -> SocialActionSpec | Invalid:
    if tokens[0] != "pick":
        return Invalid(f"expected 'pick <index> h<secs>', got {tokens[0]!r}")
    if len(tokens) != 3:
        return Invalid(f"expected 'pick <index> h<secs>', got {len(tokens)} fields")
    if not tokens[1].isdigit():
        return Invalid(f"pick index {tokens[1]!r} is not a non-negative integer")
    pick = int(tokens[1])
    if n_choices is not None and pick >= n_choices:
        return Invalid(f"pick {pick} out of range for {n_choices} posts")
    horizon = _positive(tokens[2], "h", "horizon")
    if isinstance(horizon, Invalid):
        return horizon
    return SocialActionSpec(pick=pick, horizon_s=horizon)


def parse_action(text: str, task: Literal["market", "social"] = "market",
                 n_choices: int | None = None) -> MarketActionSpec | SocialActionSpec | Invalid:
    """Parse a completion; never raises (anything unexpected becomes ``Invalid``)."""
    try:
        if not isinstance(text, str):
            return Invalid(f"completion is {type(text).__name__}, not text")
        tokens = text.strip().split()
        if not tokens:
            return Invalid("empty completion")
        if task == "market":
            return _parse_market(tokens)
        if task == "social":
            return _parse_social(tokens, n_choices)
        return Invalid(f"unknown task {task!r}")
    except Exception as exc:  # the contract is "never raises"; keep the reason
        return Invalid(f"unparseable: {type(exc).__name__}: {exc}")


# -- grammar-generated examples (bootstrap pretraining data) ------------------------------------

def random_market_features(rng: random.Random) -> MarketFeatures:
    return MarketFeatures(
        ret_1s=rng.gauss(0, 3), ret_10s=rng.gauss(0, 10), ret_60s=rng.gauss(0, 25),
        spread_bps=abs(rng.gauss(1, 1)), imbalance=rng.uniform(-1, 1),
        volume=10 ** rng.uniform(-1, 5), social_posts=float(rng.randint(0, 20)),
    )


# -- the trading prior: what a fresh model is bootstrapped on before any reward exists ------------

PRIOR_ACTIONS = ("long 1 h5", "short 1 h5", "flat 0 h5")
PRIOR_SYMBOLS = ("BTCUSDT", "ETHUSDT", "BTCUSD", "ETHUSD")


def market_scale_features(rng: random.Random) -> MarketFeatures:
    """Features at the recorded markets' scale (bps returns, sub-bps spreads), uniform imbalance."""
    return MarketFeatures(
        ret_1s=rng.gauss(0, 1), ret_10s=rng.gauss(0, 3), ret_60s=rng.gauss(0, 8),
        spread_bps=math.exp(rng.uniform(math.log(0.01), math.log(0.2))),
        imbalance=rng.uniform(-1, 1), volume=10 ** rng.uniform(3, 7),
    )


def prior_pairs(actions: tuple[str, ...] | list[str] = PRIOR_ACTIONS):
    """A ``pairs_fn`` for ``learners.bootstrap``: market prompts at the recorded scale, each with an
    action drawn uniformly from ``actions``, so the prior has no opinion about the side.

    Long, short or flat at size 1 with the actor's 5 s horizon (what the baselines trade): every
    sampled candidate parses, a completion fits in 12 bytes (the CPU budget is sampling steps),
    and the learner spends its groups on *which side*. The grammar and parser stay the full ones:
    anything else the policy writes is parsed and scored as usual.
    """
    actions = tuple(actions)

    def pairs(rng: random.Random, n: int) -> list[tuple[str, str]]:
        return [(format_market_prompt(rng.choice(PRIOR_SYMBOLS), market_scale_features(rng)), rng.choice(actions))
                for _ in range(n)]

    return pairs


def prior_parse_prompts(seed: int = 1234, n: int = 8) -> list[tuple[str, str]]:
    """Market prompts for ``learners.bootstrap.parse_rate``."""
    rng = random.Random(seed)
    return [(format_market_prompt(rng.choice(PRIOR_SYMBOLS), market_scale_features(rng)), "market") for _ in range(n)]


def random_market_action(rng: random.Random) -> str:
    side = rng.choice(("long", "short", "flat"))
    size = 0.0 if side == "flat" else rng.choice(SIZES[1:])
    stop = rng.choice(STOPS) if side != "flat" and rng.random() < 0.5 else None
    return format_market_action(MarketActionSpec(side=side, size=size, horizon_s=float(rng.choice(HORIZONS)),
                                                 stop_bps=float(stop) if stop else None))


def random_market_example(rng: random.Random, symbols=("BTCUSDT", "ETHUSDT", "SOLUSDT")) -> tuple[str, str]:
    return format_market_prompt(rng.choice(symbols), random_market_features(rng)), random_market_action(rng)


def random_social_example(rng: random.Random, k: int = 3) -> tuple[str, str]:
    words = ("gm", "btc", "pump", "ser", "wagmi", "moon", "rekt", "hodl", "news", "eth")
    posts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 4))) for _ in range(k)]
    h = rng.choice(HORIZONS)
    return format_social_prompt(posts, h), format_social_action(SocialActionSpec(pick=rng.randrange(k), horizon_s=float(h)))
