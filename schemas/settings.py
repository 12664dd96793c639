"""The one typed settings model (env prefix ``EIGENLOOP_``, nested with ``__``, optional YAML).

It lives in ``schemas`` because every package reads it and ``schemas`` is the only package all
others may import. Load it once at start with ``load_settings``: a bad value fails there with
one readable line per field, never later in the middle of a run.

Precedence, highest first: explicit arguments, environment (``EIGENLOOP_KAFKA__BOOTSTRAP``),
the YAML file (``--config`` or ``EIGENLOOP_CONFIG``), defaults.
"""

from __future__ import annotations

import difflib
import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from schemas.learn import MAX_CANDIDATES


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


# a real cluster keeps three copies of a topic and acknowledges a write once two have it, so one
# broker can be lost, or restarted for an upgrade, without losing data or stopping writes
CLUSTER_FACTOR = 3
CLUSTER_MIN_INSYNC = 2


class Replication(_Section):
    """Replicas of one class of topics, applied when ``eigenloop topics ensure`` creates them
    (Kafka cannot change an existing topic's replication factor without a reassignment)."""

    # null asks the cluster: one broker is the local broker of `eigenloop run` and the tests, where
    # any other factor cannot be created; a real cluster gets three copies and writes that need two
    factor: int | None = Field(None, ge=1, description="replication factor; null: 1 on a one-broker cluster, "
                               "else 3 (all brokers when fewer)")
    min_insync: int | None = Field(None, ge=1, description="min.insync.replicas; null: 1 on a one-broker "
                                   "cluster, else 2 (1 when the factor is 2)")

    @model_validator(mode="after")
    def _fits(self) -> "Replication":
        if self.factor is not None and self.min_insync is not None and self.min_insync > self.factor:
            raise ValueError(f"min_insync ({self.min_insync}) above factor ({self.factor}): no write could succeed")
        return self

    def resolve(self, brokers: int, where: str) -> tuple[int, int]:
        """(replication factor, min.insync.replicas) on a cluster of ``brokers``; ValueError,
        naming the setting (``where``), when the cluster cannot hold it."""
        factor = self.factor or (1 if brokers <= 1 else min(CLUSTER_FACTOR, brokers))
        if factor > brokers:
            raise ValueError(f"{where}.factor={factor} but the cluster has {brokers} broker(s); "
                             f"lower it or leave it unset to follow the cluster")
        min_insync = self.min_insync or max(1, min(CLUSTER_MIN_INSYNC, factor - 1))
        if min_insync > factor:
            raise ValueError(f"{where}.min_insync={min_insync} is above the replication factor {factor}: "
                             "no write could succeed")
        return factor, min_insync


class TopicReplication(_Section):
    """Replicas per topic class (each catalogue topic names its class in schemas/topics.py)."""

    learning: Replication = Field(Replication(), description="learn.*: the log the model is rebuilt from, kept "
                                  "forever")
    events: Replication = Field(Replication(), description="market, social, agent and dead-letter topics")
    streams: Replication = Field(Replication(), description="the streams worker's own topics: its table "
                                 "changelogs (pending candidates, closed groups, input cursors) and its "
                                 "re-keying topic")


class KafkaSettings(_Section):
    # None: use the local broker started by `eigenloop kafka start` (its address file)
    bootstrap: str | None = None
    topic_prefix: str = ""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    linger_ms: int = Field(5, ge=0)
    max_batch_size: int = Field(256 * 1024, ge=1024)
    replication: TopicReplication = TopicReplication()


class RewardConfig(_Section):
    """Everything the counterfactual paper fill and the reward need. Shared by Faust and Flink."""

    latency_ms: float = Field(100.0, ge=0, description="entry at the touch this long after the decision")
    fee_bps: float = Field(4.5, ge=0, description="taker fee per side, in basis points")
    slippage_model: Literal["none", "fixed", "spread"] = "fixed"
    slippage_bps: float = Field(0.0, ge=0, description="fixed: bps per side; spread: fraction of the spread per side")
    kind: Literal["pnl", "risk_adjusted"] = "pnl"
    vol_floor_bps: float = Field(1.0, gt=0, description="floor on realised vol when scaling PnL")
    drawdown_penalty: float = Field(0.5, ge=0, description="bps of reward lost per bps of max adverse excursion")
    min_reward: float = Field(-50.0, description="reward of an invalid action (and floor on all rewards)")
    max_reward: float = Field(50.0)
    social_like_weight: float = 1.0
    social_repost_weight: float = 2.0

    @model_validator(mode="after")
    def _bounds(self) -> "RewardConfig":
        if self.min_reward >= self.max_reward:
            raise ValueError(f"min_reward ({self.min_reward}) must be below max_reward ({self.max_reward})")
        return self


