"""What the fault tests drive and watch, each through a public surface only.

- `PacedProducer`: keyed IoT readings at a fixed rate with acks=all and idempotence,
  recording each acknowledged record's partition and offset (the checker's "produced").
- `WorkerProcess`: `python -m worker run --config FILE` as a child process, started in
  the test's directory (where the recording handler is), logs kept to files.
- `ReadinessProbe`: polls the worker's `/readyz` and keeps every answer.
- `CommitPoller`: reads the group's committed offsets from the brokers, stamped with
  the time each answer arrived (the checker's "snapshots").

The producer, the probe and the poller run on threads of their own (the clients on
their own event loops), so they keep working and observing while the test's thread
blocks on stopping or starting a broker. Every wait is bounded by a deadline.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaTimeoutError

from tests.faults.checker import CommitSnapshot, Handled, Produced, parse_handled

HERE = Path(__file__).resolve().parent


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll `predicate` until it holds; return how long that took, or fail naming `what`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


# -- broker-side helpers ------------------------------------------------------------------


def create_topic(servers: list[str], name: str, partitions: int, replication: int) -> None:
    async def go() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=servers)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, partitions, replication)])
        finally:
            await admin.close()

    asyncio.run(go())


def end_offsets(servers: list[str], topic: str, partitions: int) -> dict[int, int]:
    async def go() -> dict[int, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=servers)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            return {tp.partition: end for tp, end in (await consumer.end_offsets(tps)).items()}
        finally:
            await consumer.stop()

    return asyncio.run(go())


def find_coordinator(servers: list[str], group: str) -> int | None:
    """The node id of the group's coordinator now, or None while there is none."""

    async def go() -> int | None:
        admin = AIOKafkaAdminClient(bootstrap_servers=servers, request_timeout_ms=3000)
        await admin.start()
        try:
            return await asyncio.wait_for(admin.find_coordinator(group), 5)
        except Exception:  # no coordinator yet, or the asked broker is the one down
            return None
        finally:
            await admin.close()

    return asyncio.run(go())


# -- the producer -------------------------------------------------------------------------


class PacedProducer(threading.Thread):
    """`count` readings from `devices` devices at `rate` per second, bounded by `max_s`.

    Each value is `{"device_id": K, "seq": N, ...}` keyed by K, N counting per device.
    Idempotence keeps each device's readings in seq order in the log across the
    retries a broker fault causes (the checker verifies that too).
    """

    def __init__(
        self,
        servers: list[str],
        topic: str,
        count: int,
        rate: float = 1000.0,
        devices: int = 40,
        max_s: float = 90.0,
    ) -> None:
        super().__init__(name="paced-producer", daemon=True)
        self._servers, self._topic = servers, topic
        self._count, self._rate, self._devices, self._max_s = count, rate, devices, max_s
        self._lock = threading.Lock()
        self._acked: list[Produced] = []
        self._acked_at: dict[tuple[int, int], float] = {}  # (partition, offset) -> monotonic
        self.failures: list[str] = []
        self.sent = 0
        #: Sends refused because the buffer stayed full (a broker down); each retried.
        self.send_timeouts = 0

    @property
    def acked(self) -> list[Produced]:
        with self._lock:
            return list(self._acked)

    @property
    def acked_at(self) -> dict[tuple[int, int], float]:
        """When each acknowledged record's ack arrived (monotonic): it was readable since."""
        with self._lock:
            return dict(self._acked_at)

    def acked_count(self) -> int:
        with self._lock:
            return len(self._acked)

    def run(self) -> None:
        asyncio.run(self._produce())

    async def _produce(self) -> None:
        """A pacer feeds one queue per device; one task per device sends its readings.

        aiokafka's `send` waits while its partition's batch is full, and a partition
        whose leader is down stays full until a new leader takes over; one sender per
        device keeps that wait on the devices of that partition, while each device's
        readings still go out strictly in seq order.
        """
        producer = AIOKafkaProducer(
            bootstrap_servers=self._servers,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            request_timeout_ms=30_000,
            retry_backoff_ms=100,
        )
        await producer.start()
        queues: dict[str, asyncio.Queue[tuple[int, bytes] | None]] = {
            f"dev-{d:02d}": asyncio.Queue() for d in range(self._devices)
        }
        pending: set[asyncio.Future[object]] = set()  # a soak sends millions: keep the open

        async def sender(device: str, queue: asyncio.Queue[tuple[int, bytes] | None]) -> None:
            while (item := await queue.get()) is not None:
                seq, value = item
                while True:  # a broker down long enough fills the buffer: wait, in order
                    try:
                        future = await producer.send(self._topic, value, key=device.encode())
                        break
                    except KafkaTimeoutError:
                        self.send_timeouts += 1
                future.add_done_callback(self._on_ack(device, seq))
                pending.add(future)
                future.add_done_callback(pending.discard)

        senders = [asyncio.create_task(sender(d, q)) for d, q in queues.items()]
        seq: dict[str, int] = defaultdict(int)
        start = time.monotonic()
        try:
            for i in range(self._count):
                if time.monotonic() - start > self._max_s:
                    self.failures.append(f"stopped at {i}: over {self._max_s}s")
                    break
                device = f"dev-{i % self._devices:02d}"
                value = {"device_id": device, "seq": seq[device], "temp_c": 20 + i % 7,
                         "ts": time.time()}  # fmt: skip
                queues[device].put_nowait((seq[device], json.dumps(value).encode()))
                seq[device] += 1
                self.sent += 1
                ahead = (i + 1) / self._rate - (time.monotonic() - start)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            for queue in queues.values():
                queue.put_nowait(None)
            await asyncio.gather(*senders)
            await asyncio.gather(*pending, return_exceptions=True)
        finally:
            for task in senders:
                task.cancel()
            await producer.stop()

    def _on_ack(self, device: str, seq: int) -> Callable[[asyncio.Future[object]], None]:
        def done(future: asyncio.Future[object]) -> None:
            if future.cancelled() or future.exception() is not None:
                self.failures.append(f"{device}/{seq}: {future.exception()!r}")
                return
            meta = future.result()
            record = Produced(device, seq, meta.partition, meta.offset)  # type: ignore[attr-defined]
            with self._lock:
                self._acked.append(record)
                self._acked_at[(record.partition, record.offset)] = time.monotonic()

        return done


