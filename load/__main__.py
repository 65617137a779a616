"""python -m load produce|demo ..."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time


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
    dm = sub.add_parser("demo", help="local Kafka + telemetry + the worker, with live numbers")
    dm.add_argument("--records", type=int, default=200_000)
    dm.add_argument("--partitions", type=int, default=4)
    args = p.parse_args(argv)

    if args.cmd == "produce":
        from load.produce import produce

        started = time.monotonic()
        n = asyncio.run(
            produce(args.bootstrap, args.topic, args.devices, args.count, args.rate, args.duration)
        )
        took = time.monotonic() - started
        print(f"produced {n} records to {args.topic} in {took:.1f}s ({n / took:,.0f}/s)")
        return 0
    if args.cmd == "bench":
        from load.bench import main as bench

        return bench(args.records, args.rounds, args.backlog, args.quick, args.only)
    from load.demo import demo

    return demo(args.records, args.partitions)


if __name__ == "__main__":
    sys.exit(main())
