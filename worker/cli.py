"""The `worker` command: run, check-config, status, lag, invoke, event, redrive, dlq."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from worker.config import WorkerConfig
from worker.config_load import ConfigError, load_config
from worker.destinations import dlq_view

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="worker", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(name: str, help_: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_)
        cmd.add_argument("--config", type=Path, help="TOML config file")
        cmd.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="override one config key (repeatable); beats file and environment",
        )
        return cmd

    with_config("run", "run the worker until SIGTERM/SIGINT")
    with_config("check-config", "validate and print the effective configuration")
    inv = with_config("invoke", "call the handler once with a Lambda-shaped event")
    inv.add_argument("--event", required=True, help="event JSON file, or - for standard input")
    ev = sub.add_parser("event", help="print a sample Lambda event to start from")
    ev.add_argument("kind", choices=["kafka", "kinesis"])
    ev.add_argument("--value", default='{"device_id": "dev-00001", "temperature": 21.5}')
    ev.add_argument("--key", default=None)
    ev.add_argument("--topic", default="telemetry", help="topic (kafka) or stream name (kinesis)")
    ev.add_argument("--partition", type=int, default=0)
    st = sub.add_parser("status", help="print a running worker's state")
    st.add_argument("--url", default="http://127.0.0.1:9108", help="the worker's metrics address")
    lg = with_config("lag", "committed offset, end offset and lag per partition, from the broker")
    lg.set_defaults(command="lag")
    rd = sub.add_parser("redrive", help="replay dead-lettered records from a DLQ topic")
    rd.add_argument("--from", dest="source", required=True, metavar="kafka://DLQ_TOPIC")
    rd.add_argument("--to", dest="target", required=True, metavar="kafka://TOPIC")
    rd.add_argument(
        "--since",
        help="first DLQ time to move: epoch seconds, timestamp_ms=N (as "
        "printed by redrive) or ISO 8601",
    )
    rd.add_argument("--limit", type=int, help="move at most N records")
    rd.add_argument("--bootstrap", help="HOST:PORT[,HOST:PORT]; default: the config's")
    rd.add_argument("--config", type=Path, help="TOML config file (servers and security)")
    dlq_view.add_parser(sub)
    return p


def _load(args: argparse.Namespace) -> WorkerConfig:
    return load_config(args.config, args.overrides, os.environ)


def _fail(lines: list[str]) -> int:
    for line in lines:
        print(f"config error: {line}", file=sys.stderr)
    return EXIT_CONFIG


def _redrive(args: argparse.Namespace) -> int:
    import asyncio

    from worker.destinations.redrive import kafka_topic, parse_since, redrive
    from worker.destinations.topics import kafka_connection, shown_time

    try:
        source, target = kafka_topic(args.source), kafka_topic(args.target)
        since = parse_since(args.since) if args.since else None
        bootstrap = kafka_connection(args.bootstrap, args.config, dict(os.environ))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        report = asyncio.run(redrive(bootstrap, source, target, since, args.limit))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"moved {report.moved} records from {args.source} to {args.target}")
    if report.skipped:
        print(f"skipped {report.skipped} truncated envelopes (their records were too large "
              f"for the DLQ; the source positions are in them): {', '.join(report.skipped_at)}"
              f"{' ...' if report.skipped > len(report.skipped_at) else ''}")  # fmt: skip
    if report.last_timestamp_ms is not None:
        last = report.last_timestamp_ms
        print(f"last record moved had timestamp_ms={last} ({shown_time(last)})")
        print(f"to move only records dead-lettered after it: --since {report.next_since()}")
    return 0


def _invoke(args: argparse.Namespace, config: WorkerConfig) -> int:
    import orjson

    from worker.handling.handler import HandlerLoadError
    from worker.lambda_compat.local import invoke_once

    raw = sys.stdin.buffer.read() if args.event == "-" else Path(args.event).read_bytes()
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        print(f"error: --event {args.event}: not valid JSON: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        result = invoke_once(config, event)
    except HandlerLoadError as exc:
        return _fail([str(exc)])
    took = f"took {result.took_s * 1000:.1f} ms"
    if result.error is not None:  # shown as Lambda reports a function error
        e = result.error
        print(orjson.dumps({"errorType": type(e).__name__, "errorMessage": str(e)}).decode())
        print(f"{took}; the handler raised", file=sys.stderr)
        return 1
    print(orjson.dumps(result.response, option=orjson.OPT_INDENT_2, default=str).decode())
    print(took, file=sys.stderr)
    return 0


def _status(url: str) -> int:
    import urllib.error
    import urllib.request

    from worker.observe.status import render_text

    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/status.json", timeout=5) as response:
            status = json.loads(response.read())
    except (urllib.error.URLError, OSError) as exc:
        print(f"error: cannot reach a worker at {url}: {exc}", file=sys.stderr)
        return 1
    print(render_text(status))
    return 0


def _lag(config: WorkerConfig) -> int:
    import asyncio

    from worker.sources.kafka.config import KafkaSourceConfig
    from worker.sources.kafka.lag import group_lag

    if not isinstance(config.source, KafkaSourceConfig):
        return _fail([f"source.kind = {config.source.kind!r}: `worker lag` reads kafka groups"])
    try:
        rows = asyncio.run(group_lag(config.source))
    except ConnectionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"group {config.source.group_id}")
    print(f"{'topic':<28} {'partition':>9} {'committed':>12} {'end':>12} {'lag':>10}")
    for r in rows:
        committed = "-" if r.committed is None else r.committed
        print(f"{r.topic:<28} {r.partition:>9} {committed:>12} {r.end:>12} {r.lag:>10}")
    print(f"{'total':<28} {'':>9} {'':>12} {'':>12} {sum(r.lag for r in rows):>10}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (`worker status | head`): it had what it wanted. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "status":
        return _status(args.url)
    if args.command == "event":
        from worker.lambda_compat.local import sample_event

        event = sample_event(args.kind, args.value, args.key, args.topic, args.partition)
        print(json.dumps(event, indent=2))
        return 0
    if args.command == "dlq":
        return dlq_view.run(args)
    if args.command == "redrive":
        try:
            return _redrive(args)
        except ConfigError as exc:
            return _fail(exc.problems)
    try:
        config = _load(args)
    except ConfigError as exc:
        return _fail(exc.problems)

    from worker.handling.handler import HandlerLoadError, load_handler

    if args.command == "invoke":
        return _invoke(args, config)
    if args.command == "lag":
        return _lag(config)
    if args.command == "check-config":
        try:
            load_handler(config.handler.target)
        except HandlerLoadError as exc:
            return _fail([str(exc)])
        print(json.dumps(config.model_dump(mode="json"), indent=2))
        return 0

    from worker.errors import StartError
    from worker.observe import logs
    from worker.runtime.run import run

    logs.setup(config.runtime.log_level, config.runtime.log_format)
    try:
        code = run(config)
        logs.flush_folded()
        # A handler thread stuck past its timeout must not keep the process alive: the
        # worker has drained and committed what it could, so leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    except HandlerLoadError as exc:
        return _fail([str(exc)])
    except StartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
