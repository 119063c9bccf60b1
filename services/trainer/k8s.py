"""Training and evaluation as Kubernetes Jobs: render a ``batch/v1`` Job and create it.

The Job runs the same entrypoint as a local run (``scalequest train ...`` / ``scalequest eval
...``), with the data and model in the object store. Its shape follows the chart's training
Jobs (``training.jobs.<name>`` in charts/scalequest):

* the trainer image (``<repository>-trainer:<version>-<flavor>``, Dockerfile.base target
  ``trainer``), one container ``trainer``, ``restartPolicy: Never``; retries come from
  ``backoffLimit`` and every attempt passes ``--resume`` so it continues from the newest
  checkpoint in the store;
* ``activeDeadlineSeconds`` bounds the whole Job, ``ttlSecondsAfterFinished`` cleans it up;
* GPUs as an ``nvidia.com/gpu`` request and limit plus the GPU toleration and the ``nvidia``
  RuntimeClass (none of them without GPUs), a memory-backed ``/dev/shm``;
* the chart's pod and container security contexts (UID 10001, non-root, read-only root
  filesystem, no privilege escalation, all capabilities dropped, RuntimeDefault seccomp) and
  its writable emptyDirs: ``/tmp``, the home directory, its ``.cache`` (the model cache, or a
  PVC: ``cache_pvc``) and the ``/work`` scratch space (checkpoints before upload);
* configuration as environment (``SQ_TRAIN_JOB``, ``SQ_STORE_URL``, ``SQ_NATS_URL``,
  ``SQ_S3_ENDPOINT``), S3 keys from a Secret by reference (``secretKeyRef``), never inlined;
* the chart's labels (``app.kubernetes.io/instance`` = the release, ``part-of: scalequest``), so
  the chart's NetworkPolicies let the pod reach NATS and the object store.

:func:`submit_job` creates the Job with the ``kubernetes`` client in the current kube context
(or in-cluster config).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from libs.errors import ConfigError

IMAGE_REPOSITORY = "ghcr.io/scalequest/scalequest"
IMAGE_VERSION = "0.1.0"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_RUNTIME_CLASS = "nvidia"
WORK_DIR = "/work"
HOME_DIR = "/home/scalequest"
RUN_AS = 10001


def default_image(gpus: int) -> str:
    """The trainer image of this version and flavour (as the chart names it)."""
    return f"{IMAGE_REPOSITORY}-trainer:{IMAGE_VERSION}-{'gpu' if gpus > 0 else 'cpu'}"
_DNS1123 = re.compile(r"[^a-z0-9-]+")


def job_name(*parts: str, max_len: int = 63) -> str:
    """A DNS-1123 label from ``parts`` (lowercased, invalid characters -> '-'); names that are too
    long keep a hash suffix so they stay unique."""
    raw = "-".join(p for p in parts if p)
    name = _DNS1123.sub("-", raw.lower()).strip("-")
    name = re.sub(r"-{2,}", "-", name) or "job"
    if len(name) > max_len:
        digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
        name = name[: max_len - 9].rstrip("-") + "-" + digest
    if not name[0].isalpha():
        name = ("j" + name)[:max_len]
    return name


@dataclass
class JobConfig:
    """Everything the Job manifest needs besides the command's own arguments."""

    name: str
    args: list[str]
    component: str = "trainer"
    job: str = ""  # the job's own name (label scalequest.io/training-job, env SQ_TRAIN_JOB)
    release: str = "scalequest"  # Helm release whose pipeline this job belongs to
    namespace: str = "default"
    image: str = ""  # "" = default_image(gpus)
    image_pull_policy: str = "IfNotPresent"
    command: list[str] = field(default_factory=lambda: ["scalequest"])
    gpus: int = 1
    cpu: str = "8"
    memory: str = "64Gi"
    memory_limit: str = "96Gi"
    shm_size: str = "32Gi"
    scratch_size: str = "200Gi"
    cache_size: str = "50Gi"
    cache_pvc: str = ""  # PVC for the model cache (~/.cache) instead of an emptyDir
    tolerations: list[dict[str, Any]] | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    runtime_class: str | None = None  # None = "nvidia" with GPUs, none without
    priority_class: str = ""
    service_account: str = ""
    backoff_limit: int = 2
    active_deadline_seconds: int = 86400
    ttl_seconds_after_finished: int = 604800
    store_url: str = ""
    nats_url: str = ""
    s3_endpoint: str = ""
    s3_secret: str = "scalequest-s3"
    s3_access_key_key: str = "AWS_ACCESS_KEY_ID"
    s3_secret_key_key: str = "AWS_SECRET_ACCESS_KEY"
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    run_as_user: int = RUN_AS

    def validate(self) -> None:
        if job_name(self.name) != self.name:
            raise ConfigError(f"Job name {self.name!r} is not a DNS-1123 label (use services.trainer.k8s.job_name)")
        if self.gpus < 0:
            raise ConfigError("--gpus must be >= 0")
        if self.backoff_limit < 0 or self.active_deadline_seconds < 1 or self.ttl_seconds_after_finished < 0:
            raise ConfigError("backoffLimit >= 0, activeDeadlineSeconds >= 1 and ttlSecondsAfterFinished >= 0 required")


