"""The PyFlink job: the Faust worker's reward and group path, on Apache Flink, for scale-out.

Run it through the CLI (``eigenloop streams flink --local`` or ``--jobmanager URL``), which
starts ``python -m streams.flink_job`` with the Flink environment's interpreter (see
``mk/flink.mk``: PyFlink 2.2 pins dill/pyarrow/pandas versions that the main environment's trl
and datasets cannot share, so it has its own virtualenv).

Topology::

    market.events  --Kafka source (raw bytes, watermark on ts_event)--+
                                                                      +--UNION--keyBy(symbol)--
    agent.actions  --Kafka source (raw bytes, watermark on ts_event)--+
        --SymbolProcess (streams.engine.SymbolEngine over keyed state, timers)
            --> agent.outcomes (main output), learn.groups, deadletter (side outputs)
            --> Kafka sinks, exactly-once (transactions committed on checkpoint)

- **Same logic.** ``streams.flink_process.SymbolProcess`` runs the engine the Faust agents run:
  the same pure functions, the same deterministic event ids.
- **Event time.** The sources read ``ts_event`` (and ``symbol``) from the JSON in SQL and put a
  bounded-out-of-orderness watermark on it; ``table.exec.source.idle-timeout`` marks a partition
  that gets nothing as idle, so an empty partition does not hold the watermark back (the
  catalogue has 6 market partitions for a handful of symbols). A record that is not JSON has
  no event time; it gets 0, which never advances a watermark.
- **Watermark alignment** (``align_drift_s``, off by default) can keep market.events from
  running ahead of agent.actions in event time in a large replay, so that a late-read candidate
  still finds its book path in the state (``market_window_s`` of history). It is off because a
  partition holding only undecodable records (event time 0) pins the group's watermark and, in
  our tests, stalled both sources for minutes instead of being treated as idle.
- **Exactly-once.** Checkpoints hold the keyed state and the source offsets together; the sinks
  write in Kafka transactions committed when the checkpoint completes. Consumers that read with
  ``isolation.level=read_committed`` see every outcome and group once, also after a restart from
  a checkpoint. Output latency is therefore about half a checkpoint interval plus a checkpoint's
  duration: ``streams.flink_checkpoint_interval_s`` (0.5 s by default; see the README's "Choosing an
  engine" for what shorter intervals cost). A pause of half an interval between checkpoints
  bounds their share of the time when they get slow (a backlog), and the sinks reuse a small
  pool of transactional ids instead of a new one per checkpoint, which at sub-second intervals
  would pile up on the broker's transaction coordinator (kept there for
  ``transactional.id.expiration.ms``, 7 days by default).
- **Keys.** Outputs are keyed by group id like the Faust worker's (the sinks use Kafka's default
  partitioner on the key), so partitions match.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from schemas.kafka_security import java_properties
from schemas.settings import FLINK_CHECKPOINT_DEFAULT_S, FLINK_CHECKPOINT_MAX_S, FLINK_CHECKPOINT_MIN_S
from schemas.topics import topic_name
from streams.flink_lag import librdkafka_config

REPO = Path(__file__).resolve().parent.parent
CONNECTOR_DIR = REPO / ".cache" / "flink"
BUCKET_S = 1.0  # the Faust topology's market bucket; the same here so state shapes match
INPUTS = ("market.events", "agent.actions")
OUTPUTS = ("agent.outcomes", "learn.groups", "deadletter")
# the broker caps transactions at transaction.max.timeout.ms (15 min by default); Flink's default
# (1 h) would be refused. It must outlast a checkpoint interval plus a restart.
TRANSACTION_TIMEOUT_MS = 600_000


@dataclass
class JobConfig:
    bootstrap: str
    topics: dict[str, str]  # catalogue name -> physical topic
    group_id: str
    transactional_prefix: str
    reward: dict
    groups: dict
    market_window_s: float = 60.0
    idle_tick_s: float = 0.25
    idle_close: bool = True  # streams.idle_close: off for a loop-paced replay
    parallelism: int | None = None  # None: 1 on the local mini-cluster, the cluster's default elsewhere
    checkpoint_interval_s: float = FLINK_CHECKPOINT_DEFAULT_S  # streams.flink_checkpoint_interval_s
    checkpoint_dir: Path | str = Path(".eigenloop/flink/checkpoints")  # a folder, or a URI (s3://...)
    restore: str | None = None  # a checkpoint/savepoint path, "latest" under checkpoint_dir, or "auto"
    delivery: str = "exactly-once"
    out_of_orderness_s: float = 1.0
    idle_timeout_s: float = 2.0
    align_drift_s: float = 0.0  # > 0: watermark alignment between the two sources (see above)
    bundle_ms: int = 100  # Python bundles: max time an output waits in the Python worker
    jobmanager: str | None = None  # None: local mini-cluster
    python_executable: str | None = None  # the workers' interpreter (default: this one, locally)
    kafka_properties: dict[str, str] = field(default_factory=dict)
    lag_config: dict[str, str] = field(default_factory=dict)  # librdkafka settings (streams.flink_lag)
    name: str = "eigenloop-streams"
    connector_jar: str | None = None  # a jar path/URI, "classpath" (already in the image), None: .cache/flink
    # the cluster (a FlinkDeployment) configures checkpointing, parallelism and the Python
    # interpreter itself: the job then sets only what is about the job
    managed: bool = False


def from_settings(settings, bootstrap: str, **overrides) -> JobConfig:
    """A ``JobConfig`` from ``schemas.settings.Settings``; ``overrides`` win (None = keep)."""
    prefix = settings.kafka.topic_prefix
    app = f"{prefix}{settings.streams.app_id}-flink"
    cfg = JobConfig(
        bootstrap=bootstrap, topics={t: topic_name(t, prefix) for t in INPUTS + OUTPUTS}, group_id=app,
        transactional_prefix=app, reward=settings.reward.model_dump(), groups=settings.groups.model_dump(),
        market_window_s=settings.streams.market_window_s, idle_tick_s=settings.streams.idle_tick_s,
        idle_close=settings.streams.idle_close, checkpoint_interval_s=settings.streams.flink_checkpoint_interval_s,
        checkpoint_dir=Path(settings.data_dir).resolve() / "flink" / app / "checkpoints",
        kafka_properties=java_properties(settings.kafka), name=app,
        lag_config=librdkafka_config(bootstrap, app, settings.kafka),
    )
    topics = overrides.pop("topics", None) or {}
    cfg.topics.update({k: v for k, v in topics.items() if v})
    for k, v in overrides.items():
        if v is not None:
            setattr(cfg, k, v)
    check_checkpoint_interval(cfg.checkpoint_interval_s)
    return cfg


def check_checkpoint_interval(seconds: float) -> None:
    """A ``--checkpoint-interval`` override gets the settings' bounds too (``ValueError``, one line)."""
    if not FLINK_CHECKPOINT_MIN_S <= seconds <= FLINK_CHECKPOINT_MAX_S:
        raise ValueError(f"checkpoint interval {seconds} s: must be between {FLINK_CHECKPOINT_MIN_S} and "
                         f"{FLINK_CHECKPOINT_MAX_S} s (streams.flink_checkpoint_interval_s)")


