"""`worker run` refuses bad input before touching a broker: exit 2, one line per problem."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_worker(tmp_path: Path, config: str, *extra: str) -> subprocess.CompletedProcess:
    path = tmp_path / "w.toml"
    path.write_text(config)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    return subprocess.run(
        [sys.executable, "-m", "worker", "run", "--config", str(path), *extra],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )


def test_bad_config_exits_2_naming_each_key_value_and_rule(tmp_path):
    result = run_worker(
        tmp_path,
        '[source]\ntopics = ["t"]\ncolour = "blue"\n'
        '[batching]\nbatch_size = 0\n[handler]\ntarget = "handlers/iot.py"\n',
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3
    assert any("source.colour = 'blue': unknown key" in line for line in lines)
    assert any("batching.batch_size = 0" in line and "1..10000" in line for line in lines)
    assert any("handler.target = 'handlers/iot.py'" in line for line in lines)


def test_a_handler_that_fails_to_import_stops_the_start_with_module_and_reason(tmp_path):
    (tmp_path / "broken_handler.py").write_text("import no_such_dependency_abc\n")
    result = run_worker(
        tmp_path, '[source]\ntopics = ["t"]\n[handler]\ntarget = "broken_handler:handle"\n'
    )
    assert result.returncode == 2
    assert "'broken_handler'" in result.stderr
    assert "ModuleNotFoundError: No module named 'no_such_dependency_abc'" in result.stderr
    assert "Traceback" not in result.stderr
    # the handler is loaded before any Kafka client exists: none is left unclosed
    assert "Unclosed" not in result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_missing_function_in_the_handler_module_is_named(tmp_path):
    (tmp_path / "h.py").write_text("def other(batch):\n    pass\n")
    result = run_worker(tmp_path, '[source]\ntopics = ["t"]\n[handler]\ntarget = "h:handle"\n')
    assert result.returncode == 2
    assert "module 'h' has no 'handle'" in result.stderr


def test_an_unreachable_broker_fails_start_with_one_clear_line(tmp_path):
    (tmp_path / "h.py").write_text("def handle(batch):\n    pass\n")
    result = run_worker(
        tmp_path,
        '[source]\ntopics = ["t"]\nbootstrap_servers = ["127.0.0.1:1"]\nconnect_timeout_s = 0\n'
        '[handler]\ntarget = "h:handle"\n[metrics]\nenabled = false\n',
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and "kafka: cannot connect to 127.0.0.1:1" in errors[0]
    assert "Traceback" not in result.stderr


def test_the_memory_source_is_refused_by_the_daemon_with_one_line(tmp_path):
    result = run_worker(tmp_path, '[source]\nkind = "memory"\n')
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "source.kind = 'memory'" in line and "kafka" in line and "kinesis" in line


def test_a_source_accepts_only_its_own_keys(tmp_path):
    result = run_worker(tmp_path, '[source]\nkind = "kinesis"\nstream_name = "s"\ntopics = ["t"]\n')
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "source.topics = ['t']: unknown key" in line and "stream_name" in line
