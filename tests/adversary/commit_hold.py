"""A broker of the test's own behind a proxy that can hold a group's offset commits.

The fault is at the boundary: every client (the worker's, the test's) reaches the
broker through the proxy, because the broker advertises the proxy's port. The proxy
reads the client's requests frame by frame and, while armed, holds each OffsetCommit
(api key 8) before it reaches the broker, and from then on every request of the same
client id (its heartbeats, fetches): the worker is cut off from the broker from inside
its commit. The test learns so (`wait_held`), does its fault then (waits for the group
to expire the member, freezes the broker with SIGSTOP), and lets the requests go
(`release`), or drops them with their connections (`drop`: a connection reset inside
the commit; the client retries on a new one). The other clients' requests pass untouched.

Armed `by_connection`, only the connection that carried the commit is held (a TCP
connection stalled, as by retransmission back-off, while the client's others work): the
client's fetches and its producers' transactions go on, and what was held reaches the
broker after them on `release`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from scripts import kafka_broker

OFFSET_COMMIT = 8


@dataclass
class CommitHold:
    """Armed: the next OffsetCommit requests wait in the proxy until `release`."""

    armed: bool = False
    #: The client id of each commit held so far.
    seen: list[str] = field(default_factory=list)
    #: Client ids cut off since their commit was held.
    cut: set[str] = field(default_factory=set)
    _held: threading.Event = field(default_factory=threading.Event)
    _go: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: The held requests are dropped, their connections closed, instead of forwarded.
    _dropping: bool = False
    #: Only the connection that carried the commit is cut off, not its client's others.
    _by_connection: bool = False

    def arm(self, by_connection: bool = False) -> None:
        self._by_connection = by_connection
        self._dropping = False
        self._go.clear()
        self._held.clear()
        self.armed = True

    def wait_held(self, timeout_s: float) -> str:
        """The client id of the first commit held since `arm`."""
        if not self._held.wait(timeout_s):
            raise AssertionError(f"no offset commit in {timeout_s}s")
        return self.seen[-1]

    def release(self) -> None:
        self.armed = False
        self.cut.clear()
        self._go.set()

    def drop(self) -> None:
        """As `release`, but what was held is lost with its connection (never forwarded)."""
        self._dropping = True
        self.release()

    def gate(self, api_key: int, client_id: str, connection: str = "") -> bool:
        """On a proxy thread, before a request is forwarded: False if it must be dropped."""
        cut_off = connection if self._by_connection else client_id
        if not self.armed or (api_key != OFFSET_COMMIT and cut_off not in self.cut):
            return True
        if self._by_connection and self.cut and cut_off not in self.cut:
            return True  # another connection's commit: only the first one is held
        with self._lock:
            if api_key == OFFSET_COMMIT:
                self.seen.append(client_id)
            self.cut.add(cut_off)
        self._held.set()
        self._go.wait(120)
        return not self._dropping


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _pump_requests(src: socket.socket, dst: socket.socket, hold: CommitHold) -> None:
    connection = str(src.getpeername())
    with contextlib.suppress(OSError, ConnectionError):
        while True:
            head = _read(src, 4)
            body = _read(src, struct.unpack(">i", head)[0])
            api_key = struct.unpack(">h", body[:2])[0]
            length = struct.unpack(">h", body[8:10])[0]
            client_id = body[10 : 10 + max(length, 0)].decode(errors="replace")
            if not hold.gate(api_key, client_id, connection):
                break
            dst.sendall(head + body)
    _close(src, dst)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    _close(src, dst)


def _close(*socks: socket.socket) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)


@dataclass
class HeldBroker:
    bootstrap: str
    pid: int
    hold: CommitHold

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)


@contextlib.contextmanager
def held_broker(workdir: Path, version: str = kafka_broker.KAFKA_VERSION) -> Iterator[HeldBroker]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    proxy_port = server.getsockname()[1]
    broker = kafka_broker.start(
        workdir, extra={"advertised.listeners": f"PLAINTEXT://127.0.0.1:{proxy_port}"},
        version=version,
    )  # fmt: skip
    hold = CommitHold()
    kept: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                upstream = socket.create_connection(("127.0.0.1", broker.port))
                kept.extend((conn, upstream))
                threading.Thread(
                    target=_pump_requests, args=(conn, upstream, hold), daemon=True
                ).start()
                threading.Thread(target=_pump, args=(upstream, conn), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield HeldBroker(f"127.0.0.1:{proxy_port}", broker.pid, hold)
    finally:
        hold.release()
        with contextlib.suppress(ProcessLookupError):
            os.kill(broker.pid, signal.SIGCONT)
        broker.stop()
        server.close()
        for conn in kept:
            with contextlib.suppress(OSError):
                conn.close()
