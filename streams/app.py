"""The Faust App of the streams worker, and nothing else: topics and tables are declared in
``streams.topology``, agents in ``streams.agents``, and the logic in ``streams.engine``.

Start it from the daemon CLI (never at import)::

    eigenloop streams worker            # settings from EIGENLOOP_* / --config

Delivery: at-least-once. Faust flushes the producer (outputs and table changelogs) before it
commits input offsets, but its consumer can skip records and commit past them, so each agent
resumes from its own persisted input cursor instead (``streams.cursor``): a worker killed with
SIGKILL loses nothing; on restart the tables come back from their changelogs and the input from
the cursor on is processed again. The engine
drops replayed quotes, trades and candidates, and remembers closed groups, so a replay does not
re-open them. What it cannot prevent is a record that was *sent* between the last commit and the
kill being sent again: such outcomes and groups carry the same deterministic ``event_id``
(``schemas.deterministic_event_id`` of the group id / candidate), and **consumers of
``agent.outcomes`` and ``learn.groups`` dedupe by ``event_id``** (the learner and the analytics
sink do). Faust's exactly-once mode (Kafka transactions) would avoid that but is not used: it is
the least-tested path of faust-streaming with aiokafka 0.14 against Kafka 4.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import faust
from aiokafka.client import AIOKafkaClient

from schemas.kafka_security import aiokafka_kwargs
from schemas.settings import Replication, Settings
from schemas.topics import BY_NAME, topic_name

log = logging.getLogger(__name__)


def faust_app_id(settings: Settings) -> str:
    return f"{settings.kafka.topic_prefix}{settings.streams.app_id}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def faust_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """``kafka.*`` security as Faust credentials: the aiokafka arguments every other client gets
    (``schemas.kafka_security``, which also rejects SASL without a user), in the shape Faust hands
    back to aiokafka."""
    kw = aiokafka_kwargs(settings.kafka)
    protocol, ssl_context = kw["security_protocol"], kw.get("ssl_context")
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(username=kw["sasl_plain_username"], password=kw["sasl_plain_password"],
                                     mechanism=kw["sasl_mechanism"], ssl_context=ssl_context)
    if ssl_context is not None:
        return faust.SSLCredentials(ssl_context)
    return None


@dataclass(frozen=True)
class TopicLayout:
    """What the worker's topics look like on this cluster."""

    partitions: int  # market.events', which the tables and the internal topic share
    action_partitions: int
    replication: int  # of the worker's own topics (changelogs, internal re-keying topic)


async def prepare_topics(client_kw: dict, market: str, internal: str, actions: str,
                         replication: Replication, changelogs: Mapping[str, str] | None = None) -> TopicLayout:
    """Partitions of ``market`` and of ``actions`` (the catalogue's count for one that does not
    exist yet), and the internal re-keying topic created with market's count: co-partitioning is
    what keeps a symbol's state on one worker. The worker's own topics are replicated as
    ``kafka.replication.streams`` says, resolved against this cluster's size: a changelog on one
    broker of a real cluster would lose the pending candidates and closed-group ids with it.
    ``client_kw``: aiokafka client arguments (``daemon.eventlog.connection.client_kwargs``).

    ``changelogs`` (changelog topic -> ``"market.events"`` or ``"agent.actions"``, whose
    partitions it takes) are created here too, compacted, and awaited in the cluster's metadata
    before the worker starts. Left to Faust, they are created as the worker starts, and an agent
    that writes a table before its consumer has seen the new changelog in the metadata crashes
    (``PartitionsMismatch``: "the changelog has 0 partitions"), which stalls the worker."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    client = AIOKafkaClient(**client_kw)
    await client.bootstrap()
    try:
        cluster = await client.fetch_all_metadata()
        counts = {name: len(cluster.partitions_for_topic(name) or ()) for name in (market, actions)}
        brokers = len(cluster.brokers())
    finally:
        await client.close()
    factor, min_insync = replication.resolve(brokers, "kafka.replication.streams")
    partitions = counts[market] or BY_NAME["market.events"].partitions
    action_partitions = counts[actions] or BY_NAME["agent.actions"].partitions
    counts = {"market.events": partitions, "agent.actions": action_partitions}
    wanted = {internal: (partitions, {})}
    for name, source in (changelogs or {}).items():
        wanted[name] = (counts[source], {"cleanup.policy": "compact"})
    admin = AIOKafkaAdminClient(**client_kw)
    await admin.start()
    try:
        for name, (n, configs) in wanted.items():
            try:
                await admin.create_topics([NewTopic(name, n, factor, topic_configs={
                    "min.insync.replicas": str(min_insync), **configs})])
            except TopicAlreadyExistsError:
                log.debug("topic %s exists", name)
    finally:
        await admin.close()
    await _until_in_metadata(client_kw, set(wanted))
    return TopicLayout(partitions, action_partitions, factor)


async def _until_in_metadata(client_kw: dict, names: set[str], timeout_s: float = 60.0) -> None:
    """Wait until the cluster's metadata lists every topic in ``names`` with its partitions."""
    client = AIOKafkaClient(**client_kw)
    await client.bootstrap()
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            cluster = await client.fetch_all_metadata()
            missing = sorted(n for n in names if not cluster.partitions_for_topic(n))
            if not missing:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"topics created but not in the cluster metadata after {timeout_s:.0f} s: {missing}")
            await asyncio.sleep(0.2)  # metadata propagation: poll the observed state
    finally:
        await client.close()


