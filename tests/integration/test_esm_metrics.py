"""The README's table of Lambda's ESM metrics, run against a real Prometheus.

One worker on the real broker, with a filter (records of key k0 filtered out), a
poison record (retries 0, so it goes to the on-failure topic) and the recording
rules, scraped every second by the Prometheus from the Debian package. Every
PromQL expression of the table must return data, and those whose event happened
in this run must return more than 0.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import pytest

from load.produce import create_topic
from tests.integration.kafka_helpers import (
    WorkerProcess,
    end_offsets,
    eventually,
    produce_keyed,
    unique,
    write_config,
)
from tests.integration.test_observability import query, scalar, start_prometheus
from tests.ops.test_container_and_config import ROOT

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]
PARTITIONS = 2
RECORDS = 200
#: Rows whose event this run makes happen: their expression must be above 0.
HAPPENED = {
    "PolledEventCount", "FilteredOutEventCount", "InvokedEventCount",
    "FailedInvokeEventCount", "OnFailureDestinationDeliveredEventCount",
    "CommittedEventCount", "InvokeErrorCount (per batch)",
}  # fmt: skip
ESM_NAMES = {
    "PolledEventCount", "FilteredOutEventCount", "InvokedEventCount", "FailedInvokeEventCount",
    "DroppedEventCount", "OnFailureDestinationDeliveredEventCount", "CommittedEventCount",
    "MaxOffsetLag", "SumOffsetLag", "IteratorAge", "PollingErrorCount", "InvokeErrorCount",
    "OnFailureDestinationDeliveryErrorCount", "CommitErrorCount",
}  # fmt: skip


def table_rows() -> dict[str, str]:
    """First column (code spans joined) -> the PromQL of the third, from the README."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Lambda's ESM metrics, by name", 1)[1].split("\n\n|", 1)[1]
    rows = {}
    for line in ("|" + section).split("\n\n", 1)[0].splitlines()[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        name = re.sub(r"[`]", "", cells[0])
        (expr,) = re.findall(r"`([^`]+)`", cells[2])
        rows[name] = expr.replace("\\|", "|")
    return rows


@pytest.fixture(scope="module")
def prometheus(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("esm")
    topic, dlq, group = unique("esm"), unique("esm-dlq"), unique("g")

    async def topics() -> None:
        await create_topic(kafka, topic, PARTITIONS)
        await create_topic(kafka, dlq, 1)

    asyncio.run(topics())
    config = write_config(
        tmp / "w.toml", kafka, topic, group,
        errors={"maximum_retry_attempts": 0, "on_failure": f"kafka://{dlq}"},
        filter={"patterns": ['{"value": {"key": [{"anything-but": ["k0"]}]}}']},
    )  # fmt: skip
    worker = WorkerProcess(config, tmp, {"RECORD_POISON": "0:5"})
    server, url = start_prometheus(tmp, f"127.0.0.1:{worker.metrics_port}")
    try:
        eventually(lambda: scalar(url, 'up{job="streamworker"}') == 1, 30, "first scrape")
        asyncio.run(produce_keyed(kafka, topic, RECORDS, partitions=PARTITIONS))
        assert sum(asyncio.run(end_offsets(kafka, topic, PARTITIONS)).values()) == RECORDS
        eventually(
            lambda: scalar(url, "sum(worker_records_committed_total)") == RECORDS,
            60, "all committed",
        )  # fmt: skip
        yield url
    finally:
        server.terminate()
        server.wait(10)
        worker.stop()


def test_the_table_names_every_esm_metric_users_alarm_on():
    names = {n.split(",")[0].split(" (")[0] for n in table_rows()}
    assert names >= ESM_NAMES


def test_every_expression_of_the_esm_table_returns_data(prometheus: str):
    rows = table_rows()
    # Rules and increase() need a few evaluations and two samples of each series.
    eventually(lambda: all(query(prometheus, e) for e in rows.values()), 30, "every row")
    for name in HAPPENED:
        value = scalar(prometheus, rows[name])
        assert value is not None and value > 0, (name, rows[name], value)
    assert scalar(prometheus, rows["FilteredOutEventCount"]) == pytest.approx(
        RECORDS / 50, rel=0.5
    )  # k0 is 1 key in 50 (increase() extrapolates, hence the slack)


def test_the_kafka_exporter_names_carry_the_group_topic_and_partition(prometheus: str):
    series = query(prometheus, "kafka_consumergroup_lag")
    labels = [r["metric"] for r in series]
    assert {m["partition"] for m in labels} == {str(p) for p in range(PARTITIONS)}
    assert len({(m["consumergroup"], m["topic"]) for m in labels}) == 1
    (total,) = query(prometheus, "kafka_consumergroup_lag_sum")
    assert total["metric"]["topic"] == labels[0]["topic"]
    assert total["metric"]["consumergroup"].startswith("g-")
    assert float(total["value"][1]) == 0  # all committed
