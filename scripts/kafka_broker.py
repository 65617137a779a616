"""Runs the real Apache Kafka broker (KRaft) from Maven Central jars: one node, or three.

    python scripts/kafka_broker.py fetch [--version 4.1.1]      # download the jars (cached)
    python scripts/kafka_broker.py start DIR [--version 4.1.1]  # in the background; bootstrap
    python scripts/kafka_broker.py stop DIR         # stop it by PID
    python scripts/kafka_broker.py run              # foreground until Ctrl-C
    python scripts/kafka_broker.py cluster-start DIR [--nodes 3]   # print the bootstrap list
    python scripts/kafka_broker.py cluster-node DIR ID kill|term|start
    python scripts/kafka_broker.py cluster-stop DIR                 # every node, by PID

The jars are cached outside the work tree ($STREAMWORKER_CACHE, default
~/.cache/streamworker). The broker listens on 127.0.0.1 only, on free ports.
Readiness is the PLAINTEXT port accepting connections: Kafka opens it only
once the broker is unfenced. Standard library only, so tests, the demo and
CI use the same code.

The cluster (`start_cluster`) is for fault tests: combined broker+controller
nodes with a static quorum, replication 3 and min.insync.replicas 2, so one node
can be stopped (SIGKILL or SIGTERM) and started again on its own data dir while
the other two keep the quorum and every partition writable. Its readiness is
each node's port open *and* every running node's metadata listing exactly the
running brokers, read with a minimal Metadata v1 request (no client library).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scripts.tls_certs import TlsFiles

KAFKA_VERSION = "3.9.1"
#: Kafka 4.x, for what only it has: the KIP-848 consumer group protocol.
KAFKA4_VERSION = "4.1.1"
HERE = Path(__file__).resolve().parent
POM = HERE / "kafka" / "pom.xml"
#: Each version's jars and logging backend (4.x: log4j2; see the pom's comment).
POMS = {KAFKA_VERSION: POM, KAFKA4_VERSION: HERE / "kafka" / "pom-4.xml"}
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


def cache_dir(version: str = KAFKA_VERSION) -> Path:
    root = Path(os.environ.get("STREAMWORKER_CACHE", Path.home() / ".cache" / "streamworker"))
    return root / f"kafka-{version}"


def fetch_jars(version: str = KAFKA_VERSION) -> Path:
    """Copy kafka_2.13 and its runtime dependencies from Maven Central, once."""
    lib = cache_dir(version) / "lib"
    marker = lib / ".complete"
    if marker.exists():
        return lib
    lib.mkdir(parents=True, exist_ok=True)
    cmd = [
        "mvn", "-B", "-q", "-f", str(POMS[version]), "dependency:copy-dependencies",
        f"-DoutputDirectory={lib}", "-DincludeScope=runtime",
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    if not any(lib.glob("kafka_2.13-*.jar")):
        raise RuntimeError(f"maven finished but no kafka_2.13 jar is in {lib}")
    marker.touch()
    return lib


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster_id() -> str:
    # Kafka's format: URL-safe base64 of 16 random bytes, unpadded, not starting with '-'.
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


@dataclass
class Broker:
    workdir: Path
    port: int
    pid: int
    #: With `tls`: listener name (SSL, MTLS, SASL_SSL, WRONGHOST, OAUTH) -> its port.
    ports: dict[str, int] = field(default_factory=dict)

    def address(self, listener: str) -> str:
        return f"127.0.0.1:{self.ports[listener]}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_pid(self.pid)


def _properties(workdir: Path, port: int, controller_port: int, extra: dict[str, str]) -> str:
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(workdir / "data"),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "group.initial.rebalance.delay.ms": "0",
        "num.network.threads": "2",
        "num.io.threads": "2",
        "log.cleaner.dedupe.buffer.size": "16777216",
        **extra,
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def _java(lib: Path, workdir: Path, heap: list[str]) -> list[str]:
    # Kafka 4.x logs through log4j2 (its jars are in lib), 3.9 through reload4j.
    if any(lib.glob("log4j-core-*.jar")):
        logging = f"-Dlog4j2.configurationFile={workdir / 'log4j2.properties'}"
    else:
        logging = f"-Dlog4j.configuration=file:{workdir / 'log4j.properties'}"
    return [
        "java", *heap, logging,
        f"-Dkafka.logs.dir={workdir / 'logs'}",
        "-Djava.awt.headless=true",
        "-cp", f"{lib}/*",
    ]  # fmt: skip


#: Users of the SASL listener: PLAIN from the JAAS entries, SCRAM created at format time.
SASL_USERS = {"admin": "admin-secret", "alice": "alice-secret"}


def _sasl_properties(port: int, controller_port: int) -> dict[str, str]:
    users = " ".join(f'user_{u}="{p}"' for u, p in SASL_USERS.items())
    return {
        "listeners": f"SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"SASL_PLAINTEXT://127.0.0.1:{port}",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
        "inter.broker.listener.name": "SASL_PLAINTEXT",
        "sasl.enabled.mechanisms": "SCRAM-SHA-256,SCRAM-SHA-512,PLAIN",
        "sasl.mechanism.inter.broker.protocol": "PLAIN",
        "listener.name.sasl_plaintext.plain.sasl.jaas.config": (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="admin" password="{SASL_USERS["admin"]}" {users};'
        ),
        "listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
    }


def start(
    workdir: Path | None = None,
    extra: dict[str, str] | None = None,
    sasl: bool = False,
    port: int | None = None,
    tls: TlsFiles | None = None,
    version: str = KAFKA_VERSION,
) -> Broker:
    """Format a fresh KRaft log dir and start the broker; return once it accepts clients.

    With `sasl`, the client listener is SASL_PLAINTEXT with PLAIN, SCRAM-SHA-256 and
    SCRAM-SHA-512 for the users in SASL_USERS. `port` is the client port (default: a
    free one), for a broker that users and configs find at a known address. With `tls`
    (certificates from `scripts/tls_certs.py`), the PLAINTEXT listener stays and the
    listeners of `_tls_properties` are added beside it (`Broker.ports` names them).
    `version`: KAFKA_VERSION, or KAFKA4_VERSION (the same static-voter KRaft setup).
    """
    lib = fetch_jars(version)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="kafka-"))
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    port, controller_port = port or free_port(), free_port()
    props = workdir / "server.properties"
    settings = {**(_sasl_properties(port, controller_port) if sasl else {}), **(extra or {})}
    ports: dict[str, int] = {}
    if tls is not None:
        ports = dict(zip(TLS_LISTENERS, _free_ports(len(TLS_LISTENERS)), strict=True))
        settings = {**_tls_properties(port, controller_port, ports, tls), **settings}
    props.write_text(_properties(workdir, port, controller_port, settings))
    scram = []
    if sasl or tls is not None:
        for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
            for user, password in SASL_USERS.items():
                scram += ["--add-scram", f"{mechanism}=[name={user},password={password}]"]
    _write_log4j(workdir)
    small = ["-Xmx256m", "-XX:TieredStopAtLevel=1"]
    subprocess.run(
        [*_java(lib, workdir, small), "kafka.tools.StorageTool", "format",
         "-t", _cluster_id(), "-c", str(props), *scram],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    (workdir / "lib").write_text(str(lib))  # `restart` starts the same version
    broker = _launch(lib, workdir, port)
    broker.ports = ports
    return broker


#: The listeners `start(tls=...)` adds, and the security protocol of each.
TLS_LISTENERS = {
    "SSL": "SSL",  # one-way TLS: the server's certificate only
    "MTLS": "SSL",  # mutual TLS: a client certificate signed by the CA is required
    "SASL_SSL": "SASL_SSL",  # SCRAM over one-way TLS
    "WRONGHOST": "SSL",  # one-way TLS with a certificate for another host name
    "OAUTH": "SASL_PLAINTEXT",  # OAUTHBEARER, Kafka's unsecured (unsigned JWT) validator
}


def _tls_properties(
    port: int, controller_port: int, ports: dict[str, int], tls: TlsFiles
) -> dict[str, str]:
    """PEM keystores (Kafka reads them since 2.7) for every TLS listener, PLAINTEXT kept
    for the brokers' own traffic and for readiness."""
    names = {"PLAINTEXT": port, **ports}
    listeners = ",".join(f"{n}://127.0.0.1:{p}" for n, p in names.items())
    protocols = {"CONTROLLER": "PLAINTEXT", "PLAINTEXT": "PLAINTEXT", **TLS_LISTENERS}
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    return {
        "listeners": f"{listeners},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": listeners,
        "listener.security.protocol.map": ",".join(f"{k}:{v}" for k, v in protocols.items()),
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(tls.server),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(tls.ca),
        "listener.name.mtls.ssl.client.auth": "required",
        "listener.name.wronghost.ssl.keystore.type": "PEM",
        "listener.name.wronghost.ssl.keystore.location": str(tls.wrong_host),
        "listener.name.sasl_ssl.sasl.enabled.mechanisms": "SCRAM-SHA-256,SCRAM-SHA-512",
        "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": scram,
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": scram,
        "listener.name.oauth.sasl.enabled.mechanisms": "OAUTHBEARER",
        "listener.name.oauth.oauthbearer.sasl.jaas.config": (
            "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required "
            'unsecuredLoginStringClaim_sub="admin";'
        ),
        # A session ends when its token expires: a client must bring a fresh token.
        "listener.name.oauth.connections.max.reauth.ms": "3600000",
    }


