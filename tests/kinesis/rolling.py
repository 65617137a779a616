"""What the Kinesis rolling-fault test drives and watches: a paced producer, worker
processes in slots, a checkpoint poller, and the translation to the checker's terms.

The checker (`tests/faults/checker.py`) speaks Kafka: partitions and offsets that
count 0, 1, 2, ... Here a shard is a partition (its index) and a record's offset is its
ordinal among the records acknowledged in that shard (sequence numbers only grow,
with gaps), so every rule holds as written: a skip is a record between two handled
ones that nobody handled, a checkpoint at sequence S is a commit of ordinal(S) + 1, and
an epoch starts at each `event=lease_taken` of the shard in the worker's log (logged
before the shard's reader starts).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

from aiobotocore.session import get_session

from scripts.emulators import Emulator
from tests.faults.checker import Assignment, CommitSnapshot, Handled, Produced, Report, check
from tests.faults.harness import read_handled
from tests.kinesis.test_kinesis_source import lease_rows, wait_active


def shard_index(shard_id: str) -> int:
    return int(shard_id.rsplit("-", 1)[1])


class KinesisProducer(threading.Thread):
    """`rate` readings per second for `seconds` from `devices` devices, in PutRecords calls of
    a tenth of a second's worth, one call at a time (so a device's readings reach its
    shard in seq order). Each acknowledged entry is kept with its shard and sequence."""

    def __init__(self, kinesis: Emulator, stream: str, rate: float, seconds: float,
                 devices: int = 40) -> None:  # fmt: skip
        super().__init__(name="kinesis-producer", daemon=True)
        self._url, self._stream = kinesis.url, stream
        self._rate, self._seconds, self._devices = rate, seconds, devices
        self._lock = threading.Lock()
        self._acked: list[tuple[str, int, int, int]] = []  # device, seq, shard, sequence number
        self.failures: list[str] = []

    def acked(self) -> list[tuple[str, int, int, int]]:
        with self._lock:
            return list(self._acked)

    def run(self) -> None:
        asyncio.run(self._produce())

    async def _produce(self) -> None:
        seq: dict[str, int] = defaultdict(int)
        per_call, i = max(1, int(self._rate / 10)), 0
        async with get_session().create_client(
            "kinesis", region_name="us-east-1", endpoint_url=self._url
        ) as client:
            start = time.monotonic()
            while time.monotonic() - start < self._seconds:
                entries, readings = [], []
                for _ in range(per_call):
                    device = f"dev-{i % self._devices:02d}"
                    value = {"device_id": device, "seq": seq[device], "ts": time.time()}
                    entries.append({"Data": json.dumps(value).encode(), "PartitionKey": device})
                    readings.append((device, seq[device]))
                    seq[device], i = seq[device] + 1, i + 1
                answer = await client.put_records(StreamName=self._stream, Records=entries)
                with self._lock:
                    for (device, n), result in zip(readings, answer["Records"], strict=True):
                        if "ErrorCode" in result:
                            self.failures.append(f"{device}/{n}: {result['ErrorCode']}")
                            continue
                        self._acked.append((device, n, shard_index(result["ShardId"]),
                                            int(result["SequenceNumber"])))  # fmt: skip
                ahead = i / self._rate - (time.monotonic() - start)
                if ahead > 0:
                    await asyncio.sleep(ahead)  # the pace, not a wait for a result


async def make_empty_stream(kinesis: Emulator, name: str, shards: int) -> None:
    async with get_session().create_client(
        "kinesis", region_name="us-east-1", endpoint_url=kinesis.url
    ) as client:
        await client.create_stream(StreamName=name, ShardCount=shards)
        await wait_active(client, name)


class CheckpointPoller(threading.Thread):
    """The lease table's checkpoints every `interval_s`, read from moto directly (not
    through the fault proxy), each stamped with the time its answer arrived."""

    def __init__(self, dynamodb: Emulator, table: str, interval_s: float = 0.5) -> None:
        super().__init__(name="checkpoints", daemon=True)
        self._dynamodb, self._table, self._interval_s = dynamodb, table, interval_s
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self._seen: list[tuple[float, dict[int, int]]] = []

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                rows = asyncio.run(lease_rows(self._dynamodb, self._table))
            except Exception:  # a gap in observation only
                rows = None
            if rows is not None:
                found = {shard_index(r.shard_id): int(r.checkpoint) for r in rows
                         if r.checkpoint and r.checkpoint.isdigit()}  # fmt: skip
                with self._lock:
                    self._seen.append((time.time(), found))
            self._stop_event.wait(self._interval_s)

    def latest(self) -> dict[int, int]:
        with self._lock:
            return dict(self._seen[-1][1]) if self._seen else {}

    def seen(self) -> list[tuple[float, dict[int, int]]]:
        with self._lock:
            return list(self._seen)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(15)


def lease_takes(log_text: str, pid: int) -> list[Assignment]:
    """The worker's `event=lease_taken` JSON lines as one-shard assignments."""
    out = []
    for line in log_text.splitlines():
        if '"lease_taken"' not in line:
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        stamp = datetime.strptime(doc["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        out.append(Assignment(pid, stamp.timestamp(), frozenset({shard_index(doc["shard"])})))
    return out


def judge(
    acked: list[tuple[str, int, int, int]],
    log_dir: Path,
    takes: list[Assignment],
    checkpoints: list[tuple[float, dict[int, int]]],
) -> tuple[Report, int]:
    """The checker's report over the run in ordinal terms, and the handled entries whose
    sequence number was never acknowledged (they cannot be placed, so they are counted)."""
    by_shard: dict[int, list[int]] = defaultdict(list)
    for _, _, shard, sequence in acked:
        by_shard[shard].append(sequence)
    ordinal = {}
    for shard, sequences in by_shard.items():
        sequences.sort()
        ordinal.update({(shard, s): i for i, s in enumerate(sequences)})
    produced = [Produced(d, n, shard, ordinal[(shard, s)]) for d, n, shard, s in acked]
    handled, unplaced = [], 0
    for h in read_handled(log_dir):  # `offset` holds the sequence number as written
        at = ordinal.get((h.partition, h.offset))
        if at is None:
            unplaced += 1
            continue
        handled.append(Handled(h.partition, at, h.key, h.seq, h.pid, h.mono, h.wall))
    snapshots = []
    for wall, found in checkpoints:
        offsets = {}
        for shard, sequence in found.items():
            sequences = by_shard.get(shard, [])
            offsets[shard] = bisect.bisect_right(sequences, sequence)  # ordinal(S) + 1
        snapshots.append(CommitSnapshot(wall, offsets))
    return check(produced, handled, takes, snapshots), unplaced
