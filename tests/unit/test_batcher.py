from itertools import chain

from hypothesis import given
from hypothesis import strategies as st

from worker.partition.batcher import Batcher
from worker.testing import make_batch


def records(sizes: list[int], start: int = 0) -> list:
    return list(make_batch([b"x" * s for s in sizes], first_offset=start).records)


def size(r) -> int:
    return len(r.value)


def test_cuts_a_full_batch_by_count_at_once():
    b = Batcher(batch_size=3, max_bytes=10**9, window_s=60, record_size=size)
    b.add(records([1] * 7), now=0.0)
    assert [r.offset for r in b.take(now=0.0)] == [0, 1, 2]
    assert [r.offset for r in b.take(now=0.0)] == [3, 4, 5]
    assert b.take(now=0.0) is None  # one left, window not over


def test_partial_batch_is_due_when_the_window_after_its_first_record_ends():
    b = Batcher(batch_size=100, max_bytes=10**9, window_s=0.5, record_size=size)
    b.add(records([1, 1]), now=10.0)
    b.add(records([1], start=2), now=10.4)
    assert b.deadline() == 10.5
    assert b.take(now=10.49) is None
    assert [r.offset for r in b.take(now=10.5)] == [0, 1, 2]
    assert b.deadline() is None


def test_batch_stops_before_the_byte_limit():
    b = Batcher(batch_size=100, max_bytes=10, window_s=60, record_size=size)
    b.add(records([4, 4, 4, 4]), now=0.0)
    assert [r.offset for r in b.take(now=0.0)] == [0, 1]
    assert b.bytes == 8


def test_a_record_larger_than_the_byte_limit_goes_alone():
    b = Batcher(batch_size=100, max_bytes=10, window_s=60, record_size=size)
    b.add(records([50, 1]), now=0.0)
    assert [r.offset for r in b.take(now=0.0)] == [0]


def test_clear_returns_everything_pending_and_empties():
    b = Batcher(batch_size=2, max_bytes=10**9, window_s=60, record_size=size)
    b.add(records([1, 1, 1]), now=0.0)
    b.take(now=0.0)
    assert [r.offset for r in b.clear()] == [2]
    assert b.records == 0 and b.bytes == 0 and b.deadline() is None


@given(
    chunks=st.lists(st.lists(st.integers(0, 20), min_size=1, max_size=30), min_size=1, max_size=8),
    batch_size=st.integers(1, 25),
    max_bytes=st.integers(1, 120),
)
def test_batches_keep_order_lose_nothing_and_respect_limits(chunks, batch_size, max_bytes):
    b = Batcher(batch_size=batch_size, max_bytes=max_bytes, window_s=1.0, record_size=size)
    fed, out, offset = [], [], 0
    for sizes in chunks:
        chunk = records(sizes, start=offset)
        offset += len(sizes)
        fed.extend(chunk)
        b.add(chunk, now=0.0)
        while (batch := b.take(now=0.0)) is not None:
            out.append(batch)
    while (batch := b.take(now=5.0)) is not None:
        out.append(batch)
    assert [r.offset for r in chain.from_iterable(out)] == [r.offset for r in fed]
    for batch in out:
        assert 1 <= len(batch) <= batch_size
        assert len(batch) == 1 or sum(map(size, batch)) <= max_bytes
    assert b.records == 0 and b.bytes == 0
