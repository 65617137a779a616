"""A lease table that cannot be reached for a moment while checkpointing (DynamoDB
endpoint down: botocore raises EndpointConnectionError, a BotoCoreError, not a
ClientError). The lease renewal rides it out; a checkpoint must too (the committer
retries ConnectionError), not crash the committer task and end the worker with status 1.
Fault injected with a botocore before-call hook on the checkpoint's UpdateItem."""

from __future__ import annotations

import uuid

from aiobotocore.session import get_session
from botocore.exceptions import EndpointConnectionError

from scripts.emulators import Emulator
from tests.kinesis.conftest import aws_credentials, dynamodb, kinesis  # noqa: F401
from tests.kinesis.test_kinesis_faults import run_until
from tests.kinesis.test_kinesis_source import config, make_stream
from worker.runtime.worker import Worker
from worker.sources.kinesis.source import KinesisSource


async def test_a_checkpoint_that_cannot_reach_the_lease_table_is_retried(
    kinesis: Emulator,  # noqa: F811
    dynamodb: Emulator,  # noqa: F811
):
    stream = await make_stream(kinesis, shards=1, records=50)
    session = get_session()
    failed = {"n": 0}

    def inject(model, params, **kwargs):  # botocore's before-call hook
        body = params.get("body") or b""
        if isinstance(body, str):
            body = body.encode()
        if b"#checkpoint" in body and failed["n"] < 3:
            failed["n"] += 1
            raise EndpointConnectionError(endpoint_url=dynamodb.url)

    session.register("before-call.dynamodb.UpdateItem", inject)
    cfg = config(kinesis, dynamodb, stream, f"leases-{uuid.uuid4().hex[:6]}")
    seen: list[str] = []

    async def handler(batch) -> None:
        seen.extend(r.sequence_number for r in batch.records)

    worker = Worker(cfg, source=KinesisSource(cfg.source, session), handler=handler)
    committed = worker.metrics.records_committed

    def all_committed() -> bool:
        return sum(s.value for m in committed.collect() for s in m.samples
                   if s.name.endswith("_total")) >= 50  # fmt: skip

    await run_until(worker, lambda: len(seen) >= 50 and all_committed(), 60)
    assert failed["n"] == 3
    assert worker.tasks.crashed is None, worker.tasks.crashed
    assert worker.exit_code == 0
