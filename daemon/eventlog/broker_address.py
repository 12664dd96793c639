"""Where the broker is: the configured bootstrap, else the one a local broker wrote to
``<data_dir>/kafka/broker.json`` when it started (``daemon.ops.kafka_local`` runs that broker;
every Kafka client only needs to find it). Also whether an address answers as a Kafka broker.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from daemon.errors import EigenloopError
from daemon.procs import pid_alive


class BrokerError(EigenloopError):
    """The local broker could not be fetched, started or reached."""

    retriable = True  # a broker that is away (restarting, not started yet) comes back


@dataclass
class BrokerInfo:
    bootstrap: str
    pid: int
    controller_port: int
    data_dir: str
    started_at: float

    @property
    def port(self) -> int:
        return int(self.bootstrap.rsplit(":", 1)[1])


def state_file(data_dir: Path) -> Path:
    return Path(data_dir) / "kafka" / "broker.json"


def read_state(data_dir: Path) -> BrokerInfo | None:
    path = state_file(data_dir)
    if not path.exists():
        return None
    return BrokerInfo(**json.loads(path.read_text()))


def broker_answers(bootstrap: str, timeout: float = 2.0) -> bool:
    """True if the broker accepts a TCP connection and answers an ApiVersions request."""
    host, port = bootstrap.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as s:
            # ApiVersions v0 request: size, api_key=18, api_version=0, correlation_id=1, client_id=""
            body = (18).to_bytes(2, "big") + (0).to_bytes(2, "big") + (1).to_bytes(4, "big") + (0).to_bytes(2, "big")
            s.sendall(len(body).to_bytes(4, "big") + body)
            s.settimeout(timeout)
            head = s.recv(4)
            return len(head) == 4
    except OSError:
        return False


def status(data_dir: Path) -> BrokerInfo | None:
    """The running broker this data folder started, or None."""
    info = read_state(data_dir)
    if info is None or not pid_alive(info.pid):
        return None
    return info


def resolve_bootstrap(configured: str | None, data_dir: Path) -> str:
    """The configured bootstrap, else the local broker's; a clear error if there is neither."""
    if configured:
        return configured
    env = os.environ.get("EIGENLOOP_KAFKA_BOOTSTRAP")
    if env:
        return env
    info = status(Path(data_dir))
    if info is None:
        raise BrokerError("no Kafka broker configured and no local broker running: "
                          "run `eigenloop kafka start` or set EIGENLOOP_KAFKA__BOOTSTRAP")
    return info.bootstrap
