"""A partition's outputs between their invoke and their checkpoint.

Kept by the partition (their only owner) per batch that sent them, by the batch's
first and last input position. A batch's outputs may leave only with a checkpoint at
or past its last position, so they never go out before the offsets that cover their
input would. With several key lanes a checkpoint can fall inside a lane's batch (the
segments it spans finish one by one): `first_beyond` then holds the checkpoint back to
just before that batch (`held_back`), so no record of it is committed until its outputs
go with it,
and nothing goes past the low watermark. Work is per batch.
"""

from __future__ import annotations

from worker.outputs.outbox import Output

#: An output's memory beyond its bytes (the object, its list slot): an estimate.
OUTPUT_OVERHEAD_BYTES = 200


def output_bytes(o: Output) -> int:
    return (len(o.value or b"") + len(o.key or b"") + OUTPUT_OVERHEAD_BYTES
            + sum(len(k) + len(v) for k, v in o.headers))  # fmt: skip


class OutputLedger:
    __slots__ = ("_batches", "bytes", "count")

    def __init__(self) -> None:
        #: last position -> (first position, outputs, bytes) of each batch with outputs.
        self._batches: dict[int, tuple[int, list[Output], int]] = {}
        self.count = 0
        #: Their estimated memory: they wait in it for as long as the checkpoint does (an
        #: output topic refusing writes), so the partition's buffer limits count them.
        self.bytes = 0

    def add(self, first: int, last: int, outputs: list[Output]) -> None:
        if outputs:
            size = sum(output_bytes(o) for o in outputs)
            self._batches[last] = (first, outputs, size)
            self.count += len(outputs)
            self.bytes += size

    def held_back(self, position: int) -> int | None:
        """`position`, or just before the earliest batch with outputs that a checkpoint
        there would cut through (covering its first record, not its last); None if that
        is before anything (the batch starts the partition's first fetch)."""
        firsts = [first for last, (first, _, _) in self._batches.items()
                  if last > position and first <= position]  # fmt: skip
        if not firsts:
            return position
        cut = min(firsts) - 1
        return cut if cut >= 0 else None

    def upto(self, position: int) -> list[Output]:
        """The outputs a checkpoint at `position` covers, in the order their batches ended."""
        batches = self._batches
        return [o for last in sorted(batches) if last <= position for o in batches[last][1]]

    def bytes_upto(self, position: int) -> int:
        """The bytes of the outputs a checkpoint at `position` covers."""
        return sum(size for last, (_, _, size) in self._batches.items() if last <= position)

    def drop_upto(self, position: int) -> None:
        """They were acknowledged (or committed in a transaction): never send them again."""
        for last in [last for last in self._batches if last <= position]:
            _, outputs, size = self._batches.pop(last)
            self.count -= len(outputs)
            self.bytes -= size
