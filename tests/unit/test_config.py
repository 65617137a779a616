from pathlib import Path

import pytest

from worker.cli import main
from worker.config_load import ConfigError, load_config, parse_scalar


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "w.toml"
    path.write_text(text)
    return path


def test_precedence_is_defaults_then_file_then_environment_then_set(tmp_path):
    path = write(
        tmp_path, '[source]\ntopics=["t"]\n[batching]\nbatch_size=10\nmaximum_batch_bytes=1000\n'
    )
    env = {"WORKER__BATCHING__BATCH_SIZE": "20", "WORKER__BATCHING__MAXIMUM_BATCH_BYTES": "2000"}
    config = load_config(path, ["batching.batch_size=30"], env)
    assert config.batching.batch_size == 30  # --set beats the environment
    assert config.batching.maximum_batch_bytes == 2000  # environment beats the file
    assert config.batching.maximum_batching_window_ms == 500  # default


def test_values_parse_as_toml_or_fall_back_to_strings():
    assert parse_scalar("10") == 10
    assert parse_scalar('["a", "b"]') == ["a", "b"]
    assert parse_scalar("true") is True
    assert parse_scalar("pkg.mod:fn") == "pkg.mod:fn"


def test_every_problem_is_reported_on_its_own_line_with_key_value_and_rule(tmp_path):
    path = write(
        tmp_path,
        '[source]\ntopics=["t"]\nstarting_position="oldest"\n'
        '[batching]\nbatch_size=0\nbatch_sise=5\n[handler]\ntarget="no-colon"\n',
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    lines = err.value.problems
    assert len(lines) == 4
    assert any(
        line.startswith("source.starting_position = 'oldest'") and "trim_horizon" in line
        for line in lines
    )
    assert any(line.startswith("batching.batch_size = 0") and "1..10000" in line for line in lines)
    assert any(
        line.startswith("batching.batch_sise = 5: unknown key") and "batch_size" in line
        for line in lines
    )
    assert any(line.startswith("handler.target = 'no-colon'") for line in lines)


def test_kafka_source_without_topics_is_an_error():
    with pytest.raises(ConfigError) as err:
        load_config(None, [], {})
    assert err.value.problems == ["source.topics: a kafka source needs at least one topic"]


def test_malformed_set_and_unknown_section_are_reported():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["batching"], {})
    assert "expected section.key=value" in err.value.problems[0]
    with pytest.raises(ConfigError) as err:
        load_config(None, ['source.topics=["t"]', "nosuch.key=1"], {})
    assert err.value.problems[0].startswith("nosuch = ")


def test_check_config_exits_2_with_one_line_per_problem(tmp_path, capsys):
    path = write(tmp_path, '[source]\ntopics=["t"]\n[batching]\nbatch_size=0\n')
    assert main(["check-config", "--config", str(path), "--set", "handler.target=x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert all(line.startswith("config error: ") for line in err)


def test_check_config_reports_a_handler_that_cannot_be_imported(tmp_path, capsys):
    path = write(
        tmp_path, '[source]\ntopics=["t"]\n[handler]\ntarget="no_such_module_xyz:handle"\n'
    )
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "no_such_module_xyz" in err and "ModuleNotFoundError" in err


def test_check_config_prints_the_effective_configuration(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    path = write(tmp_path, '[source]\ntopics=["t"]\n')
    assert main(["check-config", "--config", str(path), "--set", "batching.batch_size=7"]) == 0
    out = capsys.readouterr().out
    assert '"batch_size": 7' in out and '"topics": [\n      "t"\n    ]' in out


def test_json_log_lines_carry_the_event_fields():
    import logging

    import orjson

    from worker.observe.logs import JsonFormatter

    record = logging.LogRecord(
        "worker", logging.WARNING, __file__, 1,
        "event=dead_lettered partition=%s records=%d error=%r", ("t-3", 5, "ValueError: x"), None,
    )  # fmt: skip
    doc = orjson.loads(JsonFormatter().format(record))
    assert doc["level"] == "WARNING" and doc["logger"] == "worker"
    assert doc["event"] == "dead_lettered" and doc["partition"] == "t-3" and doc["records"] == "5"
    assert doc["error"] == "ValueError: x"
    assert doc["message"].startswith("event=dead_lettered")


def test_values_that_would_hang_or_kill_a_worker_are_refused_with_their_range():
    """A fetch size past int32 overflowed in aiokafka (ready, nothing handled); a stall
    timeout under the loop guard's tick ended a healthy idle worker with status 3; a
    buffer bound of 10**12 bounded nothing."""
    with pytest.raises(ConfigError) as err:
        load_config(
            None,
            ['source.topics=["t"]', "source.fetch_max_bytes=1099511627776",
             "runtime.stall_timeout_s=0.2", "runtime.max_buffered_records=1000000000000"],
            {},
        )  # fmt: skip
    lines = err.value.problems
    assert len(lines) == 3
    assert any(line.startswith("source.fetch_max_bytes") and "2147483647" in line for line in lines)
    assert any(
        line.startswith("runtime.stall_timeout_s = 0.2") and "0 (off)" in line for line in lines
    )
    assert any(
        line.startswith("runtime.max_buffered_records") and "1000000" in line for line in lines
    )
    assert load_config(None, ['source.topics=["t"]', "runtime.stall_timeout_s=0"], {})


def test_a_secret_is_never_echoed_and_an_all_digit_password_is_a_password(tmp_path):
    """A password read from the environment or --set used to arrive as a number, be refused,
    and be printed in the line that refused it; a misspelt key echoed its value too."""
    config = load_config(None, ['source.topics=["t"]'],
                         {"WORKER__SOURCE__SASL_PLAIN_PASSWORD": "123456"})  # fmt: skip
    assert config.source.sasl_plain_password.get_secret_value() == "123456"
    with pytest.raises(ConfigError) as err:  # a path, never a file descriptor
        load_config(None, ['source.topics=["t"]', "source.sasl_plain_password_file=3"], {})
    assert "'3'" in err.value.problems[0] and "No such file" in err.value.problems[0]
    for override in ("source.sasl_plain_pasword=hunter2", "source.secret_tokn=[1,2]"):
        with pytest.raises(ConfigError) as err:
            load_config(None, ['source.topics=["t"]', override], {})
        text = "\n".join(err.value.problems)
        assert "hunter2" not in text and "[1, 2]" not in text and "= ***:" in text
    path = write(tmp_path, '[source]\ntopics=["t"]\nsasl_plain_password=123456\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "123456" not in "\n".join(err.value.problems)
