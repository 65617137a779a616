import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.partition.offsets import OffsetTracker


def test_committable_is_the_end_of_the_finished_prefix():
    t = OffsetTracker()
    for last in (9, 19, 29):
        t.open(last)
    assert t.committable is None
    t.finish(19)
    assert t.committable is None  # 0..9 still running
    t.finish(9)
    assert t.committable == 19
    t.finish(29)
    assert t.committable == 29
    assert t.pending == 0


def test_batches_must_open_in_position_order():
    t = OffsetTracker()
    t.open(10)
    with pytest.raises(ValueError):
        t.open(5)


@given(
    gaps=st.lists(st.integers(1, 1000), min_size=1, max_size=60),
    data=st.data(),
)
def test_never_passes_an_unfinished_batch_in_any_completion_order(gaps, data):
    lasts, pos = [], -1
    for g in gaps:  # non-contiguous positions, as Kinesis sequence numbers are
        pos += g
        lasts.append(pos)
    order = data.draw(st.permutations(lasts))
    t = OffsetTracker()
    for last in lasts:
        t.open(last)
    finished: set[int] = set()
    for last in order:
        t.finish(last)
        finished.add(last)
        unfinished = [x for x in lasts if x not in finished]
        expected_prefix = [x for x in lasts if not unfinished or x < unfinished[0]]
        assert t.committable == (expected_prefix[-1] if expected_prefix else None)
        if t.committable is not None and unfinished:
            assert t.committable < unfinished[0]
    assert t.committable == lasts[-1]
