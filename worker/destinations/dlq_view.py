"""`worker dlq`: what was dead-lettered, as a table or one JSON object per line.

`--from kafka://TOPIC` reads the DLQ topic up to its end as the command
starts (joining no group, committing nothing); `--from file://PATH` reads a
file destination. Each line is one record: when it failed, its source
position, key, condition, attempts and error. `--since` takes the same
times as `worker redrive`, and `--limit N` stops after N records.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the Kafka client is imported when the command runs, not for `--help`
    from worker.destinations.dlq_read import DeadLetterEntry

EXIT_USAGE = 2
_ERROR_CHARS = 60


def add_parser(sub: Any) -> None:
    """The `dlq` subcommand, on the `worker` command's subparsers."""
    cmd = sub.add_parser("dlq", help="list dead-lettered records (a DLQ topic or file)")
    cmd.add_argument("--from", dest="source", required=True,
                     metavar="kafka://DLQ_TOPIC | file://PATH")  # fmt: skip
    cmd.add_argument("--since", help="only records dead-lettered at or after this time "
                     "(epoch seconds, timestamp_ms=N, or ISO 8601)")  # fmt: skip
    cmd.add_argument("--limit", type=int, help="list at most N records")
    cmd.add_argument("--json", action="store_true", help="one JSON object per record")
    cmd.add_argument("--bootstrap", help="HOST:PORT[,HOST:PORT]; default: the config's")
    cmd.add_argument("--config", type=Path, help="TOML config file (servers and security)")


Emit = Callable[["DeadLetterEntry"], None]


async def _kafka(args: argparse.Namespace, topic: str, since_ms: int | None, emit: Emit) -> None:
    from worker.destinations.dlq_read import kafka_entry, records_to_end
    from worker.destinations.topics import kafka_connection

    connection = kafka_connection(args.bootstrap, args.config, dict(os.environ))
    records = records_to_end(connection, topic, since_ms)
    listed = 0
    async with contextlib.aclosing(records):
        async for r in records:
            if args.limit is not None and listed >= args.limit:
                break
            emit(kafka_entry(r))
            listed += 1


def list_entries(args: argparse.Namespace, emit: Emit) -> None:
    """Hand each entry `args` ask for to `emit` as it is read: a DLQ topic may hold
    millions, which as one list (tracebacks and all) filled the memory of the machine
    listing them before a line was printed. ValueError (or ConfigError) says what is wrong."""
    from worker.destinations.dlq_read import file_entries
    from worker.destinations.topics import kafka_topic, parse_since

    since_ms = parse_since(args.since) if args.since else None
    if args.limit is not None and args.limit < 0:
        raise ValueError(f"--limit {args.limit}: must be 0 or more")
    if args.source.startswith("file://"):
        path = Path(args.source.removeprefix("file://"))
        if not path.is_file():
            raise ValueError(f"--from {args.source}: no such file")
        for entry in itertools.islice(file_entries(path, since_ms), args.limit):
            emit(entry)
        return
    if not args.source.startswith("kafka://"):
        raise ValueError(f"--from {args.source!r}: expected kafka://TOPIC or file://PATH")
    asyncio.run(_kafka(args, kafka_topic(args.source), since_ms, emit))


TABLE_HEADER = (f"{'failed at':<24} {'source position':<32} {'key':<16} {'condition':<22} "
                f"{'attempts':>8}  error")  # fmt: skip


def table_row(e: DeadLetterEntry) -> str:
    """One entry as a line of the table, control characters escaped (anyone's keys and
    errors: no escape sequence reaches the terminal)."""
    from worker.destinations.topics import shown_time
    from worker.observe.terminal import printable

    when = shown_time(e.failed_at_ms) if e.failed_at_ms is not None else "-"
    error = f"{e.error_type}: {e.error_message}"
    if len(error) > _ERROR_CHARS:
        error = error[: _ERROR_CHARS - 3] + "..."
    where = f" at {e.at}" if e.at else ""
    attempts = "-" if e.attempts is None else e.attempts
    return printable(f"{when:<24} {e.source_position:<32} {e.key or '-':<16} "
                     f"{e.condition:<22} {attempts:>8}  {error}{where}")  # fmt: skip


def render_table(found: Iterable[DeadLetterEntry]) -> str:
    rows = [table_row(e) for e in found]
    return "\n".join([TABLE_HEADER, *rows, f"{len(rows)} records"])


class _Printer:
    """Prints each entry as it comes: a JSON line, or a table row under one header."""

    def __init__(self, as_json: bool) -> None:
        import orjson

        self._dumps = orjson.dumps
        self._json = as_json
        self.count = 0

    def __call__(self, e: DeadLetterEntry) -> None:
        if self._json:
            sys.stdout.buffer.write(self._dumps(e.document()) + b"\n")
        else:
            if self.count == 0:
                print(TABLE_HEADER)
            print(table_row(e))
        self.count += 1

    def finish(self) -> None:
        if self._json:
            sys.stdout.buffer.flush()
            return
        if self.count == 0:
            print(TABLE_HEADER)
        print(f"{self.count} records")


def run(args: argparse.Namespace) -> int:
    """`worker dlq`: 0 when listed (even none), 2 for a wrong argument, 1 if unreadable."""
    from aiokafka.errors import KafkaError

    from worker.config_load import ConfigError

    printer = _Printer(args.json)
    try:
        list_entries(args, printer)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, KafkaError) as exc:
        print(f"error: --from {args.source}: {exc}", file=sys.stderr)
        return 1
    printer.finish()
    return 0
