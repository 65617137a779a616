"""A scrape from another thread while the loop adds, updates and removes series: the
families snapshot their children, so a scrape never raises ("dictionary changed size")
and each histogram it shows is whole (buckets cumulative, +Inf equal to the count)."""

import threading

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from worker.observe.tallies import SpreadFamily, TallyFamily


def test_scrapes_from_another_thread_see_whole_series_while_partitions_come_and_go():
    registry = CollectorRegistry()
    tally = TallyFamily("w_things", "Things.", ("source", "partition"), registry)
    spread = SpreadFamily("w_sizes", "Sizes.", ("source", "partition"), registry,
                          buckets=(1, 10, 100))  # fmt: skip
    done, scraping = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    scrapes = [0]

    def scrape() -> None:
        try:
            while not done.is_set():
                text = generate_latest(registry).decode()
                for family in text_string_to_metric_families(text):
                    if family.type != "histogram":
                        continue
                    series: dict[str, list] = {}
                    for s in family.samples:
                        series.setdefault(s.labels["partition"], []).append(s)
                    for samples in series.values():
                        buckets = [s.value for s in samples if s.name.endswith("_bucket")]
                        count = [s.value for s in samples if s.name.endswith("_count")]
                        assert buckets == sorted(buckets) and buckets[-1] == count[0]
                scrapes[0] += 1
                scraping.set()
        except BaseException as exc:  # reported to the test's thread
            errors.append(exc)
            scraping.set()

    thread = threading.Thread(target=scrape)
    thread.start()
    try:
        assert scraping.wait(10)
        for i in range(5_000):
            partition = f"t-{i % 50}"
            tally.labels("kafka", partition).inc()
            spread.labels("kafka", partition).observe(i % 200)
            if i % 7 == 0:
                tally.remove_by_labels({"partition": partition})
                spread.remove_by_labels({"partition": partition})
            if errors:
                break
    finally:
        done.set()
        thread.join()
    assert not errors, errors[0]
    assert scrapes[0] >= 1