def connector_jar(choice: str | None = None) -> str | None:
    """The connector jar's URI for ``pipeline.jars``; None when it is on the cluster's classpath."""
    if choice == "classpath":
        return None
    if choice:
        return choice if "://" in choice else Path(choice).resolve().as_uri()
    jars = sorted(CONNECTOR_DIR.glob("flink-sql-connector-kafka-*.jar"))
    if not jars:
        raise SystemExit(f"no Flink Kafka connector jar in {CONNECTOR_DIR}: run `make flink-setup`")
    return jars[-1].as_uri()


def _uri(path: Path | str) -> str:
    """A checkpoint location as a URI: s3://..., hdfs://... as given, a local path as file://."""
    return str(path) if "://" in str(path) else Path(path).resolve().as_uri()


def restore_path(cfg: "JobConfig") -> Path | str | None:
    """Where the job starts from: ``--restore`` as given, ``latest`` (an error when there is none),
    or ``auto`` (the latest when there is one, else a fresh start: what a supervisor restarts)."""
    if not cfg.restore:
        return None
    if cfg.restore not in ("latest", "auto"):
        return cfg.restore
    path = latest_checkpoint(Path(cfg.checkpoint_dir))
    if path is None and cfg.restore == "latest":
        raise SystemExit(f"--restore latest: no completed checkpoint under {cfg.checkpoint_dir}")
    return path


