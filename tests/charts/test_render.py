"""charts/scalequest renders with Helm's Go engine, validates against Kubernetes 1.29-1.33,
lints clean, and rejects bad values with readable messages (no cluster involved)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import yaml

from tests.charts import k8s_schemas
from tests.charts.chartlib import (
    CHART,
    COMPONENTS,
    K8S,
    VARIANTS,
    load_values,
    render,
    render_variant,
)

helm_python = pytest.importorskip("helm_python", reason="helm-python-sdk is in the dev extra")


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request):
    return request.param, render_variant(request.param)


def test_variant_renders_every_component(variant):
    name, r = variant
    kinds = {m.kind for m in r.manifests}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "NetworkPolicy", "Job", "Pod"} <= kinds
    for c in COMPONENTS:
        for kind in ("Deployment", "Service", "ConfigMap"):
            r.one(kind, c)
    assert "helm test" in r.notes, f"{name}: NOTES.txt did not render"


def test_manifests_validate_against_kubernetes_schemas(variant):
    """Every object, for every supported Kubernetes minor, strict (unknown fields fail).
    Core apiVersions a version does not serve fail; CRDs use tests/charts/schemas."""
    name, r = variant
    problems = []
    for version in k8s_schemas.K8S_VERSIONS:
        for m in r.manifests:
            try:
                errors = k8s_schemas.validate(m.obj, version)
            except k8s_schemas.UnknownApiVersion as e:
                problems.append(f"{version} {m.kind}/{m.name}: {e}")
                continue
            problems += [f"{version} {m.kind}/{m.name}: {e}" for e in errors]
    assert not problems, f"{name}:\n" + "\n".join(problems)


def test_names_fit_kubernetes_limits(variant):
    _, r = variant
    for m in r.manifests:
        limit = 63 if m.kind in ("Service", "Pod", "Job") else 253
        assert len(m.name) <= limit, f"{m.kind}/{m.name} is longer than {limit}"
        for k, v in m.labels.items():
            assert len(str(v)) <= 63, f"{m.kind}/{m.name} label {k}={v} is too long"


def test_validator_is_not_vacuous():
    r = render_variant("defaults")
    d = copy.deepcopy(r.one("Deployment", "solver").obj)
    d["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    assert any("gpus" in e for e in k8s_schemas.validate(d, "1.29.0"))
    with pytest.raises(k8s_schemas.UnknownApiVersion):
        k8s_schemas.validate({"apiVersion": "policy/v1beta1", "kind": "PodDisruptionBudget", "metadata": {"name": "x"}}, "1.29.0")
    so = copy.deepcopy(r.manifests[0].obj)
    so = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "x"},
          "spec": {"scaleTargetRef": {"name": "d"}, "triggers": [{"type": "nats-jetstream", "metadata": {"stream": "S"}}]}}
    assert k8s_schemas.validate(so, "1.29.0"), "a nats-jetstream trigger without consumer/lag must be rejected"


@pytest.mark.parametrize("path", sorted(p.name for p in K8S.glob("*.yaml") if not p.name.startswith("values-")))
def test_k8s_prerequisites_validate(path):
    for doc in yaml.safe_load_all((K8S / path).read_text()):
        for version in k8s_schemas.K8S_VERSIONS:
            assert k8s_schemas.validate(doc, version) == [], f"{path} {doc['kind']}/{doc['metadata']['name']} @ {version}"


# --------------------------------------------------------------------------- lint


def _lint_errors(report: dict) -> list[str]:
    return [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 3] + list(report["errors"])


@pytest.mark.parametrize("variant_name", ["defaults", "cpu-only", "gpu-keda", "external-nats-s3"])
def test_helm_lint(variant_name):
    """`helm lint` (Helm's own rules, schema included): no errors. The only warning allowed
    is the one for the declared-but-not-vendored nats/minio dependencies (no network here)."""
    files, overrides = VARIANTS[variant_name]
    report = helm_python.lint(str(CHART), load_values(*files, overrides=overrides), kube_version="v1.29.0")
    assert _lint_errors(report) == []
    warnings = [m["error"] for m in report["messages"] if m["severity"] == 2]
    assert all("missing these dependencies" in w for w in warnings), warnings


def test_helm_lint_strict_with_dependency_stubs(tmp_path: Path):
    """`helm lint --strict` treats the missing dependencies as an error; with local stub
    subcharts (Chart.yaml only, matching the declared versions) in a copy of the chart it
    passes with no warning at all. This is how to lint strictly without network."""
    chart = tmp_path / "scalequest"
    shutil.copytree(CHART, chart)
    for dep in yaml.safe_load((CHART / "Chart.yaml").read_text())["dependencies"]:
        stub = chart / "charts" / dep["name"]
        stub.mkdir(parents=True)
        lowest = dep["version"].split()[0].lstrip(">=")
        (stub / "Chart.yaml").write_text(f"apiVersion: v2\nname: {dep['name']}\nversion: {lowest}\n")
    report = helm_python.lint(str(chart), strict=True, kube_version="v1.33.0")
    assert report["errors"] == [] and all(m["severity"] < 2 for m in report["messages"]), report


# --------------------------------------------------------------------------- values schema


def test_schema_accepts_defaults_and_examples():
    with helm_python.Chart.load(str(CHART)) as chart:
        chart.validate_schema({})
        for f in sorted(K8S.glob("values-*.yaml")):
            chart.validate_schema(yaml.safe_load(f.read_text()))


BAD_VALUES = [
    ("solver:\n  gpu:\n    count: one\n", "/solver/gpu/count"),
    ("solver:\n  config:\n    solve_n: 3\n", "does not match pattern '^SQ_[A-Z0-9_]+$'"),
    ("solvr:\n  enabled: true\n", "additional properties 'solvr' not allowed"),
    ("filter:\n  image:\n    flavor: tpu\n", "/filter/image/flavor"),
    ("objectStore:\n  url: gs://bucket/x\n", "/objectStore/url"),
    ("training:\n  jobs:\n    qft:\n      enabled: true\n      command: [x]\n      inputs:\n        data: /local/path\n",
     "/training/jobs/qft/inputs/data"),
    ("coordinator:\n  autoscaling:\n    keda:\n      minReplicas: -1\n", "/coordinator/autoscaling/keda/minReplicas"),
]


@pytest.mark.parametrize("text,expected", BAD_VALUES, ids=[e for _, e in BAD_VALUES])
def test_schema_rejects_bad_values_file_readably(tmp_path: Path, text: str, expected: str):
    values_file = tmp_path / "bad-values.yaml"
    values_file.write_text(text)
    with pytest.raises(helm_python.HelmValuesError) as err:
        render(yaml.safe_load(values_file.read_text()))
    msg = str(err.value)
    assert "values don't meet the specifications of the schema" in msg and expected in msg, msg


# --------------------------------------------------------------------------- impossible combinations

IMPOSSIBLE = [
    ({"nats": {"enabled": False}}, "no NATS at all"),
    ({"externalNats": {"url": "nats://other:4222"}}, "use one NATS"),
    ({"solver": {"autoscaling": {"hpa": {"enabled": True}, "keda": {"enabled": True}}}},
     "solver has both autoscaling.hpa.enabled and autoscaling.keda.enabled"),
    ({"gpu": {"runtimeClassName": ""}}, "questiongen requests 1 GPU(s) but has no RuntimeClass"),
    ({"training": {"enabled": True, "jobs": {"qft": {"enabled": True}}}, "gpu": {"runtimeClassName": ""},
      "questiongen": {"runtimeClassName": "nvidia"}, "solver": {"runtimeClassName": "nvidia"},
      "reward": {"runtimeClassName": "nvidia"}}, "training.jobs.qft requests 1 GPU(s) but has no RuntimeClass"),
    ({"nats": {"enabled": False}, "externalNats": {"url": "nats://n:4222"}, "filter": {"autoscaling": {"keda": {"enabled": True}}}},
     "set externalNats.monitoringEndpoint"),
    ({"solver": {"config": {"SQ_GRPC_PORT": 1}}}, "solver.config.SQ_GRPC_PORT is set by the chart; set solver.ports.grpc instead"),
    ({"common": {"config": {"SQ_NATS_URL": "nats://x:4222"}}}, "common.config.SQ_NATS_URL is set by the chart"),
    ({"coordinator": {"replicaCount": 2}}, "the coordinator runs as exactly one replica"),
    ({"minio": {"enabled": False}}, "is S3 but there is no endpoint"),
    ({"objectStore": {"url": "/data/shards"}}, "is a directory"),
    ({"queue": {"replicas": 3}}, "needs a clustered NATS"),
    ({"reward": {"autoscaling": {"keda": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}}}, "is above maxReplicas"),
    ({"solver": {"pdb": {"minAvailable": 1}}}, "sets both minAvailable and maxUnavailable"),
]


@pytest.mark.parametrize("values,expected", IMPOSSIBLE, ids=[e for _, e in IMPOSSIBLE])
def test_impossible_combinations_fail_with_a_readable_message(values, expected):
    with pytest.raises(helm_python.HelmRenderError) as err:
        render(values)
    assert expected in str(err.value), str(err.value)


def test_gpu_without_runtime_class_allowed_when_not_required():
    r = render({"gpu": {"runtimeClassName": "", "requireRuntimeClass": False}})
    spec = r.one("Deployment", "solver").obj["spec"]["template"]["spec"]
    assert "runtimeClassName" not in spec


def test_notes_show_endpoints_and_next_steps():
    r = render_variant("external-nats-s3")
    assert "nats://nats.messaging.svc.cluster.local:4222" in r.notes
    assert "s3://synth-data/scalequest at https://s3.eu-west-1.amazonaws.com" in r.notes
    assert "KEDA on SQ_SOLVE/solver lag" in r.notes
    assert "port-forward svc/sq-scalequest-coordinator 50060:50060" in r.notes
