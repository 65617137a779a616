"""Mutants: deliberate, small bugs in `worker/` that the tests must catch, every time.

Each mutant is a unified diff against `worker/` (`<name>.diff` next to this file),
kept to a hunk or two so it is easy to regenerate when the code moves. The
runner (`python -m tests.mutants`, see `runner.py`) copies the tree to a
temporary directory, applies one patch (failing loudly if it no longer applies:
the patches must track the code), runs the tests named for it below and reports
whether they caught it. A mutant that survives means a promise of the README is
no longer guarded by any test.

`MUTANTS` is the table: what each one breaks and which tests must fail. Unit
tests run on the memory source in seconds (the default test suite runs them for
every mutant, `tests/mutants/test_mutants.py`); the integration tests aim faults
at the real broker and take about ten seconds each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _node(path: str, name: str) -> str:
    return f"tests/{path}.py::{name}"


def _crash(name: str) -> str:
    """A test of the aimed-fault suite on the real broker."""
    return _node("integration/test_kafka_crash", name)


def _both(name: str, rest: str = "") -> tuple[str, str]:
    """An aimed-fault test run on each Kafka client (`kafka_client`): both must catch it."""
    return tuple(_crash(f"{name}[{client}{rest}]") for client in ("aiokafka", "librdkafka"))  # type: ignore[return-value]


_EXPIRED = "test_a_deleted_checkpoint_reads_on_from_the_oldest_record_counting_the_loss"
_EMPTIED = "test_a_log_deleted_to_its_end_is_counted_once_and_committed_past"


#: The aimed kill -9 tests of a `latest` start on Kinesis and DynamoDB Streams.
_KINESIS_LATEST = (
    _node(
        "kinesis/test_latest_start",
        "test_latest_a_worker_killed_with_its_first_batches_inside_the_handler_loses_none",
    ),
    _node(
        "kinesis/test_latest_start",
        "test_dynamodb_latest_a_worker_killed_with_its_first_batch_inside_the_handler_loses_none",
    ),
)


@dataclass(frozen=True, slots=True)
class Mutant:
    name: str
    #: What the patch breaks, in the README's terms.
    breaks: str
    #: pytest node ids (from the repository root) that must fail with the patch applied.
    tests: tuple[str, ...]

    @property
    def patch(self) -> Path:
        return HERE / f"{self.name}.diff"

    def unit_tests(self) -> tuple[str, ...]:
        return tuple(t for t in self.tests if t.startswith("tests/unit/"))


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "commit_before_handle",
        "Partition._process finishes a single-lane batch's tracker unit before the steps "
        "run: a batch can be committed before its handler ran (a crash loses it)",
        (
            *_both(
                "test_kill_9_inside_batches_commits_none_of_them_and_a_restart_loses_nothing", "-1"
            ),
            _crash(
                "test_kill_9_while_a_dead_letter_is_unacknowledged_commits_nothing_past_the_poison"
            ),
            _node(
                "unit/test_pipeline",
                "test_a_failing_batch_is_retried_until_it_succeeds_and_nothing_passes_it",
            ),
            _node(
                "kinesis/test_dynamodb_workers",
                "test_kill_9_while_a_batch_is_inside_the_handler_commits_none_of_it_and_a_restart"
                "_loses_nothing",
            ),
        ),
    ),
    Mutant(
        "commit_before_handle_lanes",
        "with several key lanes, Partition._process marks the lane's slice of its segments "
        "done before the steps run: the low watermark passes batches still in a handler",
        (
            _crash(
                "test_kill_9_inside_batches_commits_none_of_them_and_a_restart_loses_nothing"
                "[aiokafka-4]"
            ),
            _node(
                "unit/test_parallelization",
                "test_a_stuck_lane_does_not_hold_back_commits_of_what_precedes_it",
            ),
        ),
    ),
    Mutant(
        "cancel_inflight_on_stop",
        "Partition.stop cancels the batches in flight instead of waiting for them: SIGTERM "
        "and revoke throw away work the handler is doing, and commit none of it",
        (
            *_both("test_sigterm_while_a_batch_is_inside_the_handler_waits_for_it_and_commits_it"),
            _node(
                "unit/test_pipeline",
                "test_revoke_finishes_the_batch_in_flight_commits_it_and_drops_the_rest",
            ),
            _node(
                "unit/test_pipeline", "test_shutdown_lets_the_batch_in_flight_finish_and_commits_it"
            ),
        ),
    ),
    Mutant(
        "window_final_given_up",
        "a tumbling window's final invoke may be given up after the retries: the window is "
        "committed although its result was never delivered, nothing dead-lettered or counted",
        (
            _node(
                "unit/test_windows",
                "test_a_window_whose_final_invoke_keeps_failing_is_never_committed",
            ),
        ),
    ),
    Mutant(
        "skip_destination_ack",
        "DeadLetter.give_up starts the destination write and returns without awaiting its "
        "acknowledgement: a given-up record is committed although the DLQ never got it",
        (
            _crash(
                "test_kill_9_while_a_dead_letter_is_unacknowledged_commits_nothing_past_the_poison"
            ),
            _node(
                "integration/test_kafka_failures",
                "test_an_unwritable_dlq_holds_the_partition_and_recovers_once_writable",
            ),
            _node(
                "unit/test_failure_policy",
                "test_a_destination_that_is_down_holds_the_partition_until_it_recovers",
            ),
        ),
    ),
    Mutant(
        "commit_before_outputs_acked",
        "at least once, a commit round commits the offsets before the outputs they cover are "
        "acknowledged: a crash (or a topic that refuses them) leaves inputs committed whose "
        "outputs never reached the topic",
        (
            _node(
                "unit/test_outputs",
                "test_nothing_is_committed_while_outputs_are_not_acknowledged",
            ),
            _node(
                "integration/test_kafka_outputs",
                "test_nothing_is_committed_before_its_outputs_are_acknowledged_and_kill_9_loses_none",
            ),
        ),
    ),
    Mutant(
        "failed_checkpoint_marked_committed",
        "the committer marks a partition committed although its own checkpoint failed (an "
        "exactly-once transaction that aborted): progress shown that never happened, and "
        "the partition never commits again",
        (
            _node(
                "unit/test_outputs",
                "test_a_partition_whose_checkpoint_fails_alone_holds_back_only_itself",
            ),
        ),
    ),
    Mutant(
        "checkpoint_at_a_lane_batchs_first",
        "with key lanes, the ledger does not hold the checkpoint back for a lane's batch "
        "that starts exactly at the low watermark: that record is committed while its "
        "outputs wait with the rest of the batch (a crash then loses them)",
        (
            _node(
                "unit/test_outputs_adversarial",
                "test_a_lane_batch_starting_at_the_low_watermark_holds_the_checkpoint_before_it",
            ),
        ),
    ),
    Mutant(
        "first_failure_rest_committed",
        "out of retries on a partial response (Lambda's rule), the records after the first "
        "failed one are committed with it although no invocation succeeded for them: a "
        "handler written as AWS documents (stop at the first failure) loses them",
        (
            _node(
                "unit/test_failure_policy",
                "test_a_handler_that_stops_at_the_first_failure_loses_nothing_when_retries_run_out",
            ),
            _node(
                "unit/test_failure_policy",
                "test_when_retries_run_out_the_first_failed_record_is_given_up_and_the_rest_tried"
                "_again",
            ),
        ),
    ),
    Mutant(
        "guard_reset_by_no_success",
        "a success of no records (a partial response whose first record failed, a window's "
        "final invoke) resets the dead-letter guard's run: a bad deploy reporting every "
        "record failed is never halted by max_consecutive_dead_letters and empties the "
        "stream into the DLQ",
        (
            _node(
                "unit/test_dlq_guard",
                "test_consecutive_limit_halts_a_handler_that_reports_every_record_failed",
            ),
            _node(
                "unit/test_dlq_guard",
                "test_consecutive_limit_halts_failed_only_reporting_every_record_failed",
            ),
            _node(
                "unit/test_dlq_guard",
                "test_a_window_final_invoke_of_no_records_does_not_reset_the_consecutive_limit",
            ),
        ),
    ),
    Mutant(
        "first_call_judged_again",
        "the retry loop judges the fast path's failed first call again instead of taking "
        "its judgement: a partial response readable once reads as no failures the second "
        "time, and the records it named failed are committed unhandled",
        (
            _node(
                "unit/test_first_call",
                "test_a_one_shot_iterable_naming_failed_records_has_them_retried",
            ),
            _node(
                "unit/test_first_call",
                "test_a_one_shot_iterable_that_raises_midway_fails_the_whole_invocation",
            ),
        ),
    ),
    Mutant(
        "commit_refused_marked_committed",
        "the committer marks every partition of a commit committed when the source refused "
        "some (OwnershipLost): progress shown that never happened, and the commit the "
        "partition's revoke still owes is skipped",
        (
            _node(
                "unit/test_commit_refusals",
                "test_a_partition_whose_commit_was_refused_still_owes_it_and_commits_it_on_revoke",
            ),
        ),
    ),
    Mutant(
        "feed_uncounted",
        "Partition.feed does not count fed records as unfinished: a partition whose handler "
        "is stuck never pauses, so buffering (and what a crash makes the next owner redo) "
        "has no bound",
        (
            *_both("test_a_partition_held_in_the_handler_stops_fetching_at_its_buffer_limit"),
            _node(
                "unit/test_pipeline",
                "test_a_full_buffer_pauses_the_partition_and_draining_resumes_it",
            ),
        ),
    ),
    Mutant(
        "partition_counters_kept",
        "Metrics.forget_partition removes a leaving partition's gauges but keeps its "
        "counters: a pod goes on exporting a partition it no longer owns, and sums across "
        "pods (an autoscaler's, a dashboard's) count it twice during a rebalance",
        (
            _node(
                "integration/test_kafka_scale_out",
                "test_a_partition_that_moves_leaves_no_series_behind_and_an_idle_pod_is_ready",
            ),
            _node(
                "unit/test_dlq_guard",
                "test_a_revoked_partition_leaves_no_series_behind_halted_included",
            ),
        ),
    ),
    Mutant(
        "release_beside_running_thread",
        "Assignments.release lets a revoked partition go at the deadline while a handler "
        "thread of it still runs: the next owner handles the same records beside the "
        "zombie (overlap, per-key order broken)",
        (
            _node(
                "integration/test_kafka_revoke",
                "test_a_thread_past_the_revoke_deadline_holds_the_partition_then_releases_it",
            ),
            _node(
                "integration/test_kafka_revoke",
                "test_a_thread_past_the_hold_limit_makes_the_worker_exit_3_and_the_next_owner"
                "_redoes_it",
            ),
            _node(
                "unit/test_revoke_hold",
                "test_a_thread_past_the_revoke_deadline_holds_the_partition_until_it_returns",
            ),
            _node(
                "unit/test_revoke_hold",
                "test_a_thread_past_the_hold_limit_fails_stop_with_exit_3_and_never_releases",
            ),
        ),
    ),
)


MUTANTS += (
    Mutant(
        "librdkafka_commit_fetched",
        "the librdkafka source commits the client's fetch position instead of the handled "
        "position it was given: records fetched but still in (or before) the handler are "
        "committed, and a crash loses them",
        (
            _crash(
                "test_kill_9_inside_batches_commits_none_of_them_and_a_restart_loses_nothing"
                "[librdkafka-1]"
            ),
            _node(
                "unit/test_librdkafka_source",
                "test_a_commit_sends_the_handled_positions_plus_one_never_the_fetch_position",
            ),
        ),
    ),
    Mutant(
        "librdkafka_commit_on_lost",
        "the librdkafka source tells the listener of lost partitions before it forgets "
        "them: a commit made while their batches are abandoned still reaches the broker, "
        "for partitions another member already reads",
        (
            _node(
                "unit/test_librdkafka_source",
                "test_a_lost_partition_is_never_committed_and_the_rest_still_are",
            ),
        ),
    ),
    Mutant(
        "librdkafka_fetch_waits_for_poller",
        "the librdkafka source's fetch waits for the poller however long a commit holds "
        "it (one waits for a coordinator in an outage): a SIGTERM then never starts the "
        "shutdown before the backstop kills the worker, nothing drained",
        (
            _node(
                "unit/test_librdkafka_source",
                "test_a_fetch_returns_in_time_while_the_poller_is_held_and_the_poll_is_not_lost",
            ),
            _node(
                "integration/test_librdkafka_outage",
                "test_a_fetch_returns_while_a_commit_waits_for_the_coordinator",
            ),
        ),
    ),
    Mutant(
        "shutdown_leaves_no_time_to_close",
        "the shutdown gives the drain and final commit the whole budget: in a broker "
        "outage the final commit waits it all out, the client's close starts after the "
        "budget and the backstop ends the worker before the shutdown completes",
        (
            _node(
                "unit/test_shutdown_budget",
                "test_the_source_is_stopped_with_the_reserve_left_while_the_final_commit_hangs",
            ),
        ),
    ),
    Mutant(
        "librdkafka_offset_resets_folded",
        "librdkafka's offset-reset warnings (records a partition skipped, and which) are "
        "folded by their text without numbers: a second partition's reset is only a count",
        (
            _node(
                "unit/test_log_folding",
                "test_librdkafka_offset_resets_are_each_shown_they_name_what_was_skipped",
            ),
        ),
    ),
    Mutant(
        "token_hook_systemexit_escapes",
        "a token hook raising SystemExit is not a failed token: it leaves the worker's "
        "event loop (async hooks) or librdkafka's oauth_cb, raised again in the next "
        "consume(): the worker ends mid-run with a traceback",
        (
            "tests/unit/test_librdkafka_oauth.py::"
            "test_a_hook_raising_systemexit_is_a_failed_token_not_the_end_of_the_worker[exits]",
            "tests/unit/test_librdkafka_oauth.py::"
            "test_a_hook_raising_systemexit_is_a_failed_token_not_the_end_of_the_worker"
            "[exits_async]",
        ),
    ),
    Mutant(
        "shutdown_budget_counts_from_when_seen",
        "the shutdown's budget counts from when the main loop saw the exit request (up to "
        "a fetch or a poll error's backoff later), the backstop's from the request: a "
        "drain to the full budget leaves the client's close too little of the grace",
        (
            _node(
                "unit/test_shutdown_budget",
                "test_the_budget_counts_from_the_exit_request_not_from_when_the_main_loop_saw_it",
            ),
        ),
    ),
    Mutant(
        "backstop_before_spent_budget_steps",
        "the backstop ends the daemon 1 s after a budget of 0 or 0.1 s, before the final "
        "commit and the client's close have had the 0.5 s each still gets: in a broker "
        "outage the worker never reaches `shutdown_complete`",
        (
            _node(
                "unit/test_shutdown_budget",
                "test_the_backstop_leaves_a_spent_budget_the_least_time_its_steps_take",
            ),
            "tests/integration/test_kafka_outage.py::"
            "test_sigterm_during_an_outage_exits_0_within_the_budget_and_a_restart_loses_nothing"
            "[librdkafka-0]",
        ),
    ),
    Mutant(
        "aborted_records_delivered",
        "the aiokafka source leaves the isolation level at aiokafka's default "
        "(read_uncommitted): records of aborted transactions reach the handler",
        (
            _node(
                "unit/test_kafka_isolation_level",
                "test_the_aiokafka_consumer_reads_at_the_configured_level[None]",
            ),
            _node(
                "integration/test_kafka_isolation",
                "test_records_of_an_aborted_transaction_are_never_handled[aiokafka]",
            ),
        ),
    ),
    Mutant(
        "librdkafka_commit_off_poller",
        "the librdkafka source commits from a thread other than the poller: a revoke's "
        "commit stalls while the poller waits in the revoke callback, the drained "
        "positions are never committed and the next owner redoes them",
        (
            _node(
                "unit/test_librdkafka_source",
                "test_a_revoke_commits_the_handled_positions_before_it_releases_the_partitions",
            ),
            _node(
                "integration/test_librdkafka_faults",
                "test_the_revokes_commit_goes_through_while_the_poller_is_in_the_callback",
            ),
        ),
    ),
    Mutant(
        "librdkafka_release_before_drain",
        "the librdkafka revoke callback unassigns before the listener drained and committed "
        "the revoked partitions: the rebalance goes on, the next owner starts from the old "
        "commit while this worker still runs their batches (two workers inside a partition)",
        (
            _node(
                "unit/test_librdkafka_source",
                "test_a_revoke_commits_the_handled_positions_before_it_releases_the_partitions",
            ),
        ),
    ),
    Mutant(
        "librdkafka_lost_drained",
        "the librdkafka lost callback is handled as a revoke: the lost partitions are "
        "drained and committed, moving the offset of the member that owns them now",
        (
            _node(
                "unit/test_librdkafka_source",
                "test_a_lost_partition_is_not_committed_even_by_a_commit_made_while_it_is_lost",
            ),
        ),
    ),
    Mutant(
        "settled_ignores_unfinished",
        "a partition counts as settled while records of it are buffered or in the handler: "
        "it is committed to the client's fetch position past transaction markers, and so "
        "past records not handled yet (a crash loses them)",
        (
            _node(
                "unit/test_settled_past_markers",
                "test_records_still_buffered_keep_the_position_from_being_committed",
            ),
            _node(
                "unit/test_settled_past_markers",
                "test_a_batch_in_the_handler_keeps_the_position_from_being_committed",
            ),
            *(
                _node(
                    "integration/test_kafka_settle_hostile",
                    f"test_records_waiting_for_their_batching_window_are_never_passed[{c}]",
                )
                for c in ("aiokafka", "librdkafka")
            ),
        ),
    ),
    Mutant(
        "fetch_trust_ignores_fetcher_buffer",
        "the aiokafka source trusts a fetch position while the fetcher still holds "
        "something of the partition: a record too large was skipped by one (its error "
        "not raised yet) and the settled partition is committed past it",
        (
            _node(
                "unit/test_kafka_fetch_trust",
                "test_aiokafka_a_partition_with_fetched_records_not_yet_returned_is_not_trusted",
            ),
        ),
    ),
    Mutant(
        "reset_to_the_end_for_latest",
        "with starting_position = latest, a checkpoint the log deleted past is reset to the "
        "partition's end: every record still in the log is skipped and committed past",
        (
            _node(
                "unit/test_kafka_expiry",
                "test_neither_client_resets_a_checkpoint_the_log_deleted_past_to_its_end[latest]",
            ),
            *(
                _node("integration/test_kafka_expired_offsets", f"{_EXPIRED}[{client}-latest]")
                for client in ("aiokafka", "librdkafka")
            ),
        ),
    ),
    Mutant(
        "librdkafka_waits_past_open_transactions",
        "librdkafka's source says records wait up to the high watermark under "
        "read_committed: a worker held at an open transaction, everything readable "
        "handled, is ended by the commit watchdog (exit 3)",
        (
            _node(
                "unit/test_librdkafka_stable",
                "test_an_open_transaction_ends_what_is_readable_at_the_last_stable_offset",
            ),
            _node(
                "integration/test_kafka_watchdog",
                "test_a_worker_held_at_an_open_transaction_is_not_stalled[librdkafka]",
            ),
        ),
    ),
    Mutant(
        "librdkafka_unconsumed_waits_past_open_transactions",
        "librdkafka's source, with nothing consumed since the assignment (its position "
        "unknown), says records wait up to the high watermark: a worker restarted or "
        "reassigned at an open transaction is ended by the watchdog, again and again",
        (
            _node(
                "unit/test_librdkafka_source",
                "test_a_partition_with_nothing_consumed_waits_only_up_to_its_last_stable_offset"
                "[5-False]",
            ),
            _node(
                "adversary/test_open_transactions_hide_no_stall",
                "test_a_worker_restarted_at_an_open_transaction_is_not_stalled[librdkafka]",
            ),
        ),
    ),
    Mutant(
        "stale_stable_offsets_trusted",
        "librdkafka's last stable offsets are used however old: a poller that stopped "
        "consuming keeps records looking unreadable, and the watchdog misses the stall",
        (
            _node(
                "unit/test_librdkafka_stable",
                "test_an_open_transaction_ends_what_is_readable_at_the_last_stable_offset",
            ),
        ),
    ),
    Mutant(
        "expiry_ignores_the_log_start",
        "librdkafka's records jumping ahead count as deleted offsets without the log start "
        "having moved: a compacted topic's holes and transaction markers are counted lost",
        (
            _node(
                "unit/test_kafka_expiry",
                "test_a_partitions_records_after_a_reset_are_told_from_its_holes",
            ),
        ),
    ),
    Mutant(
        "refetch_no_rewind",
        "the aiokafka source does not seek back after a getmany that raised: the records "
        "other partitions had drained in that call (a corrupt batch raised after them) are "
        "never returned, and their partitions are committed past them",
        (
            _node(
                "unit/test_kafka_refetch",
                "test_records_drained_before_a_raise_are_read_again_and_the_good_ones_before_it"
                "_come",
            ),
        ),
    ),
    Mutant(
        "librdkafka_bad_batch_bypassed",
        "the librdkafka source passes consume()'s messages on as they came: records after "
        "a batch that failed its CRC (librdkafka's skip past it, or a reset to the end by "
        "a garbage offset) are handed out and committed past the batch",
        (
            _node(
                "unit/test_librdkafka_corrupt",
                "test_the_source_hands_out_nothing_past_a_bad_batch_and_holds_it",
            ),
        ),
    ),
    Mutant(
        "bad_batch_retry_needs_an_error_fetch",
        "librdkafka: a fetch without errors (the C pass) skips `BadBatches.hold`, so the "
        "partition held at a bad batch, paused, is never resumed: a silent stall",
        (
            _node(
                "unit/test_librdkafka_corrupt",
                "test_a_stuck_partition_is_read_again_after_its_wait_by_fetches_without_errors",
            ),
        ),
    ),
    Mutant(
        "librdkafka_past_bad_batch_kept",
        "librdkafka: a bad batch's partition is sought back, but the records that came "
        "after its error in the same consume() are still handed out (and committed)",
        (
            _node(
                "unit/test_librdkafka_corrupt",
                "test_records_after_a_bad_batch_are_dropped_and_the_partition_held_at_it",
            ),
            _node(
                "unit/test_librdkafka_corrupt",
                "test_the_source_hands_out_nothing_past_a_bad_batch_and_holds_it",
            ),
        ),
    ),
    Mutant(
        "refetch_bypassed",
        "the aiokafka source calls getmany as it did before `refetch`: a corrupt batch's "
        "raise drops what other partitions drained in the same call (committed past, never "
        "handled), and the good records before the batch never come",
        (
            _node(
                "unit/test_kafka_refetch",
                "test_the_source_fetches_through_it_and_hands_out_every_record_once",
            ),
            _node(
                "integration/test_kafka_corrupt_batch",
                "test_a_corrupt_batch_loses_nothing_and_skips_nothing[aiokafka]",
            ),
        ),
    ),
    Mutant(
        "expired_end_not_trusted",
        "aiokafka: the log start sought past a deleted checkpoint is not trusted as read "
        "through: a log deleted to its end is never committed past (its lag stays, and "
        "every later owner counts the same offsets lost again)",
        (
            _node(
                "unit/test_kafka_refetch",
                "test_a_log_deleted_to_its_end_is_read_through_and_the_others_stay_trusted",
            ),
            _node("integration/test_kafka_expired_offsets", f"{_EMPTIED}[aiokafka]"),
        ),
    ),
    Mutant(
        "expired_reset_distrusts_all",
        "aiokafka: a reset distrusts every partition's position, not only the one out of "
        "range: of two logs deleted to their ends only the one reset last is committed past",
        (
            _node(
                "unit/test_kafka_refetch",
                "test_a_log_deleted_to_its_end_is_read_through_and_the_others_stay_trusted",
            ),
            _node("integration/test_kafka_expired_offsets", f"{_EMPTIED}[aiokafka]"),
        ),
    ),
    Mutant(
        "librdkafka_partition_end_ignored",
        "librdkafka: the end reached after a reset to an emptied log is not where reading "
        "stands (its position stays unset): the deleted checkpoint is never committed past",
        (
            _node(
                "unit/test_kafka_expiry",
                "test_librdkafka_reading_stands_at_the_partition_end_it_reached",
            ),
            _node("integration/test_kafka_expired_offsets", f"{_EMPTIED}[librdkafka]"),
        ),
    ),
    Mutant(
        "consume_waits_for_a_full_batch",
        "librdkafka: each fetch waits for `fetch_max_records` messages to be queued (or its "
        "timeout): the pipeline idles while the queue fills, a trickle waits 0.2 s a fetch",
        (
            _node(
                "unit/test_librdkafka_source",
                "test_a_fetch_returns_what_is_queued_without_waiting_for_a_full_batch",
            ),
        ),
    ),
    Mutant(
        "no_checkpoint_yet_a_failed_poll",
        "aiokafka: a new group's partition with no committed offset, raised once while the "
        "source still seeks it, is a failed poll: a warning, a poll error and a 1 s pause "
        "at every start of a new group",
        (
            _node(
                "unit/test_kafka_refetch",
                "test_no_committed_offset_while_the_source_seeks_is_not_a_failed_poll",
            ),
            _node(
                "integration/test_kafka_core",
                "test_clean_run_handles_every_record_once_in_order_and_commits_to_the_end"
                "[aiokafka]",
            ),
        ),
    ),
    Mutant(
        "revoked_in_a_split_fetch_handed_out",
        "librdkafka: the records of a partition revoked (or lost) inside a fetch's consume() "
        "are handed out as the source's: consume_queued's second call serves a revoke after "
        "the first returned that partition's records, which librdkafka no longer purges",
        (
            _node(
                "unit/test_librdkafka_source",
                "test_a_record_taken_before_a_revoke_in_the_same_fetch_is_not_handed_out",
            ),
            _node(
                "integration/test_librdkafka_faults",
                "test_records_taken_before_a_revoke_served_in_the_same_fetch_are_not_handed_out",
            ),
        ),
    ),
    Mutant(
        "fresh_start_not_committed",
        "Kafka: a partition the group has no checkpoint of starts where starting_position "
        "says, in memory only: a worker killed before its first commit leaves none, and with "
        "latest the next owner starts at the end again, skipping every record written since",
        (
            _node(
                "unit/test_kafka_start_commit",
                "test_aiokafka_commits_the_start_of_a_partition_without_checkpoint_before_it_flows",
            ),
            _node(
                "unit/test_kafka_start_commit",
                "test_librdkafka_commits_the_start_of_a_partition_without_checkpoint_before"
                "_assigning",
            ),
            *(
                _node(
                    "integration/test_kafka_fresh_group_start",
                    "test_latest_a_worker_killed_with_its_first_batches_inside_the_handler"
                    f"_loses_none[{client}]",
                )
                for client in ("aiokafka", "librdkafka")
            ),
        ),
    ),
    Mutant(
        "start_committed_before_the_fence",
        "aiokafka: a new partition's start is committed before the listener took it, so "
        "before exactly once fenced the earlier owner's producers and read the checkpoint "
        "again: a transaction that landed meanwhile is committed over, its records past it "
        "skipped",
        (
            _node(
                "unit/test_kafka_start_commit",
                "test_aiokafka_a_checkpoint_read_again_after_the_fence_is_not_overwritten",
            ),
            _node(
                "unit/test_kafka_start_commit",
                "test_aiokafka_commits_the_start_of_a_partition_without_checkpoint_before_it_flows",
            ),
        ),
    ),
    Mutant(
        "bad_batch_retry_resumes_a_paused_partition",
        "librdkafka: a partition waiting at a batch that fails its CRC is resumed when its "
        "retry wait ends even if the pipeline paused it meanwhile (its buffer full): it is "
        "read on past the memory budget",
        (
            _node(
                "unit/test_librdkafka_corrupt",
                "test_a_retry_never_resumes_a_partition_the_pipeline_paused",
            ),
        ),
    ),
    Mutant(
        "unsaved_start_forgotten",
        "Kafka: a start whose commit did not land goes with its partition: a worker cut off "
        "inside that commit, expired by the group and taking its partitions again with no "
        "checkpoint, starts at the end again (latest), skipping every record written since",
        (
            *(
                _node(
                    "unit/test_kafka_start_commit",
                    f"test_{client}_a_start_never_committed"
                    "_holds_when_its_partition_is_taken_again",
                )
                for client in ("aiokafka", "librdkafka")
            ),
            *(
                _node(
                    "adversary/test_start_commit_cut_off",
                    "test_latest_a_start_not_committed_holds_when_the_worker_takes_its"
                    f"_partitions_again[{client}]",
                )
                for client in ("aiokafka", "librdkafka")
            ),
        ),
    ),
    Mutant(
        "start_not_owed_at_release",
        "Kafka: a start whose commit did not land is not sent by the later commit rounds: a "
        "worker stopped (SIGTERM) inside its start commit, with nothing handled, leaves no "
        "checkpoint, and the next worker starts at the end again (latest), skipping every "
        "record written since",
        (
            *(
                _node(
                    "unit/test_kafka_start_commit",
                    f"test_{client}_a_start_not_committed_is_sent_by_the_final_commit",
                )
                for client in ("aiokafka", "librdkafka")
            ),
            _node(
                "adversary/test_start_commit_cut_off",
                "test_latest_a_start_cut_off_by_a_sigterm_is_committed_by_the_final_commit"
                "[aiokafka]",
            ),
        ),
    ),
    Mutant(
        "start_owed_after_a_commit_past_it",
        "Kafka: a start not known to be committed is still sent after a commit past it was "
        "sent (not acknowledged, so maybe landed): the checkpoint moves back",
        tuple(
            _node(
                "unit/test_kafka_start_commit",
                f"test_{client}_a_start_is_never_sent_after_a_commit_past_it",
            )
            for client in ("aiokafka", "librdkafka")
        ),
    ),
    Mutant(
        "cancelled_commit_request_unwatched",
        "aiokafka: the request a commit cancelled by its bound left in flight is not "
        "watched: its later failure is asyncio's 'Task exception was never retrieved' "
        "with a traceback, not a line",
        (
            _node(
                "unit/test_aiokafka_orphans",
                "test_a_request_left_by_a_cancelled_commit_is_said_when_it_ends[failed]",
            ),
            _node(
                "adversary/test_start_commit_cut_off",
                "test_latest_a_start_cut_off_by_a_sigterm_is_committed_by_the_final_commit"
                "[aiokafka]",
            ),
        ),
    ),
    Mutant(
        "transaction_beside_a_cancelled_commit",
        "aiokafka, exactly once: a commit in a transaction is sent while a request a "
        "cancelled commit of the consumer left in flight (the start's) still carries its "
        "partition: on another connection, that one lands after it and the checkpoint "
        "moves back (records handled again, outputs sent twice)",
        (
            _node(
                "unit/test_kafka_commit_order",
                "test_a_transaction_is_sent_after_the_start_commit_its_bound_cut_off",
            ),
            _node(
                "adversary/test_start_commit_cut_off",
                "test_exactly_once_a_cut_off_start_commit_never_lands_behind_a_transaction",
            ),
        ),
    ),
    Mutant(
        "aborted_transaction_passes_the_start",
        "aiokafka, exactly once: a transaction aborted before its commit (nothing of it "
        "landed) leaves a start it passed owed no more: while transactions fail, a start "
        "cut off at the take is never sent, and a worker stopped then leaves no checkpoint "
        "(latest: the next one starts at the end, past every record written since)",
        (
            _node(
                "unit/test_kafka_commit_order",
                "test_a_start_stays_owed_while_transactions_fail_before_their_commit[aborted]",
            ),
            _node(
                "adversary/test_start_commit_cut_off",
                "test_exactly_once_a_cut_off_start_is_committed_while_transactions_abort",
            ),
        ),
    ),
    Mutant(
        "transaction_in_doubt_said_aborted",
        "exactly once: a transaction that failed in its commit (maybe committed) is said "
        "to have landed nothing: a start it passed is sent after it and the checkpoint "
        "can move back",
        (
            _node(
                "unit/test_transaction_in_doubt",
                "test_a_transaction_failing_before_its_commit_says_none_of_it_landed",
            ),
        ),
    ),
    Mutant(
        "cancelled_commit_claims_another_request",
        "aiokafka: a cancelled commit watches every commit request started while it ran, "
        "another commit's too: that one's outcome is said as its own, and a transaction "
        "waits for a request of other partitions",
        (
            _node(
                "unit/test_aiokafka_orphans",
                "test_another_commits_request_started_meanwhile_is_not_said_as_this_ones",
            ),
        ),
    ),
    Mutant(
        "start_handed_out_unpinned",
        "Kinesis / DynamoDB Streams, latest: the first page of a shard with no checkpoint is "
        "handed out without its start pinned in the lease: a worker killed before its first "
        "checkpoint leaves none, and the next owner starts at the tip again, skipping every "
        "record written since",
        (
            _node(
                "unit/test_kinesis_latest_pin",
                "test_the_first_page_with_records_waits_for_its_start_to_be_pinned",
            ),
            *_KINESIS_LATEST,
        ),
    ),
    Mutant(
        "pinned_start_read_from_the_tip",
        "Kinesis / DynamoDB Streams: a lease whose start is pinned (and has no checkpoint) is "
        "read from the starting position, not AT the pin: with latest, the next owner of a "
        "killed worker's shard skips every record written since the pin",
        (
            _node(
                "unit/test_kinesis_latest_pin",
                "test_a_reader_of_a_pinned_start_reads_at_it_until_it_has_read_past_it",
            ),
            *_KINESIS_LATEST,
        ),
    ),
    Mutant(
        "child_read_from_the_tip",
        "Kinesis / DynamoDB Streams, latest: a shard made after the mapping started (a child "
        "of a split or merge, a DynamoDB Streams rollover) is read from the tip when taken, "
        "not from its oldest record: every record written to it before its parents ended "
        "and it was taken is skipped",
        (
            _node(
                "unit/test_kinesis_reshard_start",
                "test_a_reader_from_the_oldest_record_asks_for_it_until_it_has_read_past_it",
            ),
            *(
                _node(
                    "kinesis/test_reshard_start",
                    f"test_latest_a_reshard_after_the_start_loses_none_of_the_childrens_records[{how}]",
                )
                for how in ("split", "merge")
            ),
            _node(
                "kinesis/test_reshard_start",
                "test_dynamodb_latest_a_shard_made_after_the_start_is_read_from_its_oldest_record",
            ),
        ),
    ),
    Mutant(
        "old_child_rows_left_unmarked",
        "Kinesis / DynamoDB Streams, latest: a child's lease made by an older worker (no "
        "`start`) is never marked oldest: a child of a split or rollover during a rolling "
        "upgrade is read from the tip, skipping what was written to it before its take",
        (
            _node(
                "unit/test_kinesis_reshard_start",
                "test_a_lease_round_marks_a_childs_row_an_older_worker_made_before_it_takes_any",
            ),
            _node(
                "kinesis/test_reshard_start",
                "test_latest_a_reshard_after_the_start_loses_none_of_the_childrens_records"
                "[split-old-rows]",
            ),
        ),
    ),
    Mutant(
        "untaken_lease_counts_as_started",
        "Kinesis / DynamoDB Streams: a lease table holding leases nobody took yet counts as a "
        "mapping that started: a worker whose first sync runs beside another's makes the "
        "shards there at the start oldest (latest: a stream resharded yesterday replays its "
        "open children)",
        (
            _node(
                "unit/test_kinesis_reshard_start",
                "test_a_sync_beside_another_workers_first_one_still_makes_them_with_the_position",
            ),
        ),
    ),
    Mutant(
        "sync_reads_the_table_first",
        "Kinesis / DynamoDB Streams: a shard sync reads the lease table before it lists the "
        "shards: a worker that found nothing taken can list a shard made after a take in "
        "between and make its lease with the starting position (latest: read from the tip)",
        (
            _node(
                "unit/test_kinesis_reshard_start",
                "test_a_sync_lists_the_shards_before_it_reads_the_table[kinesis]",
            ),
            _node(
                "unit/test_kinesis_reshard_start",
                "test_a_sync_lists_the_shards_before_it_reads_the_table[dynamodb]",
            ),
        ),
    ),
    Mutant(
        "idle_member_never_ready",
        "librdkafka: a member whose first assignment is empty (more members than "
        "partitions) never tells the listener, so its readiness waits for ever: an idle "
        "pod stays unready",
        (
            _node(
                "unit/test_librdkafka_rebalance",
                "test_a_member_given_nothing_first_is_told_once_so_an_idle_pod_gets_ready",
            ),
        ),
    ),
    Mutant(
        "page_limit_unfitted",
        "Kinesis / DynamoDB Streams: every GetRecords asks for the service's cap (10,000 "
        "records, 10 MB) whatever the memory budget: the pages the readers hold sit outside "
        "the budget at any shard count",
        (
            _node(
                "unit/test_kinesis_page_fit",
                "test_the_reader_asks_each_call_for_the_fitted_limit_and_follows_the_records_size",
            ),
            _node(
                "kinesis/test_kinesis_page_fit",
                "test_each_page_of_a_backlog_fits_the_readers_part_of_the_budget",
            ),
        ),
    ),
    Mutant(
        "handler_given_the_policys_records",
        "the invoker hands a native handler the very records list the failure policy then "
        "bisects, retries and dead-letters: a handler that pops or clears it and fails has "
        "the records it removed committed, neither handled nor dead-lettered",
        (
            *(
                _node(
                    "unit/test_hostile_handlers",
                    "test_a_handler_that_changes_its_records_list_and_fails_has_all_of_them_dead_"
                    f"lettered[{case}]",
                )
                for case in ("True-pops_first-thread", "True-clears-async", "False-clears-thread")
            ),
            _node(
                "unit/test_hostile_handlers",
                "test_a_handler_that_reorders_its_records_is_judged_by_the_records_it_names",
            ),
        ),
    ),
    Mutant(
        "unawaited_coroutine_counted_as_result",
        "an async handler's returned coroutine (a missing await) is taken as its result: "
        "Lambda style, or with report_batch_item_failures off, the batch is committed and "
        "the coroutine never runs",
        tuple(
            _node(
                "unit/test_hostile_handlers",
                "test_an_async_handler_returning_a_coroutine_it_did_not_await_fails_its_batch"
                f"[{case}]",
            )
            for case in ("lambda", "native-report-off")
        ),
    ),
    Mutant(
        "window_state_shared_with_the_handler",
        "a tumbling window's state object is put into the event itself: a handler that "
        "changes it in place and fails gives its retry the changed state (counted twice)",
        (
            _node(
                "unit/test_hostile_handlers",
                "test_a_window_state_changed_in_place_by_a_failed_invoke_is_not_what_its_retry_gets",
            ),
        ),
    ),
    Mutant(
        "file_short_write_acknowledged",
        "the file destination takes one write(2) as the whole line: a write cut short by a "
        "full disk or a size limit is acknowledged, its records committed, its line cut "
        "and unreadable, the next line glued to it",
        (
            _node(
                "unit/test_file_destination_writes",
                "test_a_write_cut_short_by_a_file_size_limit_is_refused_and_leaves_no_partial_line",
            ),
        ),
    ),
    Mutant(
        "headers_read_again_after_failing",
        "librdkafka: the Lambda event's header column reads again the message whose "
        "headers failed to read (a header name that is not UTF-8): confluent-kafka then "
        "returns a list holding a NULL, and the worker dies of a segmentation fault",
        (
            _node(
                "unit/test_librdkafka_header_names",
                "test_the_lambda_event_reads_a_bad_message_once_and_gives_it_no_headers",
            ),
            _node(
                "integration/test_kafka_header_names",
                "test_a_lambda_handler_gets_the_record_without_its_headers_and_the_worker_lives",
            ),
        ),
    ),
    Mutant(
        "generator_exit_thrown_into_the_lane",
        "a GeneratorExit a handler raises in a thread travels on the call's future: asyncio "
        "throws it into the lane, which dies past every except of the failure path",
        (
            _node(
                "unit/test_handler_exits",
                "test_a_handler_that_exits_fails_its_batch_and_the_worker_runs_on"
                "[generator_exit-thread]",
            ),
        ),
    ),
    Mutant(
        "unreadable_checkpoint_taken_for_none",
        "librdkafka: a partition whose committed offset came back with an error (offset "
        "-1001) is taken as one without a checkpoint: under latest it starts at the end and "
        "that start is committed over the checkpoint it could not read, skipping records",
        (
            _node(
                "unit/test_librdkafka_start_offsets",
                "test_a_checkpoint_that_could_not_be_read_is_never_taken_for_none",
            ),
        ),
    ),
    Mutant(
        "commit_due_ignored",
        "the committer waits the whole commit interval even when a partition nears its "
        "uncommitted bound: at a high rate every partition pauses between rounds (the "
        "librdkafka worker read ~0.9M records/s instead of ~1.3M)",
        (
            _node(
                "unit/test_commit_when_due",
                "test_a_partition_at_half_its_uncommitted_bound_is_committed_before_the_interval",
            ),
        ),
    ),
    Mutant(
        "due_honoured_after_a_failed_round",
        "after a failed commit round a due partition cuts the wait short: in an outage "
        "the committer retries at the rate batches finish, not once an interval",
        (
            _node(
                "unit/test_commit_when_due",
                "test_after_a_failed_round_the_whole_interval_is_waited",
            ),
        ),
    ),
    Mutant(
        "due_judged_on_all_uncommitted",
        "a partition is due for an early commit by all it finished and did not commit, not "
        "by what a commit would take: with key lanes the units past a slow lane's gap keep "
        "it due, and every batch of the slow lane is a commit round (620/s against 10)",
        (
            _node(
                "unit/test_commit_when_due",
                "test_a_slow_lanes_gap_does_not_make_every_batch_a_round",
            ),
        ),
    ),
    Mutant(
        "refused_round_hurried",
        "a round refused for ownership (a rebalance) counts as one that succeeded: the "
        "refused partition stays due and every batch it finishes is another refused commit",
        (_node("unit/test_commit_when_due", "test_a_refused_round_keeps_the_whole_interval"),),
    ),
    Mutant(
        "due_judged_every_notify",
        "a partition's commit is judged due at every notify, not once a round: `commit_due` "
        "sums its finished units, so a lane running a fetch's batches without yielding is "
        "quadratic in the fetch (batch_size 1: 5,000 records/s against 35,000)",
        (_node("unit/test_commit_when_due", "test_due_is_judged_once_a_round_not_once_a_batch"),),
    ),
)


def by_name(name: str) -> Mutant:
    for mutant in MUTANTS:
        if mutant.name == name:
            return mutant
    raise KeyError(f"no mutant {name!r} (known: {', '.join(m.name for m in MUTANTS)})")
