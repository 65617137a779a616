"""sentry-arroyo reading the benchmark topic: RunTask (no-op or orjson decode) + CommitOffsets.

    python arroyo_bench.py BOOTSTRAP TOPIC COUNT noop|decode BACKOFF_MS|default OUT

Run with the arroyo virtualenv (arroyo needs confluent-kafka >= 2.13.2).
"""

import sys
import time
import uuid

import orjson
from arroyo.backends.kafka import KafkaConsumer
from arroyo.backends.kafka.configuration import build_kafka_consumer_configuration
from arroyo.processing import StreamProcessor
from arroyo.processing.strategies import CommitOffsets, ProcessingStrategyFactory, RunTask
from arroyo.types import Topic

bootstrap, topic, count, work, backoff, out = sys.argv[1:7]
count = int(count)
seen = [0, 0.0, 0]  # records, steady-state start time, records at that time
processor = None


def task(message):
    if not seen[1] and seen[0] >= count // 10:  # steady state, as for every contender
        seen[1], seen[2] = time.perf_counter(), seen[0]
    if work == "decode":
        orjson.loads(message.payload.value)
    seen[0] += 1
    if seen[0] == count:
        with open(out, "w") as fh:
            fh.write(f"{(count - seen[2]) / (time.perf_counter() - seen[1])}\n")
        processor.signal_shutdown()
    return message.payload


class Factory(ProcessingStrategyFactory):
    def create_with_partitions(self, commit, partitions):
        return RunTask(task, CommitOffsets(commit))


override = {"fetch.queue.backoff.ms": int(backoff)} if backoff != "default" else None
config = build_kafka_consumer_configuration(
    {},
    group_id=f"bench-arroyo-{uuid.uuid4().hex[:8]}",
    auto_offset_reset="earliest",
    bootstrap_servers=[bootstrap],
    override_params=override,
)
processor = StreamProcessor(KafkaConsumer(config), Topic(topic), Factory())
processor.run()