class GroupConfig(_Section):
    group_size: int = Field(8, ge=2, le=MAX_CANDIDATES, description="G: candidates sampled per prompt (at most "
                            "what one learn.group may hold)")
    # "none" (Dr. GRPO): advantages stay in reward units (bps). Dividing by each group's std makes
    # a quiet 5 s, where flat beats long and short by half a spread, as loud a vote as a 5 bps move;
    # the policy then learns "flat" from the spread alone and, all G flat, never learns again
    # (measured on the captures). Unscaled, a group counts as much as the money it moves.
    scale_rewards: Literal["group", "batch", "none"] = "none"
    partial: Literal["drop", "keep"] = "keep"
    min_partial: int = Field(2, ge=2, description="keep a partial group only if G' >= this")
    grace_s: float = Field(2.0, ge=0, description="a group's window ends this long after its longest horizon")


FLINK_CHECKPOINT_DEFAULT_S = 0.5
FLINK_CHECKPOINT_MIN_S = 0.1
FLINK_CHECKPOINT_MAX_S = 300.0


class StreamsSettings(_Section):
    app_id: str = "eigenloop-streams"
    engine: Literal["faust", "flink"] = "faust"
    idle_tick_s: float = Field(0.25, gt=0, le=1.0, description="wall-clock timer closing idle windows")
    idle_close: bool = Field(True, description="close the windows of a symbol idle for idle_tick_s by a wall-clock "
                             "estimate of event time; off: event time only (a loop-paced replay, which "
                             "ends each symbol with a market.watermark)")
    web_port: int = Field(0, ge=0, description="Faust web port; 0 picks a free one")
    # Faust itself listens on every interface unless told otherwise; its pages are for local
    # probes, so only a pod (whose kubelet probes from outside the container) opens it wider
    web_bind: str = Field("127.0.0.1", min_length=1, description="address the Faust web server listens on; "
                          "0.0.0.0 only where probes come from outside the host (a pod)")
    market_window_s: float = Field(60.0, gt=0, description="how much book/trade history the state keeps")
    session_timeout_s: float = Field(15.0, ge=6, le=300, description="consumer-group session timeout: how soon "
                                     "a killed worker's partitions move to a live one (the broker's minimum is 6 s)")
    stall_after_s: float = Field(5.0, gt=0, description="input waiting and none of it processed for this "
                                 "long: the partition is stalled (sought back to the agent's cursor, "
                                 "logged, /readyz fails)")
    stall_exit_s: float | None = Field(60.0, gt=0, description="a stall this long with no input processed "
                                       "anywhere meanwhile (a wedged worker, not a backlog): /healthz fails and "
                                       "the worker exits for its supervisor to restart it; null: never")
    # Flink commits its exactly-once outputs only when a checkpoint completes, so this interval is
    # the Flink engine's output latency. The ceiling keeps it well inside the sinks' Kafka
    # transaction timeout (600 s, which must also outlast a restart)
    flink_checkpoint_interval_s: float = Field(FLINK_CHECKPOINT_DEFAULT_S, ge=FLINK_CHECKPOINT_MIN_S,
                                               le=FLINK_CHECKPOINT_MAX_S,
                                               description="streams.engine=flink: seconds between checkpoints; "
                                               "groups and outcomes become visible to read_committed "
                                               "consumers when one completes")


class ExchangeSettings(_Section):
    name: str
    symbols: list[str]
    ws_url: str | None = None  # overrides ccxt's ws URL (replay servers)
    rest_url: str | None = None


class SourcesSettings(_Section):
    exchanges: list[ExchangeSettings] = [
        ExchangeSettings(name="binance", symbols=["BTC/USDT", "ETH/USDT"]),
        ExchangeSettings(name="okx", symbols=["BTC/USDT", "ETH/USDT"]),
    ]
    social: bool = True
    jetstream_url: str = "wss://jetstream2.us-east.bsky.network/subscribe"
    social_collections: list[str] = ["app.bsky.feed.post", "app.bsky.feed.like", "app.bsky.feed.repost"]
    backoff_initial_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(30.0, gt=0)


