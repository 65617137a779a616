"""python -m load produce|topic|bench|memory|demo|soak ..."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m load")
    sub = p.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("produce", help="produce IoT telemetry")
    pr.add_argument("--bootstrap", default="127.0.0.1:9092")
    pr.add_argument("--topic", default="telemetry")
    pr.add_argument("--devices", type=int, default=2000)
    pr.add_argument("--count", type=int, help="records to send as fast as possible")
    pr.add_argument("--rate", type=float, help="records per second")
    pr.add_argument("--duration", type=float, help="seconds, with --rate")
    pr.add_argument("--invalid", type=int, default=0, help="readings cut short (poison records)")
    tp = sub.add_parser("topic", help="create a topic (no error if it exists)")
    tp.add_argument("name")
    tp.add_argument("--bootstrap", default="127.0.0.1:9092")
    tp.add_argument("--partitions", type=int, default=1)
    bn = sub.add_parser("bench", help="the worker against the raw client, side by side")
    bn.add_argument("--records", type=int, default=1_000_000)
    bn.add_argument("--rounds", type=int, default=3)
    bn.add_argument("--backlog", type=int, default=2_000_000, help="records for the memory run")
    bn.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    bn.add_argument(
        "--only",
        action="append",
        choices=["throughput", "fetch", "parallel", "cpu", "latency", "memory", "kinesis"],
        help="run only these scenarios (repeatable)",
    )
    bn.add_argument(
        "--sweep",
        action="store_true",
        help="the batching sweep instead (load/sweep.py): partitions x batch x window",
    )
    bn.add_argument("--partitions", type=int, nargs="+", default=[8, 64, 256])
    bn.add_argument("--batch-sizes", type=int, nargs="+", default=[10, 100, 500, 10_000])
    bn.add_argument("--windows", type=int, nargs="+", default=[0, 500], help="ms")
    bn.add_argument(
        "--build",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="sweep, throughput: also run the worker from this tree (e.g. an older commit)",
    )
    bn.add_argument("--bootstrap", help="sweep: use this running broker (topics kept)")
    bn.add_argument("--rows", action="append", metavar="TEXT",
                    help="throughput: only the rows whose name contains TEXT (repeatable), "
                         "and their baselines (load/bench_select.py)")  # fmt: skip
    bn.add_argument("--shards", type=int, nargs="+", default=[4],
                    help="kinesis: shard counts to run (each its own stream)")  # fmt: skip
    mm = sub.add_parser("memory", help="RSS under a backlog at 8, 64 and 256 partitions")
    mm.add_argument(
        "--partitions",
        type=int,
        nargs="*",
        default=[8, 64, 256],
        help="partition counts of the RSS runs (none: --throughput only)",
    )
    mm.add_argument("--backlog", type=int, default=600_000, help="1 KB readings per topic")
    mm.add_argument("--seconds", type=float, default=40.0, help="RSS sampled every second")
    mm.add_argument(
        "--build",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="also run the worker from this source tree (e.g. an older commit)",
    )
    mm.add_argument(
        "--throughput",
        action="store_true",
        help="and each build's 8-partition no-op rate against the raw loop",
    )
    mm.add_argument("--rounds", type=int, default=3)
    dm = sub.add_parser("demo", help="local Kafka + telemetry + the worker, with live numbers")
    dm.add_argument("--records", type=int, default=200_000)
    dm.add_argument("--partitions", type=int, default=4)
    dm.add_argument(
        "--keep",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the worker serving after the run until Ctrl-C (default: when on a terminal)",
    )
    sk = sub.add_parser("soak", help="fixed rate, three workers, crash and broker faults")
    sk.add_argument("--minutes", type=float, default=30.0)
    sk.add_argument("--rate", type=float, default=2000.0, help="keyed readings per second")
    sk.add_argument("--devices", type=int, default=200, help="keys")
    sk.add_argument("--partitions", type=int, default=12)
    sk.add_argument("--workers", type=int, default=3)
    sk.add_argument("--nodes", type=int, default=3, choices=[1, 3], help="Kafka nodes")
    sk.add_argument("--fault-every", type=float, default=20.0, help="seconds between faults")
    sk.add_argument("--no-broker-faults", action="store_true")
    sk.add_argument("--broker-down", type=float, default=10.0, help="seconds a broker stays down")
    sk.add_argument("--seed", type=int, default=13)
    sk.add_argument(
        "--handler-sleep",
        type=float,
        default=0.0,
        help="seconds each batch works before it records (kills land inside)",
    )
    sk.add_argument("--report-every", type=float, default=60.0, help="seconds between lines")
    sk.add_argument("--workdir", type=Path, help="keep the cluster and the logs here")
    sk.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)

    if args.cmd == "produce":
        from load.produce import produce

        started = time.monotonic()
        n = asyncio.run(
            produce(
                args.bootstrap, args.topic, args.devices, args.count, args.rate, args.duration,
                invalid=args.invalid,
            )
        )  # fmt: skip
        took = time.monotonic() - started
        print(f"produced {n} records to {args.topic} in {took:.1f}s ({n / took:,.0f}/s)")
        return 0
    if args.cmd == "topic":
        from load.produce import create_topic

        asyncio.run(create_topic(args.bootstrap, args.name, args.partitions))
        print(f"topic {args.name}: {args.partitions} partition(s) at {args.bootstrap}")
        return 0
    if args.cmd == "bench":
        if args.sweep:
            from load.sweep import main as sweep

            return sweep(args.partitions, args.batch_sizes, args.windows, args.records,
                         args.rounds, args.build, args.bootstrap)  # fmt: skip
        from load.bench import main as bench

        return bench(args.records, args.rounds, args.backlog, args.quick, args.only,
                     tuple(args.shards), args.rows, args.build)  # fmt: skip
    if args.cmd == "memory":
        from load.memory_bench import main as memory

        return memory(args.partitions, args.backlog, args.seconds, args.build,
                      args.throughput, args.rounds)  # fmt: skip
    if args.cmd == "soak":
        from load.soak_cli import soak

        return soak(args)
    from load.demo import demo

    return demo(args.records, args.partitions, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
