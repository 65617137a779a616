"""The commit watchdog, on a stand-in worker and a hand-driven clock."""

from types import SimpleNamespace

from worker.watchdog import EXIT_STALLED, CommitWatchdog, stacks


class FakeWorker:
    def __init__(self) -> None:
        self.lanes = {"p0": SimpleNamespace(label="t-0", committed=10)}
        self.lag = {"p0": 50}
        self.source = SimpleNamespace(lag=lambda key: self.lag[key])
        self.rebalancing = False
        self.exit_code = 0

    def request_exit(self, code: int) -> None:
        self.exit_code = code


def test_commits_that_stop_while_records_wait_trip_it_after_the_timeout():
    worker, now = FakeWorker(), [0.0]
    dog = CommitWatchdog(worker, 10, clock=lambda: now[0])
    for t in (0.0, 5.0, 9.9):
        now[0] = t
        dog.check()
    assert dog.stalled is None
    now[0] = 10.0
    dog.check()
    assert dog.stalled and "t-0" in dog.stalled and worker.exit_code == EXIT_STALLED


def test_advancing_commits_or_no_lag_keep_it_quiet():
    worker, now = FakeWorker(), [0.0]
    dog = CommitWatchdog(worker, 10, clock=lambda: now[0])
    for t in range(0, 60, 5):
        now[0] = float(t)
        worker.lanes["p0"].committed += 1  # progress
        dog.check()
    worker.lag["p0"] = 0  # nothing waiting: an idle partition is not stalled
    for t in range(60, 120, 5):
        now[0] = float(t)
        dog.check()
    assert dog.stalled is None


def test_a_rebalance_restarts_the_clock():
    worker, now = FakeWorker(), [0.0]
    dog = CommitWatchdog(worker, 10, clock=lambda: now[0])
    dog.check()
    now[0], worker.rebalancing = 8.0, True
    dog.check()
    now[0], worker.rebalancing = 12.0, False
    dog.check()  # the timer starts again here
    now[0] = 21.0
    dog.check()
    assert dog.stalled is None


def test_the_stack_dump_names_this_thread():
    assert "thread MainThread" in stacks()
