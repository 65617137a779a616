"""`worker event` makes a sample event; `worker invoke` runs the handler once on it."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def worker(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        capture_output=True, text=True, cwd=ROOT, input=stdin, timeout=60,
    )  # fmt: skip


def config(tmp_path: Path, target: str, style: str) -> str:
    path = tmp_path / "w.toml"
    path.write_text(f'[source]\ntopics=["t"]\n[handler]\ntarget="{target}"\nstyle="{style}"\n')
    return str(path)


def test_invoke_prints_the_lambda_handlers_response_and_the_time(tmp_path):
    event = worker("event", "kafka", "--key", "dev-1", "--value", "not json")
    assert event.returncode == 0
    (tmp_path / "event.json").write_text(event.stdout)
    result = worker(
        "invoke", "--config", config(tmp_path, "handlers.lambda_iot:lambda_handler", "lambda"),
        "--event", str(tmp_path / "event.json"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "batchItemFailures": [{"itemIdentifier": {"partition": "telemetry-0", "offset": 0}}]
    }
    assert "took " in result.stderr and " ms" in result.stderr


def test_invoke_reads_the_event_from_stdin_and_runs_a_native_handler(tmp_path):
    value = json.dumps({"device_id": "d", "seq": 1, "metrics": {"temperature": 1, "humidity": 2,
                        "battery": 3}})  # fmt: skip
    event = worker("event", "kafka", "--value", value).stdout
    result = worker(
        "invoke", "--config", config(tmp_path, "handlers.iot_telemetry:handle", "native"),
        "--event", "-", stdin=event,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "null"


def test_invoke_reports_a_handler_error_as_lambda_does(tmp_path):
    (tmp_path / "boom.py").write_text("def handler(event, context):\n    raise KeyError('x')\n")
    event = worker("event", "kinesis").stdout
    (tmp_path / "e.json").write_text(event)
    result = subprocess.run(
        [sys.executable, "-m", "worker", "invoke", "--config",
         config(tmp_path, "boom:handler", "lambda"), "--event", str(tmp_path / "e.json")],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 1
    assert json.loads(result.stdout) == {"errorType": "KeyError", "errorMessage": "'x'"}


def test_the_sample_kinesis_event_has_the_documented_shape():
    event = json.loads(worker("event", "kinesis", "--key", "pk", "--value", "hi").stdout)
    (record,) = event["Records"]
    assert record["kinesis"]["partitionKey"] == "pk"
    assert record["kinesis"]["data"] == "aGk="
    assert record["eventID"] == f"shardId-000000000000:{record['kinesis']['sequenceNumber']}"


def dynamodb_config(tmp_path: Path, target: str, style: str) -> str:
    path = tmp_path / "d.toml"
    path.write_text(f'[source]\nkind="dynamodb"\ntable_name="devices"\n'
                    f'[handler]\ntarget="{target}"\nstyle="{style}"\n')  # fmt: skip
    return str(path)


def test_a_dynamodb_sample_event_runs_the_example_registry_handler_and_a_native_one(tmp_path):
    cfg = dynamodb_config(tmp_path, "handlers.device_registry:lambda_handler", "lambda")
    good = worker("event", "--config", cfg, "--key", "device_id",
                  "--value", '{"device_id": "dev-1", "firmware": "1.2", "version": 3}')  # fmt: skip
    assert good.returncode == 0, good.stderr
    record = json.loads(good.stdout)["Records"][0]
    assert record["eventSource"] == "aws:dynamodb" and record["eventName"] == "INSERT"
    assert record["dynamodb"]["Keys"] == {"device_id": {"S": "dev-1"}}
    assert ":table/devices/stream/" in record["eventSourceARN"]
    (tmp_path / "good.json").write_text(good.stdout)
    result = worker("invoke", "--config", cfg, "--event", str(tmp_path / "good.json"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"batchItemFailures": []}
    bad = worker("event", "dynamodb", "--value", '{"device_id": "dev-2", "firmware": "x"}')
    result = worker("invoke", "--config", cfg, "--event", "-", stdin=bad.stdout)
    sequence = json.loads(bad.stdout)["Records"][0]["dynamodb"]["SequenceNumber"]
    assert json.loads(result.stdout) == {"batchItemFailures": [{"itemIdentifier": sequence}]}
    native = dynamodb_config(tmp_path, "tests.kinesis.dynamodb_recorder:handle", "native")
    result = subprocess.run(
        [sys.executable, "-m", "worker", "invoke", "--config", native, "--event", "-"],
        capture_output=True, text=True, cwd=ROOT, input=good.stdout, timeout=60,
        env={**__import__("os").environ, "RECORD_DIR": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (line,) = next(tmp_path.glob("handled.*")).read_text().splitlines()
    assert line.split()[2:4] == ["dev-1", "INSERT"]


def test_a_dynamodb_sample_that_is_not_an_item_is_one_error_line():
    result = worker("event", "dynamodb", "--value", "[1, 2]")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: worker event:") and len(result.stderr.splitlines()) == 1


def test_a_dynamodb_sample_with_a_number_dynamodb_cannot_hold_is_one_error_line():
    """NaN, 1e999 and a 42-digit number are JSON Python reads; DynamoDB holds none of them
    (38 digits, no NaN): each ended `worker event` with a traceback."""
    for value in ('{"a": NaN}', '{"a": 1e999}', '{"a": %s}' % ("1" * 42)):
        result = worker("event", "dynamodb", "--value", value)
        assert result.returncode == 2 and result.stdout == "", value
        assert result.stderr.startswith("error: worker event: --value: not a DynamoDB item")
        assert len(result.stderr.splitlines()) == 1, result.stderr


def test_an_event_a_native_handler_cannot_be_given_is_one_error_line(tmp_path):
    """`worker invoke` with a hand-edited event ended with a KeyError traceback."""
    native = dynamodb_config(tmp_path, "tests.kinesis.dynamodb_recorder:handle", "native")
    for event in ('{"Records": [{"eventSource": "aws:dynamodb"}]}', '{"Records": [1]}', "[]",
                  '{"Records": [{"kinesis": {}}]}'):  # fmt: skip
        result = worker("invoke", "--config", native, "--event", "-", stdin=event)
        assert result.returncode == 2 and result.stdout == "", event
        assert result.stderr.startswith("error: worker invoke: --event: not a Kafka"), event
        assert len(result.stderr.splitlines()) == 1, result.stderr