class ReplaySettings(_Section):
    data_path: Path = Path("../shared/data")
    speed: float | None = Field(None, gt=0, description="real-time emulation: recorded gaps divided by this, "
                                "decisions the model cannot keep up with skipped (counted); null: paced by "
                                "the loop, one line at a time, nothing skipped, reproducible")
    seed: int = Field(0, description="a paced replay's actor seed: with the same captures and the same starting "
                      "model, the same seed gives the same actions (ids included)")
    span_s: float | None = Field(None, gt=0, description="a paced replay plays only this many seconds of "
                                 "recorded time (null: all of it)")
    pace_url: str | None = Field(None, description="set by `eigenloop run` for the daemon: the paced "
                                 "replay's acknowledgement endpoint")


class ActorSettings(_Section):
    cadence_s: float = Field(2.0, gt=0)
    horizon_s: float = Field(5.0, gt=0)
    choose: Literal["sample", "argmax"] = "sample"
    # sampling overrides; None keeps the model's own (``learner`` config, saved in snapshots). The
    # denoising schedule (sample_steps) is not here: it must align with the model's blocks.
    temperature: float | None = Field(None, gt=0, description="sampling temperature; null: the model's")
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus sampling; null: the model's")


class ExecutorSettings(_Section):
    mode: Literal["paper", "live"] = "paper"
    max_notional: float = Field(100.0, ge=0)
    max_position: float = Field(100.0, ge=0)
    max_orders_per_minute: int = Field(10, ge=0)
    # null: <data_dir>/KILL. daemon.service.executors.kill_switch_path resolves it for every reader and
    # writer (daemon, CLI, HTTP), so they cannot disagree on which file stops trading
    kill_switch_file: Path | None = Field(None, description="the kill-switch flag file; null: <data_dir>/KILL")
    social_dry_run: bool = True
    order_timeout_s: float = Field(10.0, gt=0, description="live: ccxt timeout of one order request, also "
                                   "Binance's recvWindow, so a request delayed past it is refused by the venue")
    order_retries: int = Field(3, ge=0, description="live: retries of an order after a network error or timeout "
                               "(each first looks the order up by its client order id); exchange errors are "
                               "not retried")
    order_backoff_s: float = Field(0.5, ge=0, description="live: wait before the first retry, doubled per retry")
    keep_recent: int = Field(1000, ge=1, description="fills and refusals kept in memory (the newest); "
                             "totals are counted")

    # paper mode may keep "no limit" (inf): nothing is at stake there
    @model_validator(mode="after")
    def _live_limits(self) -> "ExecutorSettings":
        if self.mode == "live":
            for name in ("max_notional", "max_position"):
                value = getattr(self, name)
                if not math.isfinite(value):
                    raise ValueError(f"live mode needs a finite {name} (got {value}): it is the only bound on "
                                     "what one order, or all of them together, can risk")
        return self