def create_app(settings: Settings, bootstrap: str, partitions: int, replication: int = 1) -> faust.App:
    """The App for these settings; ``partitions`` is market.events' count (tables and the
    internal topic must be co-partitioned with it); ``replication``: of the changelogs Faust
    creates."""
    app_id = faust_app_id(settings)
    datadir = Path(settings.data_dir) / "faust" / app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
    return faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        broker_credentials=faust_credentials(settings),
        store="memory://",  # changelog-backed; recovered from Kafka on start
        datadir=str(datadir),
        key_serializer="raw",
        value_serializer="raw",  # records are decoded by schemas.codec, so bad input can be dead-lettered
        topic_partitions=partitions,
        topic_replication_factor=replication,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        # heartbeats come from the consumer's own thread, so a slow record does not miss them
        broker_session_timeout=settings.streams.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.streams.session_timeout_s / 5),
        broker_max_poll_records=2000,
        # room for several fetches: a full stream queue sends faust's conductor down a slow path
        # (a task per record) and the fetcher pauses the partition until it drains
        stream_buffer_maxsize=16384,
        web_port=settings.streams.web_port or _free_port(),
        # web_host is only the URL Faust advertises; web_bind is what it listens on, and Faust's
        # own default for it is every interface
        web_host="127.0.0.1",
        web_bind=settings.streams.web_bind,
        autodiscover=False,
        table_cleanup_interval=3600.0,  # windows expire in event time, in the engine
    )


def build(settings: Settings, client_kw: dict) -> faust.App:
    """App + topology + agents, ready for ``faust.Worker``. ``client_kw``: the aiokafka client
    arguments, address included, that the daemon side resolved
    (``daemon.eventlog.connection.client_kwargs``): streams never imports daemon."""
    from streams import agents, topology

    prefix = settings.kafka.topic_prefix
    bootstrap = client_kw["bootstrap_servers"]
    layout = asyncio.run(prepare_topics(
        client_kw, topic_name("market.events", prefix), topology.internal_topic(settings),
        topic_name("agent.actions", prefix), settings.kafka.replication.streams,
        changelogs=topology.changelog_topics(settings)))
    app = create_app(settings, bootstrap, layout.partitions, layout.replication)
    topo = topology.declare(app, settings, layout.partitions, layout.action_partitions)
    agents.register(app, topo, lambda: topology.engine_for(topo, settings), settings.streams, client_kw)
    return app


def _await_chain(coro: object) -> list[str]:
    """Where a suspended coroutine waits, outermost first (a task's own stack stops at its
    first frame)."""
    out = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            out.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)
    return out


def _dump_tasks() -> None:
    """SIGUSR2: log where every asyncio task waits (what a worker that processes nothing waits on)."""
    lines = []
    for task in asyncio.all_tasks():
        lines.append(f"{task.get_name()}:")
        lines.extend(f"  {where}" for where in _await_chain(task.get_coro()))
    log.warning("asyncio tasks (SIGUSR2):\n%s", "\n".join(lines))


def run_worker(settings: Settings, client_kw: dict, loglevel: str = "warning") -> None:
    """Run the worker in this process until it is stopped (SIGINT/SIGTERM); SIGUSR2 logs the
    stacks of its asyncio tasks. ``client_kw``: as for ``build``."""
    app = build(settings, client_kw)

    @app.task
    async def dump_tasks_on_sigusr2() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, _dump_tasks)

    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