# -- the worker ---------------------------------------------------------------------------


def write_worker_config(
    path: Path, servers: list[str], topic: str, batch_size: int = 100, window_ms: int = 50
) -> Path:
    """The worker's TOML; the group id comes with `--set` at start."""
    path.write_text(
        "[source]\n"
        f"bootstrap_servers = {json.dumps(servers)}\n"
        f"topics = [{json.dumps(topic)}]\n"
        "session_timeout_ms = 6000\n"
        "heartbeat_interval_ms = 1000\n"
        "[batching]\n"
        f"batch_size = {batch_size}\n"
        f"maximum_batching_window_ms = {window_ms}\n"
        "[handler]\n"
        'target = "fault_handler:handle"\n'
        "timeout_s = 30\n"
        "[errors]\n"
        "retry_backoff_ms = [10, 200]\n"
        "[metrics]\n"
        'listen = "127.0.0.1:0"\n'
    )
    return path


def install_handler(workdir: Path) -> None:
    """Put the recording handler where `handler.target = "fault_handler:handle"` finds it."""
    (workdir / "fault_handler.py").write_text((HERE / "fault_handler.py").read_text())


class WorkerProcess:
    """One `python -m worker run` in `workdir`; stdout (JSON log lines) and stderr to files."""

    def __init__(self, workdir: Path, config: Path, group: str, env: dict[str, str]) -> None:
        n = len(list(workdir.glob("worker-*.out")))
        self.out_path = workdir / f"worker-{n}.out"
        self.err_path = workdir / f"worker-{n}.err"
        self._out, self._err = self.out_path.open("wb"), self.err_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--config", str(config),
             "--set", f"source.group_id={group}"],
            cwd=workdir,
            env={**os.environ, **env},
            stdout=self._out,
            stderr=self._err,
        )  # fmt: skip
        self.pid = self.proc.pid
        self.started_at = time.monotonic()
        self.metrics_port: int | None = None

    def log(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def events(self) -> list[dict[str, object]]:
        out = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue  # a line cut short by kill -9
        return out

    def wait_started(self, timeout_s: float = 60) -> int:
        """The metrics port from the `event=started` line."""
        found: list[int] = []

        def started() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"worker exited {self.proc.returncode}:\n{self.log()[-2000:]}\n"
                    f"{self.stderr()[-2000:]}"
                )
            match = re.search(r'"event":"started".*?"metrics_port":"(\d+)"', self.log())
            if match:
                found.append(int(match.group(1)))
            return bool(found)

        wait_until(started, timeout_s, f"worker {self.pid} to start")
        self.metrics_port = found[0]
        return found[0]

    def status(self) -> str:
        """The worker's /status.json, or why it could not be read (for failure messages)."""
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/status.json"
            with urllib.request.urlopen(url, timeout=2) as answer:
                return answer.read().decode()
        except (OSError, AttributeError) as exc:
            return f"(no status: {exc!r})"

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float = 60) -> int:
        return self.proc.wait(timeout_s)

    def stop(self) -> None:
        """Make sure the process is gone (by its PID) and the log files are closed."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._out.close()
        self._err.close()


# -- observers ----------------------------------------------------------------------------


class ReadinessProbe(threading.Thread):
    """GET /readyz every `interval_s`; each answer is kept as (monotonic, status or None)."""

    def __init__(self, port: int, interval_s: float = 0.1) -> None:
        super().__init__(name=f"readyz-{port}", daemon=True)
        self._url = f"http://127.0.0.1:{port}/readyz"
        self._interval_s = interval_s
        self._stop_event = threading.Event()
        self.samples: list[tuple[float, int | None]] = []

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                with urllib.request.urlopen(self._url, timeout=1) as answer:
                    status: int | None = answer.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError:
                status = None  # not listening (yet, or any more)
            self.samples.append((time.monotonic(), status))
            self._stop_event.wait(self._interval_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)

    @property
    def last(self) -> int | None:
        return self.samples[-1][1] if self.samples else None

    def ready_since(self, since: float) -> bool:
        return any(t >= since and s == 200 for t, s in self.samples)

    def longest_not_ready_s(self, after: float = 0.0) -> float:
        """The longest run of answers other than 200, once it had been ready after `after`."""
        longest, began, was_ready = 0.0, None, False
        for t, status in self.samples:
            if t < after:
                continue
            if status == 200:
                if began is not None:
                    longest = max(longest, t - began)
                began, was_ready = None, True
            elif was_ready and began is None:
                began = t
        if began is not None:
            longest = max(longest, self.samples[-1][0] - began)
        return longest


class CommitPoller(threading.Thread):
    """The group's committed offsets every `interval_s`, as `CommitSnapshot`s.

    A read that fails (a broker down, the coordinator moving) is counted and skipped:
    the poller observes, it must never be the reason a test waits.
    """

    def __init__(self, servers: list[str], group: str, topic: str, interval_s: float = 0.2) -> None:
        super().__init__(name=f"commits-{group}", daemon=True)
        self._servers, self._group, self._topic = servers, group, topic
        self._interval_s = interval_s
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self._snapshots: list[CommitSnapshot] = []
        self.errors = 0

    @property
    def snapshots(self) -> list[CommitSnapshot]:
        with self._lock:
            return list(self._snapshots)

    def latest(self) -> dict[int, int]:
        with self._lock:
            return dict(self._snapshots[-1].offsets) if self._snapshots else {}

    def run(self) -> None:
        asyncio.run(self._poll())

    async def _poll(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self._servers, request_timeout_ms=3000)
        await admin.start()
        try:
            while not self._stop_event.is_set():
                await self.read_once(admin)
                await asyncio.sleep(self._interval_s)
        finally:
            await admin.close()

    async def read_once(self, admin: AIOKafkaAdminClient) -> None:
        try:
            found = await asyncio.wait_for(admin.list_consumer_group_offsets(self._group), 5)
        except Exception:  # any failure to read is a gap in observation, nothing more
            self.errors += 1
            return
        offsets = {
            tp.partition: meta.offset
            for tp, meta in found.items()
            if tp.topic == self._topic and meta.offset >= 0
        }
        with self._lock:
            self._snapshots.append(CommitSnapshot(time.time(), offsets))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(15)


# -- reading what the handler wrote ---------------------------------------------------------


def read_handled(log_dir: Path) -> list[Handled]:
    """Every process's handled records, each process's in the order it handled them."""
    out: list[Handled] = []
    for path in sorted(log_dir.glob("handled.*")):
        out += parse_handled(path.read_text())
    return out


def longest_stalls(
    handled: list[Handled], acked_at: dict[tuple[int, int], float]
) -> dict[int, tuple[float, float]]:
    """Per partition, the longest time a readable record waited while its partition
    handled nothing new: the worker's own unavailability, apart from the broker's.

    A record is readable from its acknowledgement on (acks=all: the high watermark has
    passed it). For each record, the wait that counts runs from the later of its ack
    and the partition's previous first handling, to its own first handling. A broker
    that holds the high watermark back (a dead replica still in the ISR) delays the
    acks, so it does not count against the worker. Returns partition -> (seconds,
    monotonic time the wait began).
    """
    first: dict[tuple[int, int], float] = {}
    for h in handled:
        first[(h.partition, h.offset)] = min(first.get((h.partition, h.offset), h.mono), h.mono)
    by_partition: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for (p, o), done in first.items():
        if (p, o) in acked_at:
            by_partition[p].append((done, acked_at[(p, o)]))
    out = {}
    for p, records in by_partition.items():
        records.sort()
        times = [done for done, _ in records]
        worst = (0.0, 0.0)
        for done, acked in records:
            i = bisect.bisect_left(times, done)  # handlings strictly before this one
            began = max(acked, times[i - 1]) if i else acked
            if done - began > worst[0]:
                worst = (done - began, began)
        out[p] = worst
    return out


def count_handled(log_dir: Path) -> int:
    return sum(path.read_bytes().count(b"\n") for path in log_dir.glob("handled.*"))


@dataclass(frozen=True, slots=True)
class Mark:
    kind: str  # "inside" or "returned"
    pid: int
    partition: int
    first: int
    last: int


def read_marks(path: Path) -> list[Mark]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        kind, pid, partition, first, last = line.split()
        out.append(Mark(kind, int(pid), int(partition), int(first), int(last)))
    return out
