"""Outputs into the memory broker's topics, for tests of handlers that `batch.send`.

The same contract, and the same code, as the Kafka sink at least once: a round's
outputs are appended (acknowledged) before its offsets are committed. `fail` makes the
next rounds' sends fail, as a broker that does not acknowledge would.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from worker.outputs.outbox import Output
from worker.outputs.sink import Holder, OutputsFailed, acked_then_committed
from worker.sources.base import Source
from worker.sources.memory import MemoryBroker


class MemoryOutputs:
    round_timeout_s = 10.0

    def __init__(self, broker: MemoryBroker) -> None:
        self._broker = broker
        self.fail = False
        #: Partitions whose checkpoints fail on their own, as a transaction of theirs would.
        self.refuse: set[Hashable] = set()
        #: Rounds (or partitions' checkpoints) whose sends failed.
        self.failures = 0

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def assigned(self, source: Source, keys: Sequence[Hashable]) -> None:
        return None

    async def revoked(self, keys: Sequence[Hashable]) -> None:
        return None

    async def checkpoint(
        self, source: Source, moved: Sequence[tuple[Holder, int]]
    ) -> Mapping[Hashable, Exception]:
        refused = {p.key for p, _ in moved if p.key in self.refuse}
        self.failures += len(refused)
        await acked_then_committed(source, [m for m in moved if m[0].key not in refused],
                                   self._send)  # fmt: skip
        return {key: OutputsFailed("outputs: refused (refuse)") for key in refused}

    async def _send(self, outputs: Sequence[Output]) -> None:
        if self.fail:
            self.failures += 1
            raise OutputsFailed("outputs: the memory broker refuses (fail = True)")
        for o in outputs:
            self._broker.produce(o.topic, o.value, key=o.key, headers=o.headers)