class LearnerSettings(_Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # learners.presets: "cpu" is the configuration the efficacy benchmark measures; "gpu" a larger
    # model with the same dynamics; "auto" picks gpu when CUDA is available. ``config`` overrides it.
    preset: Literal["auto", "cpu", "gpu"] = "auto"
    snapshot_every_updates: int = Field(50, ge=1)
    snapshot_every_s: float = Field(300.0, gt=0)
    max_pending_groups: int = Field(256, ge=1)
    backpressure: Literal["coalesce", "skip"] = "coalesce"
    initial_snapshot: Path | None = None
    bootstrap_steps: int = Field(400, ge=0, description="grammar pretraining steps for a fresh model (the "
                                 "efficacy benchmark's)")
    keep_snapshots: int = Field(5, ge=1)
    # CPU threads for torch in the daemon. One by default: the daemon shares its cores with the
    # broker, the streams worker and its own event loop, and OpenMP threads that spin on an
    # oversubscribed machine made a small model's step ~7x slower here. 0 keeps torch's default.
    torch_threads: int = Field(1, ge=0)
    probe_every_updates: int = Field(10, ge=0, description="exact side probe (metrics, /status) every this many "
                                     "policy versions; 0: never")
    # forwarded to learners.LearnerConfig, which judges it as soon as a command that runs the
    # learner starts (daemon.service.learner_settings); kept loose here because schemas cannot import learners
    config: dict[str, Any] = {}


class AnalyticsSettings(_Section):
    dsn: str = "chdb://.eigenloop/chdb"
    username: str | None = None
    password: SecretStr | None = None
    batch_size: int = Field(5000, ge=1)
    flush_s: float = Field(1.0, gt=0)
    # on every query (reports, ad hoc SQL, the sink's own lookups): one runaway query fails alone
    query_timeout_s: int = Field(30, ge=1, description="ClickHouse max_execution_time of each query, seconds")
    query_max_memory_bytes: int = Field(2 * 1024**3, ge=1024**2, description="ClickHouse max_memory_usage of "
                                        "each query, bytes")

    @field_validator("dsn")
    @classmethod
    def _dsn(cls, v: str) -> str:
        if not v.startswith(("chdb://", "http://", "https://", "clickhouse://")):
            raise ValueError("must start with chdb://, http://, https:// or clickhouse://")
        return v


class GuardSettings(_Section):
    """The collapse guard (``daemon/service/guard.py``): windows, floors and ceilings, escalation."""

    enabled: bool = Field(True, description="act; when false the guard only measures and exports metrics")
    window_groups: int = Field(32, ge=1, description="closed groups per judged window")
    consecutive_windows: int = Field(3, ge=1, description="K: unhealthy windows in a row before each escalation")
    entropy_floor_bits: float = Field(1.0, ge=0, description="parsed-action entropy per window below this is unhealthy")
    zero_spread_ceiling: float = Field(0.6, ge=0, le=1, description="share of no-signal groups above this is unhealthy")
    valid_share_floor: float = Field(0.5, ge=0, le=1,
                                     description="share of candidates that parse below this is unhealthy: the entropy "
                                                 "of a handful of valid actions among garbage means nothing")
    stand_aside_share: float | None = Field(
        0.9, gt=0, le=1, description="a window whose valid actions are at least this share flat, with a mean "
        "reward >= 0, is a policy standing aside on purpose (e.g. fees exceed the edge), not a collapse: its "
        "entropy and zero-spread are not held against it; null: judge it like any other window")
    divergence_ceiling: float | None = Field(
        None, ge=0, le=1, description="probe JS divergence (bits) above this is unhealthy; None: measure only")
    temperature_step: float = Field(0.25, gt=0)
    temperature_max: float = Field(1.5, gt=0)
    regulariser: Literal["kl_bootstrap", "entropy"] = "kl_bootstrap"
    regulariser_coef: float = Field(1.0, gt=0)
    pin: bool = Field(True, description="allow the per-block rollback to the last healthy snapshot")
    pin_share: float = Field(0.5, gt=0, le=1,
                             description="pin blocks whose drift since that snapshot is >= this share of the largest")
    release_windows: int = Field(6, ge=1, description="healthy windows in a row before the guard releases")
    probe_prompts: int = Field(8, ge=1)
    probe_samples: int = Field(8, ge=1)
    probe_seed: int = 1234
    probe_every_windows: int = Field(2, ge=0, description="0: never probe")
    drift_history: int = Field(20_000, ge=1, description="block updates remembered for choosing what to pin")


class HttpSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8787, ge=0, le=65535)
    # Every non-GET route (kill switch, snapshot, pin) needs ``Authorization: Bearer <token>``.
    # Neither set: the daemon writes a fresh random token to <data_dir>/admin-token (0600) at each
    # start and the CLI reads it there, so nobody has to configure anything to be safe.
    admin_token: SecretStr | None = Field(None, description="bearer token of the mutating HTTP routes")
    admin_token_file: Path | None = Field(None, description="file holding the bearer token (e.g. a mounted Secret)")
    liveness_stall_s: float = Field(30.0, gt=0, description="/healthz fails once the event loop has not "
                                    "turned for this long (a frozen loop, not a busy one)")

    # a model validator, not a field one: a field error would echo the rejected token
    @model_validator(mode="after")
    def _token(self) -> "HttpSettings":
        if self.admin_token is not None and self.admin_token_file is not None:
            raise ValueError("set admin_token or admin_token_file, not both")
        if self.admin_token is not None and len(self.admin_token.get_secret_value().strip()) < 16:
            raise ValueError("admin_token must be at least 16 characters (e.g. `openssl rand -hex 32`)")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EIGENLOOP_", env_nested_delimiter="__", extra="forbid", validate_default=True,
    )

    data_dir: Path = Path(".eigenloop")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    live_trading: bool = False
    kafka: KafkaSettings = KafkaSettings()
    reward: RewardConfig = RewardConfig()
    groups: GroupConfig = GroupConfig()
    streams: StreamsSettings = StreamsSettings()
    sources: SourcesSettings = SourcesSettings()
    replay: ReplaySettings = ReplaySettings()
    actor: ActorSettings = ActorSettings()
    executor: ExecutorSettings = ExecutorSettings()
    learner: LearnerSettings = LearnerSettings()
    analytics: AnalyticsSettings = AnalyticsSettings()
    http: HttpSettings = HttpSettings()
    guard: GuardSettings = GuardSettings()

    _yaml_file: str | None = None

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = os.environ.get("EIGENLOOP_CONFIG")
        if path:
            from pydantic_settings import YamlConfigSettingsSource

            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)


