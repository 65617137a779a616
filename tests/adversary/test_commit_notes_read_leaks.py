"""The guard notes' read on assignment against a broker address that accepts and never
answers (a frozen broker: the kernel still completes the TCP handshake).

Held: the read is bounded (READ_TIMEOUT_S), as it must be inside a rebalance, and the
half-started admin client leaves no connection behind.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import TopicPartition

from worker.sources.kafka import notes
from worker.sources.kafka.notes import CommitNotes


async def test_a_read_that_times_out_leaves_no_connection_behind(monkeypatch):
    monkeypatch.setattr(notes, "READ_TIMEOUT_S", 0.5)
    peers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer)
        await reader.read()  # until the client closes its end

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reads = CommitNotes({"bootstrap_servers": f"127.0.0.1:{port}"}, "g")
        reads.keep()
        started = time.monotonic()
        for _ in range(3):  # three assignments during the outage
            await reads.load([TopicPartition("t", 0)])
        assert time.monotonic() - started < 3 * 0.5 + 1.5  # bounded: that part holds
        await asyncio.sleep(0.3)
        still_open = [w for w in peers if not w.transport.is_closing() and not _eof(w)]
        assert len(peers) >= 3, peers  # each read did reach the frozen address
        await reads.close()
        assert len(still_open) == 0, f"{len(still_open)} of {len(peers)} connections left open"
    finally:
        for w in peers:
            w.close()
        server.close()


def _eof(writer: asyncio.StreamWriter) -> bool:
    protocol = writer.transport.get_protocol()
    reader = getattr(protocol, "_stream_reader", None)
    return reader is not None and reader.at_eof()
