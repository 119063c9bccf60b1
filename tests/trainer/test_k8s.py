"""Training/eval Jobs: the rendered manifest (validated against the Kubernetes schemas with
kubernetes-validate), its behaviours, the CLI's --dry-run, and --submit against a local HTTP
endpoint that speaks the Jobs API."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import kubernetes_validate
import pytest
import yaml

from libs.errors import ConfigError
from scalequest_cli.main import main
from services.trainer.cli import TRAIN_FLAGS, spec_to_argv
from services.trainer.k8s import (
    GPU_RESOURCE,
    JobConfig,
    job_name,
    render_job,
    submit_job,
)
from services.trainer.train import TrainSpec

K8S_VERSIONS = ("1.30.0", "1.33.0", "1.37.0")


def container(m: dict) -> dict:
    return m["spec"]["template"]["spec"]["containers"][0]


def validate(m: dict) -> None:
    for v in K8S_VERSIONS:
        kubernetes_validate.validate(m, v, strict=True)


def gpu_job(**kw) -> dict:
    return render_job(JobConfig(name="sq-train-qft-x", args=["train", "qft", "--data", "s3://b/q.jsonl"],
                                store_url="s3://b/p", nats_url="nats://nats:4222", s3_endpoint="http://minio:9000", **kw))


def test_gpu_job_shape_and_schema():
    m = gpu_job()
    validate(m)
    spec, pod, c = m["spec"], m["spec"]["template"]["spec"], container(gpu_job())
    # the chart's training.defaults
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (2, 86400, 604800)
    assert pod["restartPolicy"] == "Never"
    assert c["resources"]["limits"][GPU_RESOURCE] == "1" and pod["runtimeClassName"] == "nvidia"
    assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert c["image"].endswith("-trainer:0.1.0-gpu") and c["name"] == "trainer"
    # non-root (the image's UID), read-only root filesystem, writable /tmp from an emptyDir
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    mounts = {mnt["mountPath"]: mnt["name"] for mnt in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in vols[mounts["/tmp"]] and vols[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert "emptyDir" in vols[mounts["/work"]] and "/home/scalequest/.cache" in mounts
    # the chart's pipeline labels: its NetworkPolicies let this pod reach NATS and the store
    labels = m["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/instance"] == "scalequest" and labels["app.kubernetes.io/part-of"] == "scalequest"
    # S3 keys by reference to a Secret, never inlined
    env = {e["name"]: e for e in c["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "scalequest-s3"
    assert "value" not in env["AWS_SECRET_ACCESS_KEY"]
    assert env["SQ_STORE_URL"]["value"] == "s3://b/p" and env["SQ_S3_ENDPOINT"]["value"] == "http://minio:9000"
    assert c["command"] == ["scalequest"] and c["args"][:2] == ["train", "qft"]


def test_cpu_only_job_has_no_gpu_limit_or_toleration():
    m = gpu_job(gpus=0)
    validate(m)
    assert GPU_RESOURCE not in container(m)["resources"]["limits"]
    assert "tolerations" not in m["spec"]["template"]["spec"] and "runtimeClassName" not in m["spec"]["template"]["spec"]
    assert container(m)["image"].endswith("-cpu")


def test_job_options_render_valid_manifests():
    m = gpu_job(gpus=2, cache_pvc="model-cache", runtime_class="", node_selector={"gpu": "h100"}, release="prod",
                service_account="trainer", s3_secret="", env={"NCCL_DEBUG": "WARN"}, namespace="ml",
                priority_class="scalequest-training")
    validate(m)
    pod = m["spec"]["template"]["spec"]
    assert "runtimeClassName" not in pod and pod["nodeSelector"] == {"gpu": "h100"}
    assert pod["serviceAccountName"] == "trainer" and m["metadata"]["namespace"] == "ml"
    assert pod["priorityClassName"] == "scalequest-training"
    assert {"name": "cache", "persistentVolumeClaim": {"claimName": "model-cache"}} in pod["volumes"]
    assert m["metadata"]["labels"]["app.kubernetes.io/instance"] == "prod"
    names = [e["name"] for e in container(m)["env"]]
    assert "AWS_ACCESS_KEY_ID" not in names and "NCCL_DEBUG" in names


def test_job_names_are_dns_labels():
    assert job_name("sq", "train", "QFT_Run.1") == "sq-train-qft-run-1"
    long = job_name("sq", "train", "x" * 100)
    assert len(long) <= 63 and long != job_name("sq", "train", "x" * 99)
    with pytest.raises(ConfigError):
        render_job(JobConfig(name="Bad_Name", args=[]))


def test_spec_round_trips_through_job_args():
    import argparse

    from services.trainer.cli import add_train_parser

    spec = TrainSpec(kind="sft", data=["s3://b/a.parquet", "run:r1"], lora=True, packing=False, learning_rate=1e-5,
                     merge_lora=False).resolved()
    ap = argparse.ArgumentParser()
    add_train_parser(ap.add_subparsers(dest="cmd"))
    args = ap.parse_args(["train", "sft", *spec_to_argv(spec, TRAIN_FLAGS)])
    from services.trainer.cli import _spec_from_args

    again = _spec_from_args(TrainSpec, args, TRAIN_FLAGS, kind="sft", store=spec.store).resolved()
    again.data = list(again.data)
    assert again == spec


def test_cli_dry_run_prints_a_valid_job(capsys):
    rc = main(["train", "qpo", "--store", "s3://bucket/data", "--run", "qpo-run-1", "--name", "qpo-demo",
               "--lr", "1e-6", "--gpus", "2", "--dry-run"])
    assert rc == 0
    m = yaml.safe_load(capsys.readouterr().out)
    validate(m)
    args = container(m)["args"]
    assert args[:2] == ["train", "qpo"] and "--resume" in args
    assert args[args.index("--lr") + 1] == "1e-06" and args[args.index("--run") + 1] == "qpo-run-1"
    assert args[args.index("--output-dir") + 1] == "/work/train/qpo-demo"
    assert container(m)["resources"]["limits"][GPU_RESOURCE] == "2"
    assert m["metadata"]["name"] == "sq-train-qpo-demo"
    rc = main(["eval", "--model", "s3://bucket/data/models/qpo-demo", "--bench", "gsm8k=s3://bucket/bench/gsm8k/test.jsonl",
               "--gpus", "0", "--dry-run"])
    m = yaml.safe_load(capsys.readouterr().out)
    validate(m)
    assert container(m)["args"][:1] == ["eval"] and m["metadata"]["labels"]["app.kubernetes.io/component"] == "eval"


class _JobsAPI(BaseHTTPRequestHandler):
    """POST /apis/batch/v1/namespaces/<ns>/jobs -> 201 with the Job echoed back (or a scripted error)."""

    requests: list = []
    reply_status = 201

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        parts = self.path.split("/")
        ok = len(parts) == 7 and parts[1:4] == ["apis", "batch", "v1"] and parts[4] == "namespaces" and parts[6] == "jobs"
        status = type(self).reply_status if ok else 404
        if status == 201:
            out = dict(body)
            out["metadata"] = {**body["metadata"], "uid": "0e7f9a2c-1111-2222-3333-444455556666",
                               "creationTimestamp": "2026-01-01T00:00:00Z", "resourceVersion": "1"}
        else:
            out = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": status,
                   "reason": "AlreadyExists" if status == 409 else "NotFound",
                   "message": f'jobs.batch "{body["metadata"]["name"]}" already exists'}
        data = json.dumps(out).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):  # keep test output quiet
        pass


@pytest.fixture
def jobs_api(tmp_path, monkeypatch):
    _JobsAPI.requests = []
    _JobsAPI.reply_status = 201
    srv = HTTPServer(("127.0.0.1", 0), _JobsAPI)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    kubeconfig = {
        "apiVersion": "v1", "kind": "Config", "current-context": "local",
        "clusters": [{"name": "local", "cluster": {"server": f"http://127.0.0.1:{srv.server_address[1]}"}}],
        "users": [{"name": "me", "user": {"token": "test-token"}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "me", "namespace": "ml"}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(path))
    yield _JobsAPI
    srv.shutdown()


def test_submit_posts_the_job_to_the_current_context(jobs_api, capsys):
    """What this proves: `scalequest train ... --submit` builds the same manifest as --dry-run,
    loads the current kube context from KUBECONFIG with the `kubernetes` client, sends exactly
    that Job with the context's credentials to POST /apis/batch/v1/namespaces/<ns>/jobs, and
    reports the created object; an API error (409 AlreadyExists) ends as a one-line error.

    What it cannot prove: that a real API server admits the Job (admission webhooks, Pod Security
    "restricted", quotas, RBAC), that the image starts, or that the GPU is scheduled. The schema
    tests above check the manifest against the Kubernetes OpenAPI schemas instead."""
    argv = ["train", "sft", "--store", "s3://bucket/data", "--run", "r1", "--name", "sft-a", "--namespace", "ml"]
    assert main([*argv, "--submit"]) == 0
    assert "job.batch/sq-train-sft-a created in namespace ml" in capsys.readouterr().out
    [req] = jobs_api.requests
    assert req["path"] == "/apis/batch/v1/namespaces/ml/jobs"
    headers = {k.lower(): v for k, v in req["headers"].items()}
    assert headers["authorization"] == "Bearer test-token"
    assert main([*argv, "--dry-run"]) == 0
    assert req["body"] == yaml.safe_load(capsys.readouterr().out)
    validate(req["body"])

    jobs_api.reply_status = 409
    assert main([*argv, "--submit"]) == 1
    assert "409" in capsys.readouterr().err


def test_submit_without_any_cluster_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError, match="kube context"):
        submit_job(gpu_job())