def latest_checkpoint(root: Path) -> Path | None:
    """The newest completed checkpoint (``chk-N`` with ``_metadata``) under ``root``, any job."""
    done = [p.parent for p in Path(root).glob("*/chk-*/_metadata")]
    return max(done, key=lambda p: p.stat().st_mtime) if done else None


# ---- SQL -------------------------------------------------------------------------------------
def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _with(options: dict[str, str]) -> str:
    return ",\n  ".join(f"{_sql_str(k)} = {_sql_str(v)}" for k, v in options.items())


def _common(cfg: JobConfig, topic: str) -> dict[str, str]:
    opts = {"connector": "kafka", "topic": topic, "properties.bootstrap.servers": cfg.bootstrap,
            "key.format": "raw", "key.fields": "k", "value.format": "raw", "value.fields-include": "EXCEPT_KEY"}
    opts.update({f"properties.{k}": v for k, v in cfg.kafka_properties.items()})
    return opts


def source_ddl(table: str, topic: str, cfg: JobConfig) -> str:
    """Raw bytes plus where they came from; symbol, ts_event and ts_ingest read in SQL.

    A record that is not JSON gets symbol '' and event time 0: it still reaches the operator,
    which dead-letters it with the reason (nothing is dropped in SQL).
    """
    opts = _common(cfg, topic)
    opts.update({"properties.group.id": cfg.group_id, "scan.startup.mode": "group-offsets",
                 "properties.auto.offset.reset": "earliest"})
    if cfg.align_drift_s > 0:
        opts.update({"scan.watermark.alignment.group": f"{cfg.name}-inputs",
                     "scan.watermark.alignment.max-drift": f"{round(cfg.align_drift_s * 1000)} ms"})
    text = "CAST(v AS STRING)"
    num = lambda path: f"TRY_CAST(JSON_VALUE({text}, '$.{path}') AS BIGINT)"  # noqa: E731
    return f"""CREATE TEMPORARY TABLE {table} (
  k BYTES,
  v BYTES,
  `topic` STRING METADATA VIRTUAL,
  `partition` INT METADATA VIRTUAL,
  `offset` BIGINT METADATA VIRTUAL,
  sym AS COALESCE(JSON_VALUE({text}, '$.symbol'), ''),
  ts AS TO_TIMESTAMP_LTZ(COALESCE({num('ts_event')}, 0) / 1000000, 3),
  WATERMARK FOR ts AS ts - INTERVAL '{cfg.out_of_orderness_s:.3f}' SECOND
) WITH (
  {_with(opts)}
)"""


def sink_ddl(table: str, topic: str, cfg: JobConfig) -> str:
    opts = _common(cfg, topic)
    opts["sink.delivery-guarantee"] = cfg.delivery
    if cfg.delivery == "exactly-once":
        opts["sink.transactional-id-prefix"] = f"{cfg.transactional_prefix}-{topic}"
        opts["properties.transaction.timeout.ms"] = str(TRANSACTION_TIMEOUT_MS)
        # reuse transactional ids (see the module doc): one per checkpoint is 7,200 an hour per
        # sink and subtask at 0.5 s
        opts["sink.transaction-naming-strategy"] = "POOLING"
    return f"CREATE TEMPORARY TABLE {table} (k BYTES, v BYTES) WITH (\n  {_with(opts)}\n)"


