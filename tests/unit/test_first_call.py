"""The first call of a batch is judged once: `resolve`'s fast path must hand the retry
loop the judgement it made, not the outcome to judge again.

A handler's partial response may be any iterable. An iterator is read to a list where
the handler runs (`materialise`), but an iterable that is not one is read by the judge:
one whose `__iter__` hands out the same iterator each time is read once only, and one
that raised midway (an invalid response) is left exhausted. Judged a second time, either
reads as "no failures": the records it named failed would be committed as handled,
never retried or given up.
"""

from worker.testing import MemoryBroker, fully_committed, running_worker, wait_until

TOPIC = "t"


class OneShot:
    """An iterable that is not an iterator, readable once (it wraps one iterator)."""

    def __init__(self, items) -> None:
        self._items = iter(items)

    def __iter__(self):
        return self._items


def one_partition(n: int) -> MemoryBroker:
    broker = MemoryBroker()
    broker.create_topic(TOPIC, 1)
    for i in range(n):
        broker.produce(TOPIC, b"%d" % i, partition=0)
    return broker


async def run(reply, errors, n=6) -> list[list[int]]:
    calls: list[list[int]] = []

    async def handler(batch):
        calls.append([r.offset for r in batch.records])
        return reply(batch, len(calls))

    settings = {"batching": {"batch_size": n}, "errors": errors}
    broker = one_partition(n)
    async with running_worker(handler, broker, [TOPIC], settings):
        await wait_until(lambda: fully_committed(broker, "test", [TOPIC]))
    return calls


async def test_a_one_shot_iterable_naming_failed_records_has_them_retried():
    def reply(batch, n):
        return OneShot(r.offset for r in batch.records if n == 1 and r.offset in (2, 4))

    calls = await run(reply, {"partial_retry": "failed_only"})
    assert calls == [[0, 1, 2, 3, 4, 5], [2, 4]]


async def test_a_one_shot_iterable_that_raises_midway_fails_the_whole_invocation():
    def reply(batch, n):
        def items():
            yield batch.records[0].offset
            raise RuntimeError("the response broke")

        return OneShot(items()) if n == 1 else None

    calls = await run(reply, {"bisect_batch_on_function_error": False})
    assert calls == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]]
