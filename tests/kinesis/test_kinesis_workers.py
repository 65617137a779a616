"""Kinesis worker processes: kill -9 and resume from checkpoints; leases spread and move."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts.emulators import Emulator, start_dynamodb
from tests.integration.kafka_helpers import LONG, eventually
from tests.kinesis.test_kinesis_source import checkpoints, lease_rows, make_stream

ROOT = Path(__file__).resolve().parents[2]


def write_config(
    path: Path, kinesis: Emulator, dynamodb: Emulator, stream: str, table: str,
    lease_duration_s: float = 3, batch_size: int = 100,
    target: str = "tests.kinesis.recorder:handle", starting_position: str = "trim_horizon",
) -> Path:  # fmt: skip
    path.write_text(
        "[source]\n"
        f'kind = "kinesis"\nstream_name = "{stream}"\nregion = "us-east-1"\n'
        f'starting_position = "{starting_position}"\n'
        f'endpoint_url = "{kinesis.url}"\nlease_endpoint_url = "{dynamodb.url}"\n'
        f'lease_table = "{table}"\nlease_duration_s = {lease_duration_s}\n'
        f"[batching]\nbatch_size = {batch_size}\nmaximum_batching_window_ms = 50\n"
        f'[handler]\ntarget = "{target}"\n'
        '[metrics]\nlisten = "127.0.0.1:0"\n[runtime]\nlog_format = "text"\n'
    )
    return path


def start(config: Path, record_dir: Path, sleep_s: str = "0",
          **env: str) -> subprocess.Popen[bytes]:  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RECORD_DIR": str(record_dir),
           "RECORD_SLEEP_S": sleep_s, **env}  # fmt: skip
    log = (record_dir / f"worker-{uuid.uuid4().hex[:6]}.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "worker", "run", "--config", str(config)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip


def handled(record_dir: Path, pid: int | None = None) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for path in [record_dir / f"handled.{pid}"] if pid else record_dir.glob("handled.*"):
        if path.exists():
            for line in path.read_text().splitlines():
                shard, position, *_ = line.split()
                out[shard].append(int(position))
    return out


async def owners(dynamodb: Emulator, table: str) -> dict[str, str | None]:
    return {lease.shard_id: lease.owner for lease in await lease_rows(dynamodb, table)}


def test_kill_9_then_restart_resumes_from_the_checkpoints_losing_nothing(
    kinesis: Emulator, dynamodb: Emulator, tmp_path: Path
):
    stream = asyncio.run(make_stream(kinesis, shards=2, records=2000))
    table = f"leases-{uuid.uuid4().hex[:6]}"
    config = write_config(tmp_path / "w.toml", kinesis, dynamodb, stream, table)
    first = start(config, tmp_path, sleep_s="0.2")
    try:
        eventually(
            lambda: sum(map(len, handled(tmp_path, first.pid).values())) >= 600, 60, "progress"
        )
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        first.kill()
    run1 = handled(tmp_path, first.pid)
    saved = asyncio.run(checkpoints(dynamodb, table))
    assert sum(map(len, run1.values())) < 2000, "the kill came too late to test anything"
    for shard, checkpoint in saved.items():
        if checkpoint is not None:  # never checkpointed past what was handled
            assert int(checkpoint) in run1[shard] and max(run1[shard]) >= int(checkpoint)
    second = start(config, tmp_path)
    try:
        # The old leases expire after lease_duration_s (the killed worker cannot release them).
        eventually(lambda: sum(len(set(v)) for v in handled(tmp_path).values()) >= 2000, 90, "all")
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
    run2 = handled(tmp_path, second.pid)
    for shard, positions in run2.items():
        checkpoint = saved.get(shard)
        assert positions == sorted(positions)
        if checkpoint is not None:
            assert min(positions) > int(checkpoint)  # resumed right after the checkpoint
    assert sum(len(set(v)) for v in handled(tmp_path).values()) == 2000


def test_workers_spread_the_leases_and_stopping_one_moves_its_leases(
    kinesis: Emulator, dynamodb: Emulator, tmp_path: Path
):
    stream = asyncio.run(make_stream(kinesis, shards=4, records=400))
    table = f"leases-{uuid.uuid4().hex[:6]}"
    config = write_config(tmp_path / "w.toml", kinesis, dynamodb, stream, table)
    workers = [start(config, tmp_path)]
    try:

        def all_owned() -> bool:
            seen = asyncio.run(owners(dynamodb, table))
            return len(seen) == 4 and None not in seen.values()

        eventually(all_owned, 30, "the first worker to own every lease")

        def spread(n: int) -> bool:
            counts = defaultdict(int)
            for owner in asyncio.run(owners(dynamodb, table)).values():
                counts[owner] += 1
            fair = -(-4 // n)  # ceil: within one of even
            return None not in counts and len(counts) == n and max(counts.values()) <= fair

        workers.append(start(config, tmp_path))
        eventually(lambda: spread(2), 60, "two workers with two leases each")
        workers.append(start(config, tmp_path))
        eventually(lambda: spread(3), 60, "three workers within one of even")
        workers[1].send_signal(signal.SIGTERM)
        assert workers[1].wait(60) == 0
        stopped_at = time.monotonic()

        def moved() -> bool:
            return len({o for o in asyncio.run(owners(dynamodb, table)).values()} - {None}) == 2

        eventually(moved, 30, "the stopped worker's leases to move")
        assert time.monotonic() - stopped_at < 3 + 3  # within the lease duration (plus a round)
        eventually(lambda: sum(len(set(v)) for v in handled(tmp_path).values()) >= 400, 60, "all")
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
                w.wait(60)
    assert sum(len(set(v)) for v in handled(tmp_path).values()) == 400


@pytest.mark.parametrize("fault", ["stopped", "frozen"])
def test_a_worker_cut_off_from_its_lease_table_exits_1_before_its_lease_can_expire(
    kinesis: Emulator, tmp_path: Path, fault: str
):
    """The worker's own DynamoDB (a private moto) is killed, or frozen with SIGSTOP so
    that calls hang instead of failing. Either way the worker cannot renew: it must give
    its lease up before it expires, log `event=lease_lapsed` and exit 1, within the lease
    duration plus its shutdown, instead of reading on unrenewed."""
    private = start_dynamodb()
    try:
        stream = asyncio.run(make_stream(kinesis, shards=1, records=2000))
        table = f"leases-{uuid.uuid4().hex[:6]}"
        config = write_config(tmp_path / "w.toml", kinesis, private, stream, table)
        worker = start(config, tmp_path, sleep_s="0.2")
        try:
            eventually(lambda: sum(map(len, handled(tmp_path).values())) >= 100, 60, "progress")
            cut_at = time.monotonic()
            if fault == "stopped":
                os.kill(private.pid, signal.SIGKILL)
            else:
                os.kill(private.pid, signal.SIGSTOP)
            code = worker.wait(60)
            took_s = time.monotonic() - cut_at
        finally:
            if worker.poll() is None:
                worker.kill()
        log = "".join(p.read_text() for p in tmp_path.glob("worker-*.log"))
        assert code == 1, log[-3000:]
        assert "event=lease_lapsed" in log and "event=task_crashed" in log
        assert took_s < 3 + 30, took_s  # the lease duration, plus a bounded shutdown
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(private.pid, signal.SIGCONT)
        private.stop()


@dataclass(frozen=True)
class Batch:
    pid: int
    shard: str
    started: float
    ended: float


def timed(record_dir: Path) -> list[tuple[Batch, int, str, int]]:
    """Every handled record as (its batch, position, key, seq), from `timed_recorder`."""
    out = []
    for path in record_dir.glob("timed.*"):
        for line in path.read_text().splitlines():
            pid, shard, position, key, seq, started, ended = line.split()
            batch = Batch(int(pid), shard, float(started), float(ended))
            out.append((batch, int(position), key, int(seq)))
    return out


@pytest.mark.parametrize(
    ("lease_duration_s", "batch_s", "records", "workers"),
    [
        pytest.param(10, 1.0, 800, 2, id="lease 10 s", marks=LONG),
        pytest.param(3, 4.0, 400, 2, id="a batch longer than the lease"),
        pytest.param(3, 1.0, 800, 3, id="a third worker joins"),
    ],
)
def test_workers_joining_take_leases_by_hand_off_never_running_one_shard_twice_at_once(
    kinesis: Emulator, dynamodb: Emulator, tmp_path: Path, lease_duration_s: float,
    batch_s: float, records: int, workers: int,
):  # fmt: skip
    """Workers join while the first is inside slow batches on every shard. The first
    version's steal started the joiner on a shard at once, beside its owner, for seconds
    (duplicates and per-device order violations). Now the joiner asks, the owner drains
    the shard, commits and hands the lease over, and only then does the joiner read it:
    no two processes are ever inside batches of one shard at once, every record is
    handled once and in order per device, no lease expires on the way, and the joiners
    end with their fair share."""
    stream = asyncio.run(make_stream(kinesis, shards=4, records=records, keys=40))
    table = f"leases-{uuid.uuid4().hex[:6]}"
    config = write_config(tmp_path / "w.toml", kinesis, dynamodb, stream, table,
                          lease_duration_s=lease_duration_s, batch_size=20,
                          target="tests.kinesis.timed_recorder:handle")  # fmt: skip
    procs = [start(config, tmp_path, sleep_s=str(batch_s))]
    try:
        eventually(lambda: len({b.shard for b, *_ in timed(tmp_path)}) == 4, 60, "every shard")

        def spread(n: int) -> bool:
            counts = defaultdict(int)
            for owner in asyncio.run(owners(dynamodb, table)).values():
                counts[owner] += 1
            return None not in counts and len(counts) == n and max(counts.values()) <= -(-4 // n)

        for n in range(2, workers + 1):
            procs.append(start(config, tmp_path, sleep_s=str(batch_s)))
            eventually(lambda n=n: spread(n), 90, f"{n} workers with their fair share")
        eventually(lambda: len({p for _, p, *_ in timed(tmp_path)}) >= records, 120, "all")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = [p.wait(60) for p in procs]
    rows = timed(tmp_path)
    logs = "".join(p.read_text() for p in tmp_path.glob("worker-*.log"))
    assert codes == [0] * workers
    assert "event=lease_handed_off" in logs
    assert "reason=expired" not in logs and "event=lease_lost" not in logs  # none expired
    assert len(rows) == len({p for _, p, *_ in rows}) == records  # each once
    batches = defaultdict(set)
    for batch, *_ in rows:
        batches[batch.shard].add(batch)
    for shard, seen in batches.items():
        ordered = sorted(seen, key=lambda b: b.started)
        for earlier, later in itertools.pairwise(ordered):
            assert earlier.ended <= later.started, f"{shard}: {earlier} and {later} overlap"
    per_key = defaultdict(list)
    for _, _, key, seq in sorted(rows, key=lambda r: (r[0].started, r[1])):
        per_key[key].append(seq)
    assert all(seqs == list(range(len(seqs))) for seqs in per_key.values())
