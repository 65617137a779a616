"""Handlers for the process-pool tests (importable by the spawned children)."""

import hashlib
import os


def digest(batch):
    """CPU work per record; records whose value holds b"bad" are reported failed."""
    lines = []
    failed = []
    for r in batch.records:
        h = hashlib.sha256(r.value)
        for _ in range(200):
            h = hashlib.sha256(h.digest())
        lines.append(f"{r.partition} {r.offset} {h.hexdigest()}\n")
        if b"bad" in r.value:
            failed.append(r)
    with open(os.path.join(os.environ["RESULT_DIR"], f"out.{os.getpid()}"), "a") as fh:
        fh.write("".join(lines))
    return failed


def crash_once(batch):
    """Kills its own process the first time it sees offset 5; later calls succeed."""
    marker = os.path.join(os.environ["RESULT_DIR"], "crashed")
    if any(r.offset == 5 for r in batch.records) and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)
    with open(os.path.join(os.environ["RESULT_DIR"], f"out.{os.getpid()}"), "a") as fh:
        fh.write("".join(f"{r.partition} {r.offset} ok\n" for r in batch.records))


def echo_event(event, context):
    """Lambda style: hand back the event this process built (with a live context)."""
    assert context.get_remaining_time_in_millis() > 0
    return event


def hang_first_call(batch):
    """The first call (per RESULT_DIR) hangs far past any timeout; later ones check it is gone."""
    directory = os.environ["RESULT_DIR"]
    first = os.path.join(directory, "first.pid")
    calls = os.path.join(directory, "calls")
    if not os.path.exists(first):
        with open(first, "w") as fh:
            fh.write(str(os.getpid()))
        with open(calls, "a") as fh:
            fh.write(f"enter {os.getpid()} first\n")
        import time

        time.sleep(120)
        with open(calls, "a") as fh:  # never reached: the process is killed
            fh.write(f"exit {os.getpid()} first\n")
        return None
    with open(first) as fh:
        first_pid = int(fh.read())
    alive = os.path.exists(f"/proc/{first_pid}")
    with open(calls, "a") as fh:
        fh.write(f"enter {os.getpid()} first_alive={alive} offsets={batch.records[0].offset}\n")
    return None


def echo_pid(batch):
    return os.getpid()


def raises_on_bad(batch):
    """Raises for a batch holding a record whose value is b"bad" (the line `raised_at` names)."""
    if any(r.value == b"bad" for r in batch.records):
        raise ValueError("bad reading")


class NeedsTwoArgs(Exception):
    """Pickles by its `args` (one), so unpickling calls it with one: a TypeError."""

    def __init__(self, reading, why):
        super().__init__(reading)
        self.why = why


def unportable_on_bad(batch):
    """b"bad": raises an error that cannot be unpickled; b"lambda": returns a lambda;
    anything else takes a moment, so calls of other partitions are in the pool meanwhile."""
    import time

    for r in batch.records:
        if r.value == b"bad":
            raise NeedsTwoArgs(r.value, "unreadable")
        if r.value == b"lambda":
            return lambda: None
    time.sleep(0.2)
