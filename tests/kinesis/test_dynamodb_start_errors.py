"""Start-up failures of the DynamoDB source are one `error:` line (exit 1), no traceback:
a table without a stream, a table that does not exist, a stream ARN of no table."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from scripts.emulators import Emulator
from tests.kinesis.dynamodb_tables import client

ROOT = Path(__file__).resolve().parents[2]
MISSING_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/gone/stream/2026-01-01T00:00:00.000"


async def table_without_stream(dynamodb: Emulator) -> str:
    name = f"plain-{uuid.uuid4().hex[:6]}"
    async with client(dynamodb) as ddb:
        await ddb.create_table(
            TableName=name, KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )  # fmt: skip
    return name


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ('table_name = "{plain}"', "has no stream"),
        ('table_name = "no-such-table"', "no-such-table"),
        (f'stream_arn = "{MISSING_ARN}"', "gone"),
    ],
)
async def test_a_stream_that_cannot_be_read_stops_the_start_with_one_error_line(
    dynamodb: Emulator, tmp_path: Path, source: str, says: str
):
    if "{plain}" in source:
        source = source.format(plain=await table_without_stream(dynamodb))
    (tmp_path / "w.toml").write_text(
        f'[source]\nkind = "dynamodb"\n{source}\nregion = "us-east-1"\n'
        f'endpoint_url = "{dynamodb.url}"\n[metrics]\nenabled = false\n'
    )
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "worker", "run", "--config", str(tmp_path / "w.toml")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1, result.stderr[-2000:]
    assert len(errors) == 1 and says in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
