"""DynamoDB stream worker processes: kill -9 while a batch is inside the handler, then resume
from the checkpoints; two workers share the stream's shards through leases."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections import defaultdict
from pathlib import Path

from scripts.emulators import Emulator
from tests.integration.kafka_helpers import eventually
from tests.kinesis.dynamodb_tables import apply, history, make_table
from tests.kinesis.test_kinesis_source import checkpoints, lease_rows

ROOT = Path(__file__).resolve().parents[2]
Row = tuple[int, str, str, int]  # position, device, eventName, version


def write_config(path: Path, dynamodb: Emulator, table: str, leases: str,
                 starting_position: str = "trim_horizon") -> Path:  # fmt: skip
    path.write_text(
        "[source]\n"
        f'kind = "dynamodb"\ntable_name = "{table}"\nregion = "us-east-1"\n'
        f'starting_position = "{starting_position}"\n'
        f'endpoint_url = "{dynamodb.url}"\nlease_table = "{leases}"\nlease_duration_s = 3\n'
        "[batching]\nbatch_size = 100\nmaximum_batching_window_ms = 50\n"
        '[handler]\ntarget = "tests.kinesis.dynamodb_recorder:handle"\n'
        '[metrics]\nlisten = "127.0.0.1:0"\n[runtime]\nlog_format = "text"\n'
    )
    return path


def start(config: Path, record_dir: Path, **env: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RECORD_DIR": str(record_dir), **env}
    log = (record_dir / f"worker-{uuid.uuid4().hex[:6]}.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "worker", "run", "--config", str(config)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip


def handled(record_dir: Path, pid: int | None = None) -> dict[str, list[Row]]:
    """Per shard, the rows handled (by one process, or all), in the order they were."""
    out: dict[str, list[Row]] = defaultdict(list)
    for path in [record_dir / f"handled.{pid}"] if pid else sorted(record_dir.glob("handled.*")):
        if path.exists():
            for line in path.read_text().splitlines():
                shard, position, device, event, version = line.split()
                out[shard].append((int(position), device, event, int(version)))
    return out


def per_device(rows: dict[str, list[Row]]) -> dict[str, list[tuple[str, int]]]:
    """Each device's changes, once each, in stream order."""
    unique = sorted({row for shard_rows in rows.values() for row in shard_rows})
    out: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for _, device, event, version in unique:
        out[device].append((event, version))
    return dict(out)


def in_order(rows: dict[str, list[Row]]) -> bool:
    return all([r[0] for r in v] == sorted(r[0] for r in v) for v in rows.values())


def test_kill_9_while_a_batch_is_inside_the_handler_commits_none_of_it_and_a_restart_loses_nothing(
    dynamodb: Emulator, tmp_path: Path
):
    table = asyncio.run(make_table(dynamodb))
    expected = history(items=200, changes=2000)
    asyncio.run(apply(dynamodb, table, expected))
    leases = f"leases-{uuid.uuid4().hex[:6]}"
    config = write_config(tmp_path / "w.toml", dynamodb, table, leases)
    first = start(config, tmp_path, RECORD_HOLD_AFTER="600")
    entered = tmp_path / f"entered.{first.pid}"
    try:
        eventually(entered.exists, 60, "a batch held inside the handler")
        _, shard, held_first, _ = entered.read_text().split()
        done = max(p for p, *_ in handled(tmp_path, first.pid)[shard])

        def committed() -> int:
            checkpoint = asyncio.run(checkpoints(dynamodb, leases)).get(shard)
            return int(checkpoint) if checkpoint else -1

        # Everything handled before the held batch gets committed; nothing of the held one may.
        eventually(lambda: committed() >= done, 30, "the commits before the held batch")
        saved = committed()
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        first.kill()
    assert saved < int(held_first), "a batch still inside the handler was committed"
    run1 = handled(tmp_path, first.pid)
    assert saved in [p for p, *_ in run1[shard]] and in_order(run1)
    second = start(config, tmp_path)
    try:
        # The killed worker's lease expires after lease_duration_s; then it is read on.
        eventually(lambda: per_device(handled(tmp_path)) == expected, 90, "every change")
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
    run2 = handled(tmp_path, second.pid)
    assert in_order(run2) and min(p for p, *_ in run2[shard]) > saved  # right after it
    assert per_device(handled(tmp_path)) == expected  # none lost, per-item order kept


async def owners(dynamodb: Emulator, leases: str) -> dict[str, str | None]:
    return {lease.shard_id: lease.owner for lease in await lease_rows(dynamodb, leases)}


def test_two_workers_share_the_shards_and_stopping_the_owner_moves_them_losing_nothing(
    dynamodb: Emulator, tmp_path: Path
):
    table = asyncio.run(make_table(dynamodb))
    expected = history(items=100, changes=1000)
    asyncio.run(apply(dynamodb, table, expected))
    leases = f"leases-{uuid.uuid4().hex[:6]}"
    config = write_config(tmp_path / "w.toml", dynamodb, table, leases)
    workers = {w.pid: w for w in (start(config, tmp_path, RECORD_SLEEP_S="0.3"),
                                  start(config, tmp_path, RECORD_SLEEP_S="0.3"))}  # fmt: skip
    try:

        def owner_pid() -> int | None:
            owner = next(iter(asyncio.run(owners(dynamodb, leases)).values()), None)
            return int(owner.split("-")[-2]) if owner else None

        eventually(lambda: owner_pid() in workers, 30, "one worker to own the shard")
        owner = workers[owner_pid()]  # type: ignore[index]
        eventually(lambda: sum(map(len, handled(tmp_path).values())) >= 300, 60, "progress")
        owner.send_signal(signal.SIGTERM)
        assert owner.wait(60) == 0
        (other,) = (w for pid, w in workers.items() if pid != owner.pid)
        eventually(lambda: owner_pid() == other.pid, 30, "the shard to move to the other")
        eventually(lambda: per_device(handled(tmp_path)) == expected, 90, "every change")
    finally:
        for w in workers.values():
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
                w.wait(60)
    assert len(handled(tmp_path, owner.pid)) == 1 and len(handled(tmp_path, other.pid)) == 1
    assert in_order(handled(tmp_path, owner.pid)) and in_order(handled(tmp_path, other.pid))
    assert per_device(handled(tmp_path)) == expected
