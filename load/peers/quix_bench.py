"""quixstreams reading the benchmark topic: a StreamingDataFrame update (bytes or json).

    python quix_bench.py BOOTSTRAP TOPIC COUNT noop|decode BACKOFF_MS|default OUT

Run with the quixstreams virtualenv (quixstreams 3.x needs confluent-kafka < 2.13).
"""

import sys
import tempfile
import time
import uuid

from quixstreams import Application

bootstrap, topic, count, work, backoff, out = sys.argv[1:7]
count = int(count)
seen = [0, 0.0, 0]  # records, steady-state start time, records at that time
extra = {"fetch.queue.backoff.ms": int(backoff)} if backoff != "default" else None
app = Application(
    broker_address=bootstrap,
    consumer_group=f"bench-quix-{uuid.uuid4().hex[:8]}",
    auto_offset_reset="earliest",
    consumer_extra_config=extra,
    use_changelog_topics=False,
    state_dir=tempfile.mkdtemp(),
)
source = app.topic(topic, value_deserializer="json" if work == "decode" else "bytes")


def count_one(value):
    if not seen[1] and seen[0] >= count // 10:  # steady state, as for every contender
        seen[1], seen[2] = time.perf_counter(), seen[0]
    seen[0] += 1
    if seen[0] == count:
        with open(out, "w") as fh:
            fh.write(f"{(count - seen[2]) / (time.perf_counter() - seen[1])}\n")
        app.stop()


app.dataframe(source).update(count_one)
app.run()
