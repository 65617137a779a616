"""`python -m load soak`: the cluster, the soak, the figures and the exit status.

Exit status 0 when the checker found nothing lost and no order violation and the
group drained; 1 otherwise (the figures are written either way).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `scripts` and `tests.faults`, from any working directory

from load import soak_report  # noqa: E402
from load.soak import Soak, SoakOptions, cycle_schedule  # noqa: E402
from scripts import kafka_broker  # noqa: E402


def soak(args: argparse.Namespace) -> int:
    # The soak's own clients (producer, commit poller) retry through broker faults; their
    # reconnect warnings are the fault working, not news. The workers log to files.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    seconds = args.minutes * 60
    broker_nodes = 0 if args.no_broker_faults else args.nodes
    options = SoakOptions(
        seconds=seconds,
        rate=args.rate,
        devices=args.devices,
        partitions=args.partitions,
        workers=args.workers,
        schedule=cycle_schedule(seconds, args.fault_every, args.workers, broker_nodes, args.seed),
        broker_down_s=args.broker_down,
        report_every_s=args.report_every,
        handler_sleep_s=args.handler_sleep,
    )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"[soak] {args.minutes} min at {args.rate:,.0f}/s, {args.workers} workers, "
          f"{args.nodes} Kafka node(s), {len(options.schedule)} faults planned; in {workdir}",
          flush=True)  # fmt: skip
    cluster = kafka_broker.start_cluster(workdir / "kafka", nodes=args.nodes)
    try:
        result = Soak(cluster, workdir / "run", options).run()
    finally:
        cluster.stop()
    doc = soak_report.summary(result)
    soak_report.print_summary(doc)
    json_path, png_path = soak_report.write(result, args.results, time.strftime("%Y%m%d-%H%M%S"))
    print(f"[soak] wrote {json_path} and {png_path}", flush=True)
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if result.ok else 1
