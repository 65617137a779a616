"""The `worker` command: run, check-config, status, lag, invoke, event, redrive, dlq.

Every failure is one `error:` (or `config error:`) line on stderr, never a traceback.
Exit status: 0 done, 1 a runtime failure (a broker, a topic, a port, the handler
raising), 2 the configuration or the command line is wrong.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path

from worker.config import WorkerConfig
from worker.config_load import ConfigError, load_config
from worker.destinations import dlq_view
from worker.runtime.signals import StoppedBeforeStart, stop_while_loading, stopped_while_loading

EXIT_RUNTIME = 1
EXIT_CONFIG = 2


def _seconds(text: str) -> float:
    """A duration on the command line: 0 or more (`inf`: no limit); NaN, which no clock
    ever passes, and a negative one are refused."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number of seconds, 0 or more")
    return value


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
    cc = with_config("check-config", "validate and print the effective configuration")
    cc.add_argument(
        "--connect",
        action="store_true",
        help="also ask the broker that the source and on-failure topics exist",
    )
    inv = with_config("invoke", "call the handler once with a Lambda-shaped event")
    inv.add_argument("--event", required=True, help="event JSON file, or - for standard input")
    ev = with_config("event", "print a sample Lambda event to start from")
    ev.add_argument("kind", nargs="?", choices=["kafka", "kinesis", "dynamodb"],
                    help="without --config; with it, the configured source's")  # fmt: skip
    ev.add_argument("--value", default='{"device_id": "dev-00001", "temperature": 21.5}')
    ev.add_argument("--key", default=None, help="the record's key (dynamodb: the key attribute)")
    ev.add_argument("--topic", help="topic, stream or table name; default telemetry")
    ev.add_argument("--partition", type=int, default=0)
    st = sub.add_parser("status", help="print a running worker's state")
    st.add_argument("--url", default="http://127.0.0.1:9108", help="the worker's metrics address")
    lg = with_config("lag", "committed offset, end offset and lag per partition, from the broker")
    lg.set_defaults(command="lag")
    lg.add_argument(
        "--wait",
        type=_seconds,
        metavar="SECONDS",
        help="ask every second until the lag is 0 (exit 0) or SECONDS passed (exit 1)",
    )
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

    try:
        raw = sys.stdin.buffer.read() if args.event == "-" else Path(args.event).read_bytes()
    except OSError as exc:
        print(f"error: --event {args.event}: cannot read it: {exc.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        print(f"error: --event {args.event}: not valid JSON: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        result = invoke_once(config, event)
    except HandlerLoadError as exc:
        return _fail([str(exc)])
    except ValueError as exc:  # an event a native handler's batch cannot be made of
        print(f"error: worker invoke: {exc}", file=sys.stderr)
        return EXIT_CONFIG
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
    except urllib.error.HTTPError as exc:
        why = " (metrics.status_page = false?)" if exc.code == 404 else ""
        print(f"error: the worker at {url} serves no status: {exc}{why}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"error: cannot reach a worker at {url}: {exc}", file=sys.stderr)
        return 1
    print(render_text(status))
    return 0


def _event(args: argparse.Namespace) -> int:
    from worker.lambda_compat.local import configured_event, sample_event

    if args.config is not None or args.overrides:
        if args.kind is not None or args.topic is not None:
            print("error: worker event --config: the kind and topic are the config's; "
                  "leave out KIND and --topic", file=sys.stderr)  # fmt: skip
            return EXIT_CONFIG
        config = _load(args)
    try:
        if args.config is None and not args.overrides:
            event = sample_event(args.kind or "kafka", args.value, args.key,
                                 args.topic or "telemetry", args.partition)  # fmt: skip
        else:
            event = configured_event(config, args.value, args.key, args.partition)
    except (ValueError, ImportError) as exc:  # a DynamoDB sample: not an item, or no boto3
        print(f"error: worker event: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(json.dumps(event, indent=2))
    return 0


async def _reach(config: WorkerConfig) -> None:
    """What `run` checks against the broker (or the stream and lease table) before it
    starts, without starting."""
    from worker.destinations import make_destination
    from worker.destinations.kafka import KafkaDestination
    from worker.errors import StartError
    from worker.observe.metrics import Metrics
    from worker.sources.kafka.config import KafkaSourceConfig
    from worker.sources.kafka.preflight import check_source

    if isinstance(config.source, KafkaSourceConfig):
        await check_source(config.source)
    else:
        from worker.sources import make_source

        source = make_source(config.source)
        if not hasattr(source, "check"):
            raise StartError(f"source.kind = {config.source.kind!r}: --connect cannot check it")
        await source.check()
    destination = make_destination(config, Metrics())
    if isinstance(destination, KafkaDestination):
        await destination.check()
    if config.outputs.topics and config.source.kind != "memory":
        from worker.outputs.make import make_output_sink

        sink = make_output_sink(config, Metrics(), config.source.kind)
        await sink.check_topics()  # type: ignore[union-attr]


def _check_config(args: argparse.Namespace, config: WorkerConfig) -> int:
    import asyncio

    from worker.errors import StartError
    from worker.handling.handler import HandlerLoadError, load_handler

    try:
        load_handler(config.handler.target)
    except HandlerLoadError as exc:
        return _fail([str(exc)])
    if args.connect:
        try:
            asyncio.run(_reach(config))
        except StartError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_RUNTIME
    print(json.dumps(config.model_dump(mode="json"), indent=2))
    return 0


def _lag(config: WorkerConfig, wait_s: float | None) -> int:
    import asyncio

    from worker.sources.kafka.config import KafkaSourceConfig
    from worker.sources.kafka.lag import caught_up, group_lag

    if not isinstance(config.source, KafkaSourceConfig):
        return _fail([f"source.kind = {config.source.kind!r}: `worker lag` reads kafka groups"])
    done = True
    try:
        if wait_s is None:
            rows = asyncio.run(group_lag(config.source))
        else:
            done, rows = asyncio.run(caught_up(config.source, wait_s))
    except (ConnectionError, LookupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"group {config.source.group_id}")
    print(f"{'topic':<28} {'partition':>9} {'committed':>12} {'end':>12} {'lag':>10}")
    for r in rows:
        committed = "-" if r.committed is None else r.committed
        print(f"{r.topic:<28} {r.partition:>9} {committed:>12} {r.end:>12} {r.lag:>10}")
    print(f"{'total':<28} {'':>9} {'':>12} {'':>12} {sum(r.lag for r in rows):>10}")
    if not done:
        lag = sum(r.lag for r in rows)
        print(f"error: group {config.source.group_id} still lags {lag} after {wait_s} s",
              file=sys.stderr)  # fmt: skip
        return EXIT_RUNTIME
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except StoppedBeforeStart as exc:
        print(f"stopped: {exc} before the worker started; nothing was read", file=sys.stderr)
        sys.stderr.flush()
        os._exit(0)  # as a run that started: no thread a loading step began keeps it alive
    except BrokenPipeError:
        # The reader went away (`worker status | head`): it had what it wanted. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command != "run":  # client libraries' lines would crowd the one error line
        logging.getLogger().addHandler(logging.NullHandler())
    if args.command == "status":
        return _status(args.url)
    if args.command == "event":
        try:
            return _event(args)
        except ConfigError as exc:
            return _fail(exc.problems)
    if args.command == "dlq":
        return dlq_view.run(args)
    if args.command == "redrive":
        try:
            return _redrive(args)
        except ConfigError as exc:
            return _fail(exc.problems)
    if args.command != "run":
        return _with_config(args)
    restore = stop_while_loading()
    try:
        return _with_config(args)
    finally:
        restore()


def _with_config(args: argparse.Namespace) -> int:
    try:
        config = _load(args)
    except ConfigError as exc:
        return _fail(exc.problems)

    from worker.handling.handler import HandlerLoadError, load_handler

    if args.command == "invoke":
        return _invoke(args, config)
    if args.command == "lag":
        return _lag(config, args.wait)
    if args.command == "check-config":
        return _check_config(args, config)
    try:  # before any client exists: a bad target leaves no unclosed consumer behind
        load_handler(config.handler.target)
    except HandlerLoadError as exc:
        return _fail([str(exc)])
    stopped_while_loading()  # a signal the module's own `except:` caught

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
