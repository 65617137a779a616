"""What the soak watches while it runs: a running tally of the handler's logs, and samples.

The checker (`tests/faults/checker.py`) judges a whole history at once, which is
the verdict at the end of a soak. During a long run the soak needs the same
numbers every minute without re-reading everything, so `Tally` reads only what
the logs gained since its last call and keeps compact state:

- per partition a `bytearray` of how often each offset was handled (saturating
  at 255), so distinct, duplicated and extra handlings cost a byte per record;
- per epoch (one worker process's ownership of one partition, by the checker's
  rule: the latest `event=assigned` at or before the handling's wall time) the
  last offset and each key's last seq, for the order rule.

Assignments are read after the handled lines of the same call: a worker logs
`event=assigned` before any batch of that assignment starts, so every handled line
read has its epoch's start already in the log.

`Sampler` is a thread that feeds the tally every `interval_s` and keeps a
`Sample` per tick: records acknowledged and handled, and each worker slot's RSS
from `/proc/PID/status`. It prints one progress line every `report_every_s`.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.faults.checker import Handled, parse_assignments, parse_handled

GROW = 65_536  # offsets added to a partition's counts at a time


def rss_bytes(pid: int) -> int | None:
    """Resident set size of `pid` (VmRSS), or None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _read_new(path: Path, consumed: dict[Path, int]) -> str:
    """The complete lines `path` gained since the last call (an unfinished last line waits)."""
    start = consumed.get(path, 0)
    try:
        with path.open("rb") as f:
            f.seek(start)
            data = f.read()
    except OSError:
        return ""
    end = data.rfind(b"\n") + 1
    consumed[path] = start + end
    return data[:end].decode(errors="replace")


@dataclass
class Tally:
    """Running counts of the handler logs under `log_dir` (see the module docstring)."""

    log_dir: Path
    handled: int = 0
    distinct: int = 0
    duplicated: int = 0  # distinct records handled more than once
    extra: int = 0  # handlings beyond each record's first
    order_violations: int = 0
    _consumed: dict[Path, int] = field(default_factory=dict)
    _starts: dict[tuple[int, int], list[float]] = field(default_factory=lambda: defaultdict(list))
    _counts: dict[int, bytearray] = field(default_factory=dict)
    _last_offset: dict[tuple[int, int, int], int] = field(default_factory=dict)
    _last_seq: dict[tuple[int, int, int, str], int] = field(default_factory=dict)

    def feed(self, worker_logs: dict[int, Path]) -> None:
        """Read what the handler logs gained, then the assignments the workers logged."""
        chunks = [parse_handled(_read_new(p, self._consumed)) for p in self._handled_files()]
        for pid, path in worker_logs.items():
            for a in parse_assignments(_read_new(path, self._consumed), pid):
                for partition in a.partitions:
                    bisect.insort(self._starts[(pid, partition)], a.wall)
        for chunk in chunks:
            for h in chunk:
                self._count(h)

    def times_handled(self, partition: int, offset: int) -> int:
        counts = self._counts.get(partition)
        return counts[offset] if counts is not None and offset < len(counts) else 0

    def _handled_files(self) -> list[Path]:
        return sorted(self.log_dir.glob("handled.*"))

    def _count(self, h: Handled) -> None:
        self.handled += 1
        counts = self._counts.setdefault(h.partition, bytearray())
        if h.offset >= len(counts):
            counts.extend(bytes(h.offset - len(counts) + GROW))
        n = counts[h.offset]
        if n == 0:
            self.distinct += 1
        else:
            self.extra += 1
            self.duplicated += n == 1
        counts[h.offset] = min(n + 1, 255)
        epoch = bisect.bisect_right(self._starts.get((h.pid, h.partition), []), h.wall)
        lane = (h.pid, h.partition, epoch)
        previous = self._last_offset.get(lane)
        violated = previous is not None and h.offset <= previous
        self._last_offset[lane] = h.offset
        seq = self._last_seq.get((*lane, h.key))
        violated |= seq is not None and h.seq <= seq
        self._last_seq[(*lane, h.key)] = h.seq
        self.order_violations += violated


@dataclass(frozen=True, slots=True)
class Sample:
    t: float  # seconds since the soak started
    acked: int
    handled: int
    rss: dict[str, int | None]  # worker slot -> bytes (None: no process in the slot now)


class Sampler(threading.Thread):
    """Feeds the tally and samples the run every `interval_s` (see the module docstring).

    `observe` returns (records acknowledged so far, {slot: pid or None}, {pid: log path
    of every worker process ever started}); `progress` is called with each sample due
    for a progress line. Both run on this thread.
    """

    def __init__(
        self,
        tally: Tally,
        observe: Callable[[], tuple[int, dict[str, int | None], dict[int, Path]]],
        progress: Callable[[Sample], None],
        interval_s: float = 1.0,
        report_every_s: float = 60.0,
    ) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.tally, self._observe, self._progress = tally, observe, progress
        self._interval_s, self._report_every_s = interval_s, report_every_s
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self._samples: list[Sample] = []
        self.started = time.monotonic()
        self.error: BaseException | None = None

    @property
    def samples(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)

    def run(self) -> None:
        next_report = self._report_every_s
        try:
            while not self._stop_event.wait(self._interval_s):
                sample = self.sample_once()
                if sample.t >= next_report:
                    next_report += self._report_every_s
                    self._progress(sample)
        except BaseException as exc:  # kept for the main thread: a dead sampler fails the run
            self.error = exc
            raise

    def sample_once(self) -> Sample:
        acked, slots, logs = self._observe()
        self.tally.feed(logs)
        rss = {slot: (rss_bytes(pid) if pid is not None else None) for slot, pid in slots.items()}
        sample = Sample(time.monotonic() - self.started, acked, self.tally.handled, rss)
        with self._lock:
            self._samples.append(sample)
        return sample

    def stop(self) -> None:
        self._stop_event.set()
        self.join(30)
