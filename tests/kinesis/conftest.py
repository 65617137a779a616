from collections.abc import Iterator

import pytest

from scripts.emulators import Emulator, start_dynamodb, start_kinesis


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Emulators accept any credentials; never let a test reach real AWS ones."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="session")
def dynamodb() -> Iterator[Emulator]:
    emulator = start_dynamodb()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="module")
def kinesis() -> Iterator[Emulator]:
    """One kinesis-local per test module: it is slow to write to and grows in memory."""
    emulator = start_kinesis()
    try:
        yield emulator
    finally:
        emulator.stop()