def _gpu_tolerations(cfg: JobConfig) -> list[dict[str, Any]]:
    if cfg.tolerations is not None:
        return cfg.tolerations
    if cfg.gpus > 0:
        return [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    return []


def render_job(cfg: JobConfig) -> dict[str, Any]:
    """The ``batch/v1`` Job manifest as a plain dict (JSON/YAML-serializable)."""
    cfg.validate()
    labels = {
        "app.kubernetes.io/name": "scalequest",
        "app.kubernetes.io/instance": cfg.release,
        "app.kubernetes.io/component": cfg.component,
        "app.kubernetes.io/part-of": "scalequest",
        "app.kubernetes.io/version": IMAGE_VERSION,
        "app.kubernetes.io/managed-by": "scalequest-cli",
        "scalequest.io/training-job": job_name(cfg.job or cfg.name),
        **cfg.labels,
    }
    env: list[dict[str, Any]] = [
        {"name": "SQ_TRAIN_JOB", "value": cfg.job or cfg.name},
        {"name": "SQ_LOG_JSON", "value": "1"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if cfg.store_url:
        env.append({"name": "SQ_STORE_URL", "value": cfg.store_url})
    if cfg.nats_url:
        env.append({"name": "SQ_NATS_URL", "value": cfg.nats_url})
    if cfg.s3_endpoint:
        env.append({"name": "SQ_S3_ENDPOINT", "value": cfg.s3_endpoint})
    if cfg.s3_secret:
        for var, key in (("AWS_ACCESS_KEY_ID", cfg.s3_access_key_key), ("AWS_SECRET_ACCESS_KEY", cfg.s3_secret_key_key)):
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": cfg.s3_secret, "key": key, "optional": True}}})
    for k, v in sorted(cfg.env.items()):
        env.append({"name": k, "value": str(v)})

    resources: dict[str, Any] = {
        "requests": {"cpu": cfg.cpu, "memory": cfg.memory},
        "limits": {"memory": cfg.memory_limit or cfg.memory},
    }
    if cfg.gpus > 0:
        resources["limits"][GPU_RESOURCE] = str(cfg.gpus)
        resources["requests"][GPU_RESOURCE] = str(cfg.gpus)

    cache: dict[str, Any] = {"name": "cache"}
    if cfg.cache_pvc:
        cache["persistentVolumeClaim"] = {"claimName": cfg.cache_pvc}
    else:
        cache["emptyDir"] = {"sizeLimit": cfg.cache_size}
    volumes = [
        {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}},
        {"name": "home", "emptyDir": {"sizeLimit": "1Gi"}},
        cache,
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": cfg.shm_size}},
        {"name": "scratch", "emptyDir": {"sizeLimit": cfg.scratch_size}},
    ]
    mounts = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "home", "mountPath": HOME_DIR},
        {"name": "cache", "mountPath": f"{HOME_DIR}/.cache"},
        {"name": "shm", "mountPath": "/dev/shm"},
        {"name": "scratch", "mountPath": WORK_DIR},
    ]
    container = {
        "name": "trainer",
        "image": cfg.image or default_image(cfg.gpus),
        "imagePullPolicy": cfg.image_pull_policy,
        "command": list(cfg.command),
        "args": list(cfg.args),
        "workingDir": WORK_DIR,
        "env": env,
        "resources": resources,
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": cfg.run_as_user,
            "runAsGroup": cfg.run_as_user,
            "fsGroup": cfg.run_as_user,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    tolerations = _gpu_tolerations(cfg)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if cfg.node_selector:
        pod_spec["nodeSelector"] = dict(cfg.node_selector)
    runtime_class = cfg.runtime_class if cfg.runtime_class is not None else (GPU_RUNTIME_CLASS if cfg.gpus > 0 else "")
    if runtime_class:
        pod_spec["runtimeClassName"] = runtime_class
    if cfg.priority_class:
        pod_spec["priorityClassName"] = cfg.priority_class
    if cfg.service_account:
        pod_spec["serviceAccountName"] = cfg.service_account
        pod_spec["automountServiceAccountToken"] = True
    else:
        pod_spec["automountServiceAccountToken"] = False
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": cfg.name, "namespace": cfg.namespace, "labels": labels},
        "spec": {
            "backoffLimit": cfg.backoff_limit,
            "activeDeadlineSeconds": cfg.active_deadline_seconds,
            "ttlSecondsAfterFinished": cfg.ttl_seconds_after_finished,
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
        },
    }


def to_yaml(manifest: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False)


def submit_job(manifest: dict[str, Any], *, context: str | None = None) -> dict[str, Any]:
    """Create the Job in its namespace with the current kube context (``context`` picks another;
    in a pod, the in-cluster config). Returns the created object as the API server sent it."""
    try:
        from kubernetes import client, config
        from kubernetes.client.rest import ApiException
        from kubernetes.config.config_exception import ConfigException
    except ImportError as e:
        raise ConfigError("--submit needs the `kubernetes` package (pip install 'scalequest[train]')") from e
    import os

    # A private configuration (not the client's process-wide default), read from $KUBECONFIG as
    # it is now (the client resolves its default path once, at import).
    configuration = client.Configuration()
    try:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None, context=context,
                                client_configuration=configuration)
    except (ConfigException, FileNotFoundError, TypeError) as kube_err:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except ConfigException:
            raise ConfigError(f"no usable kube context ({kube_err}) and not running in a cluster") from None
    api = client.BatchV1Api(client.ApiClient(configuration))
    namespace = manifest["metadata"].get("namespace") or "default"
    try:
        created = api.create_namespaced_job(namespace=namespace, body=manifest)
    except ApiException as e:
        raise ConfigError(f"creating Job {manifest['metadata']['name']} in {namespace} failed: "
                          f"{e.status} {e.reason}: {(e.body or '')[:300]}") from None
    except Exception as e:  # connection refused, TLS, DNS...
        raise ConfigError(f"cannot reach the Kubernetes API: {e}") from None
    return api.api_client.sanitize_for_serialization(created)
