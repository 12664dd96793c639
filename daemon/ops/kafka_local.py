"""A single-node Apache Kafka (KRaft) broker on 127.0.0.1 for development and tests.

The jars come from Maven (``kafka/pom.xml``) into ``.cache/kafka/libs``; ``fetch_jars`` runs
Maven once and is a no-op afterwards. ``start`` formats KRaft storage under the data folder,
starts the broker on free ports, waits until it answers a metadata request, and writes its
bootstrap address and PID to ``<data_dir>/kafka/broker.json``, where every other command looks
for it. ``stop`` stops exactly the process it started, by PID, and returns once it is gone.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import asdict
from pathlib import Path

from daemon.eventlog.broker_address import BrokerError, BrokerInfo, broker_answers, read_state, state_file, status
from daemon.procs import pid_alive

REPO_ROOT = Path(__file__).resolve().parents[2]
POM = REPO_ROOT / "kafka" / "pom.xml"
DEFAULT_LIBS = REPO_ROOT / ".cache" / "kafka" / "libs"

_LOG4J2 = """\
Configuration:
  status: warn
  Appenders:
    File:
      name: file
      fileName: "{log}"
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: info
      AppenderRef:
        - ref: file
    Logger:
      - name: kafka.request.logger
        level: warn
      - name: org.apache.kafka.storage
        level: warn
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int | None) -> bool:
    if not port:
        return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def fetch_jars(libs: Path = DEFAULT_LIBS) -> Path:
    """Fetch the Kafka jars with Maven once; later calls find them and return at once."""
    marker = libs / ".complete"
    if marker.exists():
        return libs
    libs.mkdir(parents=True, exist_ok=True)
    cmd = ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
           f"-DoutputDirectory={libs}", "-DincludeScope=runtime"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BrokerError(f"maven could not fetch the Kafka jars: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    marker.write_text("ok\n")
    return libs


def start(data_dir: Path, *, libs: Path = DEFAULT_LIBS, port: int | None = None,
          heap: str = "512m", timeout: float = 60.0) -> BrokerInfo:
    """Start the broker unless this data folder's broker already runs; return its address."""
    data_dir = Path(data_dir).resolve()
    running = status(data_dir)
    if running is not None and broker_answers(running.bootstrap):
        return running
    fetch_jars(libs)
    kdir = data_dir / "kafka"
    logs = kdir / "logs"
    kdir.mkdir(parents=True, exist_ok=True)
    logs.mkdir(exist_ok=True)
    # a restarted broker keeps its ports when it can, so clients that hold the old bootstrap
    # address reconnect to it (the fault-injection suite restarts the broker under load)
    ports_file = kdir / "ports.json"
    previous = json.loads(ports_file.read_text()) if ports_file.exists() else {}
    port = port or (previous.get("port") if _port_free(previous.get("port")) else None) or _free_port()
    cport = previous.get("controller") if _port_free(previous.get("controller")) else None
    while cport is None or cport == port:
        cport = _free_port()
    ports_file.write_text(json.dumps({"port": port, "controller": cport}))
    log_dirs = kdir / "data"
    props = kdir / "server.properties"
    props.write_text("\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{cport}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        f"log.dirs={log_dirs}",
        "num.partitions=3",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=10",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=10",
        # tests create consumer groups constantly; the default 3 s delay is pure waiting
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=true",
        "log.segment.bytes=67108864",
        "",
    ]))
    log4j = kdir / "log4j2.yaml"
    log4j.write_text(_LOG4J2.format(log=logs / "server.log"))
    classpath = f"{libs}/*"
    java = ["java", f"-Xmx{heap}", f"-Xms{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}", f"-Dkafka.logs.dir={logs}", "-cp", classpath]
    if not (log_dirs / "meta.properties").exists():
        cluster_id = random_cluster_id()
        fmt = subprocess.run(java + ["kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)],
                             capture_output=True, text=True)
        if fmt.returncode != 0:
            raise BrokerError(f"formatting KRaft storage failed: {fmt.stdout[-1500:]}{fmt.stderr[-1500:]}")
    out = open(logs / "stdout.log", "ab")
    proc = subprocess.Popen(java + ["kafka.Kafka", str(props)], stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, cwd=kdir)
    bootstrap = f"127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerError(f"the broker exited with {proc.returncode}; see {logs / 'server.log'}:\n"
                              + _tail(logs / "server.log"))
        if broker_answers(bootstrap, timeout=1.0) and _metadata_ready(bootstrap):
            info = BrokerInfo(bootstrap=bootstrap, pid=proc.pid, controller_port=cport,
                              data_dir=str(data_dir), started_at=time.time())
            state_file(data_dir).write_text(json.dumps(asdict(info)))
            return info
        time.sleep(0.2)
    proc.kill()
    raise BrokerError(f"the broker did not answer within {timeout:.0f} s; see {logs / 'server.log'}")


def _metadata_ready(bootstrap: str) -> bool:
    """The broker lists itself in metadata once KRaft has elected the controller."""
    try:
        from aiokafka.admin import AIOKafkaAdminClient  # noqa: F401  (import check only)
    except ImportError:
        return True
    import asyncio

    async def probe() -> bool:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        try:
            await admin.start()
            await admin.list_topics()
            return True
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"; the caller retries
            return False
        finally:
            await admin.close()

    return asyncio.run(probe())


def random_cluster_id() -> str:
    """A KRaft cluster id: a random UUID in URL-safe base64, as Kafka writes them. One in 64 of
    those starts with "-", which kafka-storage's argument parser takes for an option (measured:
    "argument --cluster-id/-t: expected one argument"); like Kafka's own Uuid.randomUuid, draw
    again."""
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def stop(data_dir: Path, timeout: float = 30.0) -> bool:
    """Stop the broker this data folder started (SIGTERM, then SIGKILL). False if none ran."""
    info = read_state(data_dir)
    if info is None:
        return False
    stopped = False
    if pid_alive(info.pid):
        os.kill(info.pid, signal.SIGTERM)
        if not _gone_within(info.pid, timeout):
            os.kill(info.pid, signal.SIGKILL)
            # returns only once the process is gone, so a check right after (.ci/run's) is exact
            if not _gone_within(info.pid, 10.0):
                raise BrokerError(f"the broker (pid {info.pid}) survived SIGKILL")
        stopped = True
    state_file(data_dir).unlink(missing_ok=True)
    return stopped


def _gone_within(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)  # polling interval of a deadline loop
    return True
