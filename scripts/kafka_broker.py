"""Runs the real Apache Kafka broker (KRaft, one combined node) from Maven Central jars.

    python scripts/kafka_broker.py fetch            # download the jars (cached)
    python scripts/kafka_broker.py start DIR        # start in the background, print bootstrap
    python scripts/kafka_broker.py stop DIR         # stop it by PID
    python scripts/kafka_broker.py run              # foreground until Ctrl-C

The jars are cached outside the work tree ($STREAMWORKER_CACHE, default
~/.cache/streamworker). The broker listens on 127.0.0.1 only, on free ports.
Readiness is the PLAINTEXT port accepting connections: Kafka opens it only
once the broker is unfenced. Standard library only, so tests, the demo and
CI use the same code.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

KAFKA_VERSION = "3.9.1"
HERE = Path(__file__).resolve().parent
POM = HERE / "kafka" / "pom.xml"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


def cache_dir() -> Path:
    root = Path(os.environ.get("STREAMWORKER_CACHE", Path.home() / ".cache" / "streamworker"))
    return root / f"kafka-{KAFKA_VERSION}"


def fetch_jars() -> Path:
    """Copy kafka_2.13 and its runtime dependencies from Maven Central, once."""
    lib = cache_dir() / "lib"
    marker = lib / ".complete"
    if marker.exists():
        return lib
    lib.mkdir(parents=True, exist_ok=True)
    cmd = [
        "mvn", "-B", "-q", "-f", str(POM), "dependency:copy-dependencies",
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
    return [
        "java", *heap,
        f"-Dlog4j.configuration=file:{workdir / 'log4j.properties'}",
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
    workdir: Path | None = None, extra: dict[str, str] | None = None, sasl: bool = False
) -> Broker:
    """Format a fresh KRaft log dir and start the broker; return once it accepts clients.

    With `sasl`, the client listener is SASL_PLAINTEXT with PLAIN, SCRAM-SHA-256 and
    SCRAM-SHA-512 for the users in SASL_USERS.
    """
    lib = fetch_jars()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="kafka-"))
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    port, controller_port = free_port(), free_port()
    props = workdir / "server.properties"
    settings = {**(_sasl_properties(port, controller_port) if sasl else {}), **(extra or {})}
    props.write_text(_properties(workdir, port, controller_port, settings))
    scram = []
    if sasl:
        for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
            for user, password in SASL_USERS.items():
                scram += ["--add-scram", f"{mechanism}=[name={user},password={password}]"]
    (workdir / "log4j.properties").write_text(
        "log4j.rootLogger=INFO, F\n"
        "log4j.appender.F=org.apache.log4j.FileAppender\n"
        "log4j.appender.F.File=${kafka.logs.dir}/server.log\n"
        "log4j.appender.F.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.F.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
    )
    small = ["-Xmx256m", "-XX:TieredStopAtLevel=1"]
    subprocess.run(
        [*_java(lib, workdir, small), "kafka.tools.StorageTool", "format",
         "-t", _cluster_id(), "-c", str(props), *scram],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    heap = ["-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20"]
    with (workdir / "logs" / "stdout").open("wb") as out:
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch")
    s = sub.add_parser("start")
    s.add_argument("dir", type=Path)
    t = sub.add_parser("stop")
    t.add_argument("dir", type=Path)
    sub.add_parser("run")
    args = p.parse_args()
    if args.cmd == "fetch":
        print(fetch_jars())
    elif args.cmd == "start":
        print(start(args.dir).bootstrap)
    elif args.cmd == "stop":
        pidfile = args.dir / "broker.pid"
        if pidfile.exists():
            stop_pid(int(pidfile.read_text()))
            pidfile.unlink()
    else:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        broker = start()
        print(f"kafka {KAFKA_VERSION} ready at {broker.bootstrap} (Ctrl-C stops it)", flush=True)
        try:
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        finally:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
