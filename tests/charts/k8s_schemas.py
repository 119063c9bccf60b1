"""Offline validation of rendered manifests against Kubernetes' OpenAPI schemas.

Core kinds use the schemas bundled in the PyPI package ``kubernetes-validate`` (one set per
Kubernetes minor version), in their *strict* form (unknown fields are errors). A core
apiVersion/kind that a version does not serve -- never existed or removed -- is an error,
not a skip. Custom resources the chart renders (KEDA's ScaledObject, the Prometheus
Operator's ServiceMonitor) are not in those schemas; they are checked against small
structural schemas written for these tests (tests/charts/schemas/), which cover the fields
the chart uses. Anything else is reported as unvalidated.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import jsonschema
from referencing import Registry, Resource

#: Kubernetes minors the chart supports (Chart.yaml kubeVersion >= 1.29).
K8S_VERSIONS = ("1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0")

CRD_SCHEMA_DIR = Path(__file__).parent / "schemas"
#: (apiVersion, kind) -> structural schema file for custom resources.
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): CRD_SCHEMA_DIR / "scaledobject-keda.sh-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): CRD_SCHEMA_DIR / "servicemonitor-monitoring.coreos.com-v1.json",
}


class UnknownApiVersion(Exception):
    """The apiVersion/kind is not served by that Kubernetes version (or is no core kind)."""


def _schema_dir(version: str) -> str:
    from kubernetes_validate import utils

    available = utils.all_versions()
    minor = utils.major_minor(version)
    matching = [v for v in available if utils.major_minor(v) == minor]
    if not matching:
        raise ValueError(f"kubernetes-validate has no schemas for Kubernetes {minor} (has {available[0]}..{available[-1]})")
    return f"v{matching[-1]}-local-strict"


@cache
def _core_validator(schema_dir: str, filename: str) -> jsonschema.protocols.Validator | None:
    from kubernetes_validate import utils

    try:
        schema = utils.schema_contents(f"kubernetes-json-schema/{schema_dir}/{filename}", schema_dir)
    except FileNotFoundError:
        return None
    definitions = _definitions(schema_dir)
    registry = Resource.from_contents(schema) @ Registry()
    registry = definitions @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


@cache
def _definitions(schema_dir: str) -> Resource:
    from kubernetes_validate import utils

    return Resource.from_contents(utils.schema_contents(f"kubernetes-json-schema/{schema_dir}/_definitions.json", schema_dir))


@cache
def _crd_validator(path: Path) -> jsonschema.protocols.Validator:
    schema = json.loads(path.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _core_filename(obj: dict) -> str:
    # kubernetes-validate's naming: <kind>-<group without domain>-<version>.json, core = <kind>-<version>
    api_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", obj["apiVersion"])
    return f"{obj['kind'].lower()}-{api_version}.json"


def validate(obj: dict, version: str) -> list[str]:
    """Schema errors of one manifest for one Kubernetes version ([] = valid).

    Raises :class:`UnknownApiVersion` when no schema knows the apiVersion/kind.
    """
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in CRD_SCHEMAS:
        validator = _crd_validator(CRD_SCHEMAS[key])
    else:
        if "." in obj["apiVersion"].split("/")[0] and not obj["apiVersion"].split("/")[0].endswith(".k8s.io"):
            raise UnknownApiVersion(f"{key[0]} {key[1]}: a custom resource without a schema in tests/charts/schemas")
        validator = _core_validator(_schema_dir(version), _core_filename(obj))
        if validator is None:
            raise UnknownApiVersion(f"{key[0]} {key[1]} is not served by Kubernetes {version}")
    return [
        f"{'.'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
        for err in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    ]
