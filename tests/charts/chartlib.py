"""Render charts/scalequest with Helm's own Go engine and look at the result.

Helm runs in-process through the PyPI package ``helm-python-sdk`` (module ``helm_python``, a
ctypes binding of ``libhelm_c``, Helm v4's Go SDK): ``Chart.load(dir).render(values, name=,
namespace=)`` is ``helm template`` without a binary or a cluster. It coalesces the chart's
values with ours, validates them against values.schema.json and renders every template,
NOTES.txt included, so ``fail`` checks there surface as :class:`helm_python.HelmRenderError`.

The optional dependencies (nats, minio) are declared in Chart.yaml but not vendored (no
network here); rendering works without them, and variants that keep ``nats.enabled`` /
``minio.enabled`` on render the chart's own objects that point at them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "scalequest"
K8S = REPO / "k8s"
RELEASE = "sq"
NAMESPACE = "scalequest"
COMPONENTS = ("questiongen", "filter", "solver", "reward", "coordinator")
TRAINING_JOBS = ("qft", "qpo", "sft")


def deep_merge(base: dict, override: dict) -> dict:
    """``override`` merged into a copy of ``base`` (maps merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_values(*files: str | Path, overrides: dict | None = None) -> dict:
    """Values as `helm -f FILE... --set-json` would compose them (later wins)."""
    values: dict = {}
    for f in files:
        path = Path(f)
        if not path.is_absolute():
            path = REPO / path
        values = deep_merge(values, yaml.safe_load(path.read_text()) or {})
    return deep_merge(values, overrides or {})


@dataclass
class Manifest:
    template: str  # e.g. scalequest/templates/deployment.yaml
    obj: dict

    @property
    def kind(self) -> str:
        return self.obj["kind"]

    @property
    def name(self) -> str:
        return self.obj["metadata"]["name"]

    @property
    def labels(self) -> dict:
        return self.obj["metadata"].get("labels") or {}

    @property
    def component(self) -> str | None:
        return self.labels.get("app.kubernetes.io/component")

    def pod_template(self) -> dict | None:
        """The pod spec's enclosing template ({metadata, spec}) of a workload, or the Pod."""
        if self.kind == "Pod":
            return self.obj
        if self.kind in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            return self.obj["spec"]["template"]
        return None


@dataclass
class Rendered:
    values: dict
    manifests: list[Manifest] = field(default_factory=list)
    notes: str = ""

    def of_kind(self, kind: str) -> list[Manifest]:
        return [m for m in self.manifests if m.kind == kind]

    def one(self, kind: str, component: str) -> Manifest:
        found = [m for m in self.of_kind(kind) if m.component == component]
        assert len(found) == 1, f"expected one {kind} of {component}, got {[m.name for m in found]}"
        return found[0]

    def named(self, kind: str, name: str) -> Manifest:
        for m in self.of_kind(kind):
            if m.name == name:
                return m
        raise KeyError(f"{kind}/{name} not rendered")

    def configmap_data(self, component: str) -> dict[str, str]:
        return self.one("ConfigMap", component).obj["data"]

    def pods(self) -> list[Manifest]:
        """Every manifest that carries a pod template (Deployments, Jobs, test Pods)."""
        return [m for m in self.manifests if m.pod_template() is not None]


def render(values: dict | None = None, *, release: str = RELEASE, namespace: str = NAMESPACE) -> Rendered:
    """Render the chart like ``helm install --dry-run`` with these values."""
    import helm_python

    with helm_python.Chart.load(str(CHART)) as chart:
        out = chart.render(values or {}, name=release, namespace=namespace, is_install=True)
    result = Rendered(values=values or {})
    for template, text in sorted(out.items()):
        if template.endswith("NOTES.txt"):
            result.notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                result.manifests.append(Manifest(template, doc))
    return result


# External NATS and S3: no bundled dependency at all.
EXTERNAL = {
    "nats": {"enabled": False},
    "minio": {"enabled": False},
    "externalNats": {
        "url": "nats://nats.messaging.svc.cluster.local:4222",
        "monitoringEndpoint": "nats-headless.messaging.svc.cluster.local:8222",
    },
    "objectStore": {
        "url": "s3://synth-data/scalequest",
        "s3": {"endpoint": "https://s3.eu-west-1.amazonaws.com", "region": "eu-west-1", "existingSecret": "s3-creds"},
    },
    "solver": {"autoscaling": {"keda": {"enabled": True}}},
}

ALL_TRAINING = {"training": {"enabled": True, "jobs": {name: {"enabled": True} for name in TRAINING_JOBS}}}

# Everything optional on at once: ServiceMonitor, HPA and KEDA side by side, extra peers.
EVERYTHING = {
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus"}},
    "filter": {"autoscaling": {"hpa": {"enabled": True}}},
    "solver": {"autoscaling": {"keda": {"enabled": True}}},
    "reward": {"autoscaling": {"keda": {"enabled": True, "minReplicas": 1}}},
    "networkPolicy": {"grpcIngressFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "notebooks"}}}]},
    "volumes": {"cache": {"existingClaim": "scalequest-models"}},
    **ALL_TRAINING,
}

# NATS users and TLS everywhere (docs/security.md); secrets only by name.
SECURED = {
    "natsAuth": {"enabled": True, "existingSecret": "sq-nats-users"},
    "tls": {"grpc": {"enabled": True, "existingSecret": "sq-grpc-tls", "clientAuth": True},
            "nats": {"enabled": True, "existingSecret": "sq-nats-tls", "clientCert": True}},
    # what `scalequest nats-config --format json` gives, shortened (the bundled server's users)
    "nats": {"config": {"merge": {"authorization": {"users": [
        {"user": "admin", "password": "$2b$11$0123456789012345678901uOBpm6Np0a6F5Vj9QmSI/eB0ow6mQJ.",
         "permissions": {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}}]}}}},
    **ALL_TRAINING,
}

#: name -> (values files, overrides): the variants every structural test runs on.
VARIANTS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "defaults": ((), {}),
    "cpu-only": (("k8s/values-cpu.yaml",), {}),
    "gpu-keda": (("k8s/values-gpu-small.yaml",), {}),
    "training": ((), ALL_TRAINING),
    "external-nats-s3": ((), EXTERNAL),
    "everything": ((), EVERYTHING),
    "secured": ((), SECURED),
}


def render_variant(name: str) -> Rendered:
    files, overrides = VARIANTS[name]
    return render(load_values(*files, overrides=overrides))


def label_selector_matches(selector: dict, labels: dict) -> bool:
    """Whether a LabelSelector ({matchLabels, matchExpressions}) selects these labels."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, vals = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in vals:
            return False
        if op == "NotIn" and labels.get(key) in vals:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True