# ---- the job ---------------------------------------------------------------------------------
def flink_configuration(cfg: JobConfig):
    from pyflink.common import Configuration

    conf = Configuration()
    conf.set_string("pipeline.name", cfg.name)
    jar = connector_jar(cfg.connector_jar)
    if jar:
        conf.set_string("pipeline.jars", jar)
    conf.set_string("table.exec.source.idle-timeout", f"{round(cfg.idle_timeout_s * 1000)} ms")
    conf.set_string("python.fn-execution.bundle.time", str(cfg.bundle_ms))
    parallelism = cfg.parallelism or (None if (cfg.jobmanager or cfg.managed) else 1)
    if parallelism:
        conf.set_string("parallelism.default", str(parallelism))
    if cfg.python_executable or not (cfg.jobmanager or cfg.managed):
        conf.set_string("python.executable", cfg.python_executable or sys.executable)
    if cfg.managed:
        return conf
    conf.set_string("python.client.executable", sys.executable)
    for key, value in checkpoint_options(cfg).items():
        conf.set_string(key, value)
    path = restore_path(cfg)
    if path is not None:
        conf.set_string("execution.state-recovery.path", _uri(path))
        print(f"restoring from {path}", flush=True)
    if cfg.jobmanager:
        url = urlparse(cfg.jobmanager if "://" in cfg.jobmanager else f"http://{cfg.jobmanager}")
        conf.set_string("execution.target", "remote")
        conf.set_string("rest.address", url.hostname or "localhost")
        conf.set_string("rest.port", str(url.port or 8081))
    return conf


def checkpoint_options(cfg: JobConfig) -> dict[str, str]:
    """The job's checkpointing, as Flink configuration entries (a managed cluster sets its own)."""
    interval_ms = round(cfg.checkpoint_interval_s * 1000)
    return {
        "execution.checkpointing.interval": f"{interval_ms} ms",
        # when checkpoints take longer than the interval (a backlog), processing still gets at
        # least half an interval between them; while they are fast this changes nothing
        "execution.checkpointing.min-pause": f"{interval_ms // 2} ms",
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "execution.checkpointing.dir": _uri(cfg.checkpoint_dir),
        # kept after cancel/kill so the job can be restarted from them (--restore latest)
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.num-retained": "2",
        "state.backend.type": "hashmap",
    }


def build(env, cfg: JobConfig) -> None:
    """Declare sources, the keyed operator and the sinks on ``env``."""
    from pyflink.common import Types
    from pyflink.table import StreamTableEnvironment

    from streams.flink_process import DEADLETTER, GROUPS, OUT_TYPE, SymbolProcess

    t_env = StreamTableEnvironment.create(env)
    t_env.execute_sql(source_ddl("market_in", cfg.topics["market.events"], cfg))
    t_env.execute_sql(source_ddl("actions_in", cfg.topics["agent.actions"], cfg))
    sinks = {"agent.outcomes": "outcomes_out", "learn.groups": "groups_out", "deadletter": "deadletter_out"}
    for base, table in sinks.items():
        t_env.execute_sql(sink_ddl(table, cfg.topics[base], cfg))
    cols = "sym, v, `topic`, `partition`, `offset`, ts"
    rows = t_env.to_data_stream(t_env.sql_query(
        f"SELECT 'm' AS kind, {cols} FROM market_in UNION ALL SELECT 'a' AS kind, {cols} FROM actions_in"))
    # the lag probe asks about the sources' consumer group, wherever the overrides put it
    lag = {**cfg.lag_config, "bootstrap.servers": cfg.bootstrap, "group.id": cfg.group_id}
    process = SymbolProcess(cfg.reward, cfg.groups, bucket_s=BUCKET_S, market_window_s=cfg.market_window_s,
                            idle_tick_s=cfg.idle_tick_s, idle_close=cfg.idle_close, lag_config=lag)
    out = (rows.key_by(lambda r: r[1], key_type=Types.STRING())
           .process(process, output_type=OUT_TYPE).name("rewards-and-groups").uid("rewards-and-groups"))
    stmts = t_env.create_statement_set()
    stmts.add_insert(sinks["agent.outcomes"], t_env.from_data_stream(out))
    stmts.add_insert(sinks["learn.groups"], t_env.from_data_stream(out.get_side_output(GROUPS)))
    stmts.add_insert(sinks["deadletter"], t_env.from_data_stream(out.get_side_output(DEADLETTER)))
    stmts.attach_as_datastream()