class SettingsError(ValueError):
    """Settings failed validation; ``str()`` is one readable line per bad field."""


ENV_PREFIX = "EIGENLOOP_"
# EIGENLOOP_* variables that are read outside this model: the settings file, the tests' broker,
# the PyFlink interpreter, the test scripts' knobs, and the live executor's exchange credentials
# (EIGENLOOP_EXCHANGE_<NAME>_API_KEY / _SECRET)
OTHER_ENV = ("CONFIG", "KAFKA_BOOTSTRAP", "FLINK_PYTHON", "SHARED_DATA", "TEST_DATA_DIR", "VENV_BIN", "FAULTS_KILLS",
             "FAULT_HOOK")
OTHER_ENV_PREFIXES = ("EXCHANGE_",)


def _env_paths(model: type[BaseModel], stem: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        path = f"{stem}{name.upper()}"
        out.append(path)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out.extend(_env_paths(field.annotation, f"{path}__"))
    return out


def unknown_env_warnings(environ: Any = None) -> list[str]:
    """One line per ``EIGENLOOP_*`` variable whose top-level name nothing reads.

    pydantic-settings silently skips them, so ``EIGENLOOP_EXECUTR__MODE=live`` would leave the
    executor on paper with nobody told. (A misspelt name below a known section, such as
    ``EIGENLOOP_EXECUTOR__MODDE``, already fails validation: the sections forbid extra keys.)
    """
    environ = os.environ if environ is None else environ
    known_top = {name.upper() for name in Settings.model_fields}
    candidates = _env_paths(Settings) + list(OTHER_ENV)
    lines = []
    for var in sorted(environ):
        if not var.upper().startswith(ENV_PREFIX) or len(var) == len(ENV_PREFIX):
            continue
        rest = var[len(ENV_PREFIX):].upper()
        if rest.split("__", 1)[0] in known_top or rest in OTHER_ENV or rest.startswith(OTHER_ENV_PREFIXES):
            continue
        # matched without the shared prefix, which would make every name look alike
        close = difflib.get_close_matches(rest, candidates, n=1, cutoff=0.6)
        hint = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else ""
        lines.append(f"warning: environment variable {var} is not a setting and is ignored{hint}")
    return lines


def load_settings(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Build and validate the settings, raising ``SettingsError`` with readable lines."""
    previous = os.environ.get("EIGENLOOP_CONFIG")
    if config_file is not None:
        if not Path(config_file).is_file():
            raise SettingsError(f"config file {config_file}: not found")
        os.environ["EIGENLOOP_CONFIG"] = str(config_file)
    elif previous and not Path(previous).is_file():
        raise SettingsError(f"EIGENLOOP_CONFIG={previous}: file not found")
    try:
        return Settings(**overrides)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            lines.append(f"{loc}: {err['msg']} (got {err.get('input')!r})" if "input" in err and not isinstance(err.get("input"), dict) else f"{loc}: {err['msg']}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
    except Exception as e:  # YAML syntax errors and the like come from the source, not pydantic
        if type(e).__module__.startswith("yaml"):
            raise SettingsError(f"config file: not valid YAML ({e})") from None
        raise
    finally:
        if config_file is not None:
            if previous is None:
                os.environ.pop("EIGENLOOP_CONFIG", None)
            else:
                os.environ["EIGENLOOP_CONFIG"] = previous