def restart(workdir: Path) -> Broker:
    """Start again the broker `start` made in `workdir` (stopped since): same port, same data.

    For a broker that comes up after its clients: they know its address, and the topics
    and the group coordinator they need were made while it first ran.
    """
    port = int((workdir / "bootstrap").read_text().rpartition(":")[2])
    saved = workdir / "lib"
    lib = Path(saved.read_text()) if saved.exists() else fetch_jars()
    return _launch(lib, workdir, port)


def _launch(lib: Path, workdir: Path, port: int) -> Broker:
    props = workdir / "server.properties"
    heap = ["-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20"]
    with (workdir / "logs" / "stdout").open("ab") as out:
        proc = subprocess.Popen(
            [*_java(lib, workdir, heap), "kafka.Kafka", str(props)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (workdir / "broker.pid").write_text(str(proc.pid))
    (workdir / "bootstrap").write_text(f"127.0.0.1:{port}")
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (workdir / "logs" / "stdout").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"kafka exited with {proc.returncode} during start:\n{tail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return Broker(workdir, port, proc.pid)
        time.sleep(0.2)
    stop_pid(proc.pid)
    raise RuntimeError(f"kafka did not open 127.0.0.1:{port} within {START_TIMEOUT_S}s")


def stop_pid(pid: int) -> None:
    """SIGTERM, wait for a clean exit, then SIGKILL."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child: poll for existence
            done = 0
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        if done == pid:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# -- a three-node cluster for fault tests ---------------------------------------------------

CLUSTER_STATE = "cluster.json"
#: The JVM of one cluster node: three of them share two cores with the tests, so the heap is
#: small, the JIT stops at C1 (it starts sooner and competes less) and GC runs one thread.
CLUSTER_JVM = [
    "-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
    "-XX:ParallelGCThreads=1", "-XX:ConcGCThreads=1", "-XX:TieredStopAtLevel=1",
]  # fmt: skip


def _cluster_properties(
    node_id: int, nodes: list[ClusterNode], data_dir: Path, extra: dict[str, str]
) -> str:
    """One node's server.properties: every replication setting sized for three nodes.

    `broker.session.timeout.ms` is 6 s (Kafka's default is 9 s) so a killed broker is
    fenced, and its partitions get new leaders, within a test's patience. Automatic
    preferred-leader elections are off: the tests move leaders themselves, by stopping
    brokers, and an election of Kafka's own in the middle of a fault would blur what
    a test observed.
    """
    me = next(n for n in nodes if n.node_id == node_id)
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": ",".join(
            f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in nodes
        ),
        "listeners": f"PLAINTEXT://127.0.0.1:{me.port},CONTROLLER://127.0.0.1:{me.controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{me.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": "1",
        "default.replication.factor": str(min(3, len(nodes))),
        "min.insync.replicas": str(min(2, len(nodes))),
        "unclean.leader.election.enable": "false",
        "auto.create.topics.enable": "false",
        "auto.leader.rebalance.enable": "false",
        "offsets.topic.replication.factor": str(min(3, len(nodes))),
        "offsets.topic.num.partitions": "6",
        "transaction.state.log.replication.factor": str(min(3, len(nodes))),
        "transaction.state.log.min.isr": str(min(2, len(nodes))),
        "transaction.state.log.num.partitions": "3",
        "group.initial.rebalance.delay.ms": "0",
        "broker.session.timeout.ms": "6000",
        "broker.heartbeat.interval.ms": "1000",
        "num.network.threads": "2",
        "num.io.threads": "2",
        "num.replica.fetchers": "1",
        "background.threads": "2",
        "num.recovery.threads.per.data.dir": "1",
        "log.cleaner.threads": "1",
        "log.cleaner.dedupe.buffer.size": "16777216",
        **extra,
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def _write_log4j(workdir: Path) -> None:
    (workdir / "log4j.properties").write_text(
        "log4j.rootLogger=INFO, F\n"
        "log4j.appender.F=org.apache.log4j.FileAppender\n"
        "log4j.appender.F.File=${kafka.logs.dir}/server.log\n"
        "log4j.appender.F.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.F.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
    )
    (workdir / "log4j2.properties").write_text(
        "status=error\n"
        "appender.f.type=File\n"
        "appender.f.name=F\n"
        "appender.f.fileName=${sys:kafka.logs.dir}/server.log\n"
        "appender.f.layout.type=PatternLayout\n"
        "appender.f.layout.pattern=[%d] %p %m (%c)%n\n"
        "rootLogger.level=INFO\n"
        "rootLogger.appenderRef.f.ref=F\n"
    )


def _free_ports(count: int) -> list[int]:
    """Distinct free ports: all are held open at once, so none is handed out twice."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


# -- Metadata v1 over a plain socket: enough to see brokers, leaders and ISRs ---------------


@dataclass(frozen=True, slots=True)
class PartitionState:
    leader: int  # -1 while the partition has none
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Metadata:
    """What one broker believes: the live brokers (id -> port) and every partition."""

    brokers: dict[int, int]
    partitions: dict[tuple[str, int], PartitionState]

    def leaders(self, topic: str) -> dict[int, int]:
        return {p: s.leader for (t, p), s in self.partitions.items() if t == topic}


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self._data, self._at)
        self._at += struct.calcsize(fmt)
        return value

    def string(self) -> str | None:
        size = self.take(">h")
        if size < 0:
            return None
        text = self._data[self._at : self._at + size].decode()
        self._at += size
        return text

    def int32s(self) -> tuple[int, ...]:
        return tuple(self.take(">i") for _ in range(max(self.take(">i"), 0)))


def parse_metadata_v1(body: bytes) -> Metadata:
    """Decode a MetadataResponse v1 (after the size prefix): brokers, controller, topics."""
    r = _Reader(body)
    r.take(">i")  # correlation id
    brokers = {}
    for _ in range(r.take(">i")):
        node_id = r.take(">i")
        r.string()  # host: always 127.0.0.1 here
        brokers[node_id] = r.take(">i")
        r.string()  # rack
    r.take(">i")  # controller id: in KRaft a random live broker, of no use
    partitions = {}
    for _ in range(r.take(">i")):
        r.take(">h")  # topic error
        name = r.string() or ""
        r.take(">?")  # internal
        for _ in range(r.take(">i")):
            r.take(">h")  # partition error: LEADER_NOT_AVAILABLE shows as leader -1 too
            index, leader = r.take(">i"), r.take(">i")
            partitions[(name, index)] = PartitionState(leader, r.int32s(), r.int32s())
    return Metadata(brokers, partitions)


def fetch_metadata(port: int, timeout_s: float = 3.0) -> Metadata:
    """Ask the broker at 127.0.0.1:`port` for the metadata of every topic (Metadata v1)."""
    client_id = b"kafka_broker.py"
    request = struct.pack(">hhih", 3, 1, 1, len(client_id)) + client_id + struct.pack(">i", -1)
    with socket.create_connection(("127.0.0.1", port), timeout_s) as s:
        s.settimeout(timeout_s)
        s.sendall(struct.pack(">i", len(request)) + request)
        size = struct.unpack(">i", _recv_exactly(s, 4))[0]
        return parse_metadata_v1(_recv_exactly(s, size))


def _recv_exactly(s: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = s.recv(min(left, 1 << 16))
        if not chunk:
            raise ConnectionError("broker closed the connection mid-response")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# -- the cluster --------------------------------------------------------------------------


@dataclass
class ClusterNode:
    node_id: int
    port: int
    controller_port: int
    workdir: Path
    pid: int | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def properties(self) -> Path:
        return self.workdir / "server.properties"


@dataclass
class Cluster:
    """Three (or `len(nodes)`) combined KRaft nodes; stop and start any one by node id.

    Every process is tracked by PID (in memory, and in `workdir/cluster.json` for the
    CLI). A stopped node keeps its data dir, so a start is a restart: log recovery
    after SIGKILL, a clean load after SIGTERM, then catching up as a follower.
    """

    workdir: Path
    cluster_id: str
    nodes: list[ClusterNode]
    _procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)
    #: The Kafka release its nodes run (KAFKA4_VERSION: the KIP-848 group protocol).
    version: str = KAFKA_VERSION

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    @property
    def bootstrap_servers(self) -> list[str]:
        return [n.bootstrap for n in self.nodes]

    def node(self, node_id: int) -> ClusterNode:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(f"no node {node_id}; the nodes are {[n.node_id for n in self.nodes]}")

    def running(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.pid is not None]

    def pids(self) -> dict[int, int]:
        return {n.node_id: n.pid for n in self.nodes if n.pid is not None}

    # -- processes ------------------------------------------------------------------------
    def start_node(self, node_id: int, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start a stopped node on its own data dir; return once the cluster sees it."""
        node = self.node(node_id)
        if node.pid is not None:
            raise RuntimeError(f"node {node_id} is running (pid {node.pid})")
        self._launch(node)
        self.wait_ready(timeout_s)

    def stop_node(
        self, node_id: int, sig: int = signal.SIGKILL, timeout_s: float = STOP_TIMEOUT_S
    ) -> None:
        """Send `sig` to the node's JVM and wait until the process is gone.

        SIGKILL is a crash: nothing is flushed or handed over. SIGTERM is Kafka's
        controlled shutdown: leadership moves to the other replicas first. A node that
        has not exited `timeout_s` after SIGTERM is killed.
        """
        node = self.node(node_id)
        if node.pid is None:
            return
        _signal_and_wait(node.pid, sig, timeout_s, self._procs.pop(node_id, None), node)
        node.pid = None
        self._save()

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop every node by PID: signal all at once, then wait (SIGKILL past the timeout)."""
        running = [(n, n.pid) for n in self.nodes if n.pid is not None]
        for node, pid in running:
            if node.node_id in self._procs or _is_node(pid, node):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        for node, pid in running:
            _signal_and_wait(pid, sig, timeout_s, self._procs.pop(node.node_id, None), node)
            node.pid = None
        self._save()

    def _launch(self, node: ClusterNode) -> None:
        with (node.workdir / "logs" / "stdout").open("ab") as out:
            proc = subprocess.Popen(
                [*_java(fetch_jars(self.version), node.workdir, CLUSTER_JVM), "kafka.Kafka",
                 str(node.properties)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self._procs[node.node_id] = proc
        node.pid = proc.pid
        self._save()

    # -- readiness ------------------------------------------------------------------------
    def metadata(self, node_id: int | None = None) -> Metadata:
        """The metadata one node (by default the first running one) holds now."""
        node = self.node(node_id) if node_id is not None else self.running()[0]
        return fetch_metadata(node.port)

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until each running node accepts clients and lists exactly the running brokers.

        A stopped node stays listed until the controller fences it (after
        `broker.session.timeout.ms`), so this also waits out that, and a started
        node counts only once every other node has seen it register.
        """
        expected = {n.node_id for n in self.running()}
        self._wait(
            lambda: all(set(fetch_metadata(n.port).brokers) == expected for n in self.running()),
            timeout_s,
            f"every running node to list brokers {sorted(expected)}",
        )

    def wait_in_sync(
        self, topics: list[str] | None = None, timeout_s: float = START_TIMEOUT_S
    ) -> None:
        """Until every partition (of `topics`, or of all topics) has a leader and a full ISR."""

        def in_sync() -> bool:
            for n in self.running():
                for (topic, _), state in fetch_metadata(n.port).partitions.items():
                    if topics is not None and topic not in topics:
                        continue
                    if state.leader < 0 or set(state.isr) != set(state.replicas):
                        return False
            return True

        self._wait(in_sync, timeout_s, f"full ISRs for {topics or 'every topic'}")

    def _wait(self, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            for node_id, proc in self._procs.items():
                if proc.poll() is not None:
                    log = self.node(node_id).workdir / "logs" / "stdout"
                    tail = log.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"node {node_id} exited with {proc.returncode}:\n{tail}")
            with contextlib.suppress(OSError, struct.error):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout_s}s waiting for {what}")
            time.sleep(0.2)

    # -- state for the CLI ----------------------------------------------------------------
    def _save(self) -> None:
        state = {
            "cluster_id": self.cluster_id,
            "nodes": [
                {"node_id": n.node_id, "port": n.port, "controller_port": n.controller_port,
                 "workdir": str(n.workdir), "pid": n.pid}
                for n in self.nodes
            ],
        }  # fmt: skip
        (self.workdir / CLUSTER_STATE).write_text(json.dumps(state, indent=2) + "\n")

    @classmethod
    def load(cls, workdir: Path) -> Cluster:
        """The cluster a `cluster-start` left in `workdir` (PIDs from its state file)."""
        state = json.loads((workdir / CLUSTER_STATE).read_text())
        nodes = [
            ClusterNode(n["node_id"], n["port"], n["controller_port"], Path(n["workdir"]), n["pid"])
            for n in state["nodes"]
        ]
        return cls(workdir, state["cluster_id"], nodes)


def start_cluster(
    workdir: Path | None = None,
    nodes: int = 3,
    extra: dict[str, str] | None = None,
    timeout_s: float = 180.0,
    version: str = KAFKA_VERSION,
) -> Cluster:
    """Format `nodes` combined broker+controller nodes with one cluster id and start them.

    All nodes start at once (the controllers need a quorum before any broker can
    register); this returns when every node accepts clients and every node's
    metadata lists all of them. On failure every started process is stopped.
    """
    lib = fetch_jars(version)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="kafka-cluster-"))
    ports = _free_ports(2 * nodes)
    members = [
        ClusterNode(i + 1, ports[2 * i], ports[2 * i + 1], workdir / f"node-{i + 1}")
        for i in range(nodes)
    ]
    cluster = Cluster(workdir, _cluster_id(), members, version=version)
    formats = []
    for node in members:
        (node.workdir / "logs").mkdir(parents=True, exist_ok=True)
        node.properties.write_text(
            _cluster_properties(node.node_id, members, node.workdir / "data", extra or {})
        )
        _write_log4j(node.workdir)
        small = ["-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]
        fmt = ["kafka.tools.StorageTool", "format", "-t", cluster.cluster_id]
        command = [*_java(lib, node.workdir, small), *fmt, "-c", str(node.properties)]
        formats.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))
    if any(proc.wait() != 0 for proc in formats):
        raise RuntimeError(f"kafka-storage format failed in {workdir}")
    try:
        for node in members:
            cluster._launch(node)
        cluster.wait_ready(timeout_s)
    except BaseException:
        cluster.stop(signal.SIGKILL)
        raise
    return cluster


def _is_node(pid: int | None, node: ClusterNode) -> bool:
    """The PID still belongs to this node's JVM (not to a process that reused the number)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"kafka.Kafka" in cmdline and str(node.properties).encode() in cmdline


def _signal_and_wait(
    pid: int,
    sig: int,
    timeout_s: float,
    proc: subprocess.Popen[bytes] | None,
    node: ClusterNode,
) -> None:
    """Signal `pid` (if it is still the node's JVM) and wait until it is gone; a process
    that outlives `timeout_s` is killed. Our own children are reaped, others polled."""
    if proc is None and not _is_node(pid, node):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return
        elif not _is_node(pid, node):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if proc is not None:
        proc.wait(STOP_TIMEOUT_S)
    else:
        while _is_node(pid, node) and time.monotonic() < deadline + STOP_TIMEOUT_S:
            time.sleep(0.05)


def _cluster_cli(args: argparse.Namespace) -> int:
    if args.cmd == "cluster-start":
        print(start_cluster(args.dir, args.nodes).bootstrap)
        return 0
    cluster = Cluster.load(args.dir)
    if args.cmd == "cluster-stop":
        cluster.stop()
    elif args.action == "start":
        cluster.start_node(args.node_id)
    else:
        sig = signal.SIGKILL if args.action == "kill" else signal.SIGTERM
        cluster.stop_node(args.node_id, sig)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch")
    f.add_argument("--version", default=KAFKA_VERSION, choices=sorted(POMS))
    s = sub.add_parser("start", help="start a broker in DIR in the background; prints its address")
    s.add_argument("dir", type=Path)
    s.add_argument("--version", default=KAFKA_VERSION, choices=sorted(POMS))
    s.add_argument("--port", type=int, help="client port (default: a free one)")
    t = sub.add_parser("stop", help="stop the broker started in DIR")
    t.add_argument("dir", type=Path)
    r = sub.add_parser("run", help="a broker in the foreground until Ctrl-C")
    r.add_argument("--port", type=int, help="client port (default: a free one)")
    cs = sub.add_parser("cluster-start", help="three nodes in DIR; prints the bootstrap list")
    cs.add_argument("dir", type=Path)
    cs.add_argument("--nodes", type=int, default=3)
    cn = sub.add_parser("cluster-node", help="stop (kill = SIGKILL, term = SIGTERM) or start one")
    cn.add_argument("dir", type=Path)
    cn.add_argument("node_id", type=int)
    cn.add_argument("action", choices=["kill", "term", "start"])
    ct = sub.add_parser("cluster-stop", help="stop every node of the cluster in DIR by PID")
    ct.add_argument("dir", type=Path)
    args = p.parse_args()
    if args.cmd.startswith("cluster-"):
        return _cluster_cli(args)
    if args.cmd == "fetch":
        print(fetch_jars(args.version))
    elif args.cmd == "start":
        print(start(args.dir, port=args.port, version=args.version).bootstrap)
    elif args.cmd == "stop":
        pidfile = args.dir / "broker.pid"
        if pidfile.exists():
            stop_pid(int(pidfile.read_text()))
            pidfile.unlink()
    else:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        broker = start(port=args.port)
        print(f"kafka {KAFKA_VERSION} ready at {broker.bootstrap} (Ctrl-C stops it)", flush=True)
        try:
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        finally:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