def run(cfg: JobConfig) -> None:
    """Run on the local mini-cluster (blocks) or submit to ``cfg.jobmanager`` (returns)."""
    # the JVM and the Python workers it starts inherit these: our packages, a modest heap
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("JVM_ARGS", "-Xms256m -Xmx1g -XX:+UseSerialGC")
    if not cfg.managed and "://" not in str(cfg.checkpoint_dir):
        log_dir = Path(cfg.checkpoint_dir).parent / "log"
        log_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("FLINK_LOG_DIR", str(log_dir))
    from pyflink.datastream import StreamExecutionEnvironment

    env = StreamExecutionEnvironment.get_execution_environment(flink_configuration(cfg))
    if cfg.jobmanager:  # ship our packages; the cluster's image brings PyFlink and pydantic
        for pkg in ("schemas", "streams"):
            env.add_python_file(str(REPO / pkg))
    build(env, cfg)
    client = env.execute_async(cfg.name)
    print(f"flink job submitted {client.get_job_id()}", flush=True)  # tests and supervisors wait for this line
    if not cfg.jobmanager:  # local, or application mode in a FlinkDeployment: the job's lifetime
        client.get_job_execution_result().result()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m streams.flink_job", description=__doc__.split("\n")[0])
    where = p.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="run on a local mini-cluster (default)")
    where.add_argument("--jobmanager", help="submit to this JobManager (REST URL, e.g. http://host:8081)")
    p.add_argument("--bootstrap", help="Kafka bootstrap (default: settings)")
    p.add_argument("--parallelism", type=int)
    p.add_argument("--checkpoint-dir", help="folder or URI (s3://..., hdfs://...) of the checkpoints")
    p.add_argument("--checkpoint-interval", type=float, dest="checkpoint_interval_s")
    p.add_argument("--restore", help="checkpoint or savepoint path to start from, 'latest', or 'auto' "
                                      "(the latest if there is one, else a fresh start)")
    p.add_argument("--delivery", choices=["exactly-once", "at-least-once"])
    p.add_argument("--group-id")
    p.add_argument("--python-executable", help="the Python of the task managers (remote clusters)")
    p.add_argument("--connector-jar", help="Kafka connector jar path/URI, or 'classpath' if the cluster has it")
    p.add_argument("--managed", action="store_true", default=None,
                   help="the cluster configures checkpointing, parallelism and Python (FlinkDeployment)")
    for base in INPUTS + OUTPUTS:
        p.add_argument(f"--topic-{base.replace('.', '-')}", dest=f"topic:{base}", help=f"topic for {base}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from schemas.settings import SettingsError, load_settings

    args = parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as e:
        raise SystemExit(str(e))
    bootstrap = args.bootstrap or settings.kafka.bootstrap
    if not bootstrap:
        raise SystemExit("no Kafka bootstrap: pass --bootstrap or set EIGENLOOP_KAFKA__BOOTSTRAP")
    topics = {k.split(":", 1)[1]: v for k, v in vars(args).items() if k.startswith("topic:")}
    try:
        cfg = from_settings(settings, bootstrap, topics=topics, parallelism=args.parallelism,
                            checkpoint_dir=args.checkpoint_dir, checkpoint_interval_s=args.checkpoint_interval_s,
                            restore=args.restore, delivery=args.delivery, group_id=args.group_id,
                            jobmanager=args.jobmanager, python_executable=args.python_executable,
                            connector_jar=args.connector_jar, managed=args.managed)
    except ValueError as e:
        raise SystemExit(str(e))
    if not cfg.managed:
        print(f"checkpoints every {round(cfg.checkpoint_interval_s * 1000)} ms", flush=True)
    run(cfg)


if __name__ == "__main__":
    main()
