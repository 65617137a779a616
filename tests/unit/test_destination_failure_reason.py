"""`destination_failed` says why, even when the exception's message is empty."""

from __future__ import annotations

from aiokafka.errors import KafkaTimeoutError, NotLeaderForPartitionError

from worker.destinations.kafka import failure_reason


def test_a_bare_timeout_names_what_timed_out_where_and_the_limit():
    reason = failure_reason(TimeoutError(), "kafka-1:9092", 30)
    assert reason == (
        "TimeoutError: no acknowledgement from kafka-1:9092 within "
        "errors.on_failure_timeout_s = 30 s"
    )


def test_a_client_error_keeps_its_own_words_once():
    reason = failure_reason(NotLeaderForPartitionError("p0"), "kafka-1:9092", 30)
    assert reason == "[Error 6] NotLeaderForPartitionError: p0"
    assert reason.count("NotLeaderForPartitionError") == 1


def test_an_error_without_a_message_still_reads_as_a_reason():
    reason = failure_reason(KafkaTimeoutError(), "kafka-1:9092", 30)
    assert reason.startswith("KafkaTimeoutError") and len(reason) > len("KafkaTimeoutError: ")
