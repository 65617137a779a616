"""The Kubernetes manifests, checked offline (no cluster runs here).

Every overlay is rendered with kustomize (`make k8s-tools` builds it into .bin/),
then validated strictly: the built-in kinds with kubernetes-validate's bundled
schemas, the KEDA and Prometheus Operator kinds with their published JSON
schemas (vendored in k8s_schemas/, see its SOURCE.md), and everything once more
with kubeconform. Then the manifests are held against the worker's own TOML and
code: the metrics port, the probe paths (served by a real `Endpoints`), the
grace period against the drain, the SASL Secret's mount against the password
file, and what KEDA reads against what the worker exports.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import subprocess
import tomllib
import urllib.request
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy/kubernetes"
BIN = ROOT / ".bin"
SCHEMAS = Path(__file__).parent / "k8s_schemas"
OVERLAYS = ("kafka", "kinesis", "kafka-static")
K8S_VERSION = "1.33"  # the oldest EKS/GKE version still in standard support at the time
CRD_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh/scaledobject_v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh/triggerauthentication_v1alpha1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com/podmonitor_v1.json",
}
WORKLOADS = ("Deployment", "StatefulSet")
#: What the drain needs beyond the handler's timeout (final commit, leaving the group),
#: and what the process needs past the drain to exit: the grace period covers both.
COMMIT_AND_LEAVE_S = 10
EXIT_S = 10


def binary(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{path} is missing: run `make k8s-tools` (make test does)"
    return str(path)


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    out = subprocess.run(
        [binary("kustomize"), "build", str(KUBE / "overlays" / overlay)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def of_kind(docs: tuple[dict[str, Any], ...], *kinds: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in kinds]


def one(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"{len(found)} {kind}s"
    return found[0]


def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / CRD_KINDS[(api_version, kind)]).read_text())


def validate(doc: dict[str, Any]) -> None:
    """Strict schema validation of one manifest; raises on the first problem."""
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_KINDS:
        jsonschema.validate(doc, crd_schema(*key))
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_manifest_passes_strict_schema_validation(overlay: str):
    docs = rendered(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"ConfigMap", "PodDisruptionBudget", "PodMonitor", "ScaledObject"} <= kinds
    assert kinds & set(WORKLOADS)
    for doc in docs:
        validate(doc)


@pytest.mark.parametrize(
    ("kind", "path", "typo"),
    [
        ("Deployment", ("spec", "template", "spec"), "terminationGracePeriod"),
        ("ScaledObject", ("spec",), "maxReplicas"),
        ("ScaledObject", ("spec", "advanced", "horizontalPodAutoscalerConfig"), "behaviour"),
        ("PodMonitor", ("spec",), "podMetricEndpoints"),
    ],
)
def test_the_validation_is_strict_enough_to_catch_a_misspelt_field(kind, path, typo):
    """Without this, a validator that skips a kind (or accepts unknown fields) passes."""
    doc = copy.deepcopy(one(rendered("kafka"), kind))
    node = doc
    for part in path:
        node = node[part]
    node[typo] = 1
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate(doc)


def _kubeconform_schemas(tmp: Path) -> Path:
    """kubernetes-validate's strict schemas, made loadable by kubeconform: they refer to
    their definitions as `/api/_definitions.json`, which kubeconform would fetch."""
    source = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    strict = source / f"v{K8S_VERSION}.0-local-strict"
    out = tmp / "k8s"
    out.mkdir()
    kinds = {(d["apiVersion"], d["kind"]) for o in OVERLAYS for d in rendered(o)}
    wanted = ["_definitions.json"]
    for api_version, kind in kinds - set(CRD_KINDS):
        group, _, version = api_version.rpartition("/")
        suffix = f"-{group.split('.')[0]}-{version}" if group else f"-{version}"
        wanted.append(f"{kind.lower()}{suffix}.json")
    for name in wanted:
        old, new = '"/api/_definitions.json#', '"_definitions.json#'
        text = (strict / name).read_text().replace(old, new)
        schema = json.loads(text)
        schema.pop("$id", None)
        (out / name).write_text(json.dumps(schema))
    return out


def test_kubeconform_agrees_with_local_schemas_only(tmp_path: Path):
    k8s = _kubeconform_schemas(tmp_path)
    files = []
    for overlay in OVERLAYS:
        f = tmp_path / f"{overlay}.yaml"
        f.write_text(yaml.safe_dump_all(rendered(overlay)))
        files.append(str(f))
    out = subprocess.run(
        [binary("kubeconform"), "-strict", "-summary", "-output", "json",
         "-schema-location", f"{k8s}/{{{{.ResourceKind}}}}{{{{.KindSuffix}}}}.json",
         "-schema-location",
         f"{SCHEMAS}/{{{{.Group}}}}/{{{{.ResourceKind}}}}_{{{{.ResourceAPIVersion}}}}.json",
         *files],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    report = json.loads(out.stdout)
    assert out.returncode == 0, report
    total = sum(len(rendered(o)) for o in OVERLAYS)
    assert report["summary"] == {"valid": total, "invalid": 0, "errors": 0, "skipped": 0}


# -- the manifests agree with the worker ---------------------------------------------------


def worker_toml(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    (cm,) = [d for d in of_kind(docs, "ConfigMap") if "worker.toml" in d.get("data", {})]
    return tomllib.loads(cm["data"]["worker.toml"])


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (c,) = pod_spec(workload)["containers"]
    return c


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_toml_in_the_config_map_is_a_valid_worker_configuration(overlay, tmp_path):
    """Loaded the way the pod loads it: the file, plus the workload's WORKER__ variables."""
    from worker.config_load import load_config

    docs = rendered(overlay)
    (workload,) = of_kind(docs, *WORKLOADS)
    text = next(d for d in of_kind(docs, "ConfigMap"))["data"]["worker.toml"]
    secret_file = worker_toml(docs)["source"].get("sasl_plain_password_file")
    if secret_file:  # the Secret's file, which only the pod has
        (tmp_path / "password").write_text("from-the-secret")
        text = text.replace(secret_file, str(tmp_path / "password"))
    (tmp_path / "worker.toml").write_text(text)
    env = {e["name"]: "from-the-secret" for e in container(workload)["env"]}
    load_config(tmp_path / "worker.toml", environ=env)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_probes_and_the_config_mount_agree_with_the_toml(overlay: str):
    docs = rendered(overlay)
    config = worker_toml(docs)
    port = int(config["metrics"]["listen"].rpartition(":")[2])
    assert config["metrics"]["listen"].startswith("0.0.0.0:"), "probes come from the node"
    for workload in of_kind(docs, *WORKLOADS):
        c = container(workload)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports == {"metrics": port}
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert "lifecycle" not in c, "no preStop: SIGTERM itself starts the drain"
        args = c["args"]
        config_path = Path(args[args.index("--config") + 1])
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(config_path.parent))
        volume = next(v for v in pod_spec(workload)["volumes"] if v["name"] == mount["name"])
        cm = next(d for d in of_kind(docs, "ConfigMap") if config_path.name in d["data"])
        assert volume["configMap"]["name"] == cm["metadata"]["name"]
        assert not any(a.startswith("metrics.") for a in args), "the TOML says the port"
    monitor = one(docs, "PodMonitor")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_grace_period_covers_the_drain(overlay: str):
    """SIGKILL before the drain ends abandons in-flight batches (redone, not lost, but
    duplicated): the grace period must cover shutdown_timeout_s, which must cover a
    handler call that started just before SIGTERM, plus its commit."""
    docs = rendered(overlay)
    config = worker_toml(docs)
    shutdown_s = config["runtime"]["shutdown_timeout_s"]
    assert shutdown_s >= config["handler"]["timeout_s"] + COMMIT_AND_LEAVE_S
    for workload in of_kind(docs, *WORKLOADS):
        assert pod_spec(workload)["terminationGracePeriodSeconds"] >= shutdown_s + EXIT_S


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_locked_down_and_the_budget_allows_one_disruption(overlay: str):
    docs = rendered(overlay)
    for workload in of_kind(docs, *WORKLOADS):
        pod, c = pod_spec(workload), container(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001  # the image's user
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert {"requests", "limits"} <= set(c["resources"])
        labels = workload["spec"]["template"]["metadata"]["labels"]
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items()
        pdb = one(docs, "PodDisruptionBudget")
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert one(docs, "PodMonitor")["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("overlay", ["kafka", "kafka-static"])
def test_the_sasl_secret_reaches_the_worker_and_keda(overlay: str):
    docs = rendered(overlay)
    source = worker_toml(docs)["source"]
    (workload,) = of_kind(docs, *WORKLOADS)
    c, pod = container(workload), pod_spec(workload)
    password = Path(source["sasl_plain_password_file"])
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(password.parent))
    secret = next(v for v in pod["volumes"] if v["name"] == mount["name"])["secret"]
    assert {"key": "password", "path": password.name} in secret["items"]
    user = next(e for e in c["env"] if e["name"] == "WORKER__SOURCE__SASL_PLAIN_USERNAME")
    assert user["valueFrom"]["secretKeyRef"]["name"] == secret["secretName"]
    auth = one(docs, "TriggerAuthentication")
    assert {r["name"] for r in auth["spec"]["secretTargetRef"]} == {secret["secretName"]}
    (trigger,) = one(docs, "ScaledObject")["spec"]["triggers"]
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    mechanism = source["sasl_mechanism"].lower().replace("-", "_")
    assert trigger["metadata"]["sasl"] == mechanism.replace("scram_sha_", "scram_sha")
    assert (trigger["metadata"]["tls"] == "enable") == source["security_protocol"].endswith("SSL")


@pytest.mark.parametrize("overlay", ["kafka", "kafka-static"])
def test_keda_reads_the_group_the_worker_commits_and_stops_at_the_partition_count(overlay):
    docs = rendered(overlay)
    source = worker_toml(docs)["source"]
    scaled = one(docs, "ScaledObject")
    (workload,) = of_kind(docs, *WORKLOADS)
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (workload["kind"], workload["metadata"]["name"])
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["consumerGroup"] == source["group_id"]
    assert meta["topic"] in source["topics"]
    assert meta["bootstrapServers"].split(",") == source["bootstrap_servers"]
    assert meta["limitToPartitionsWithLag"] == "true" and meta["allowIdleConsumers"] == "false"
    assert int(meta["activationLagThreshold"]) < int(meta["lagThreshold"])
    reset = {"trim_horizon": "earliest", "latest": "latest"}
    assert meta["offsetResetPolicy"] == reset[source.get("starting_position", "latest")]
    assert 1 <= scaled["spec"]["minReplicaCount"] < scaled["spec"]["maxReplicaCount"]
    assert source.get("commit_interval_ms", 0) <= 1000, "KEDA reads committed offsets"


def test_keda_scales_kinesis_on_a_gauge_the_worker_exports():
    from worker.observe.metrics import Metrics
    from worker.sources.kinesis.metrics import KinesisMetrics

    docs = rendered("kinesis")
    (trigger,) = one(docs, "ScaledObject")["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    metrics = Metrics(CollectorRegistry())
    KinesisMetrics(metrics)
    exported = {m.name for m in metrics.registry.collect()}
    used = set(re.findall(r"\b(worker_[a-z_]+)\b", trigger["metadata"]["query"]))
    assert used == {"worker_behind_latest_seconds"} and used <= exported
    assert float(trigger["metadata"]["activationThreshold"]) < float(
        trigger["metadata"]["threshold"]
    )
    account = one(docs, "ServiceAccount")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith(
        "arn:aws:iam::"
    )
    assert pod_spec(one(docs, "Deployment"))["serviceAccountName"] == account["metadata"]["name"]


async def test_the_probe_paths_are_what_the_worker_serves():
    """A real `Endpoints` on a free port: the probes' paths answer (200 or 503), not 404."""
    from worker.observe.endpoints import Endpoints

    docs = rendered("kafka")
    c = container(one(docs, "Deployment"))
    paths = {c[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe", "startupProbe")}
    paths.add(one(docs, "PodMonitor")["spec"]["podMetricsEndpoints"][0]["path"])
    endpoints = Endpoints(CollectorRegistry(), lambda: (True, "ok"), lambda: (False, "no"),
                          dict, "127.0.0.1", 0)  # fmt: skip
    await endpoints.start()
    try:

        def status(path: str) -> int:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{endpoints.port}{path}", timeout=5):
                    return 200
            except urllib.error.HTTPError as exc:
                return exc.code

        answers = {p: await asyncio.to_thread(status, p) for p in sorted(paths)}
    finally:
        await endpoints.stop()
    assert answers == {"/healthz": 200, "/metrics": 200, "/readyz": 503}


def test_the_statefulset_variant_exports_the_pod_name_for_static_membership():
    docs = rendered("kafka-static")
    assert not of_kind(docs, "Deployment")
    statefulset = one(docs, "StatefulSet")
    assert statefulset["spec"]["serviceName"] == one(docs, "Service")["metadata"]["name"]
    env = {e["name"]: e for e in container(statefulset)["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["WORKER__SOURCE__GROUP_INSTANCE_ID"]["value"] == "$(POD_NAME)"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pods_agree_with_the_image(overlay: str):
    """The Dockerfile's user, port and entry point are what the pods assume."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    final = dockerfile.rsplit("\nFROM ", 1)[1]
    user = int(re.search(r"^USER (\d+)$", final, re.M).group(1))
    exposed = int(re.search(r"^EXPOSE (\d+)$", final, re.M).group(1))
    assert re.search(r'^ENTRYPOINT \["worker", "run"\]$', final, re.M)
    for workload in of_kind(rendered(overlay), *WORKLOADS):
        pod, c = pod_spec(workload), container(workload)
        assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["runAsGroup"] == user
        assert c["ports"][0]["containerPort"] == exposed
        assert "command" not in c, "the image's ENTRYPOINT runs the worker as PID 1"
