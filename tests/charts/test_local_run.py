"""Chart-driven local run: the chart's own rendering is what gets started.

Renders charts/scalequest with values that point every host at 127.0.0.1 (external NATS = a
real local nats-server, S3 = a real local SeaweedFS) and SQ_ENGINE=fake with the scripted
math model, then starts, as local OS processes from this virtualenv:

1. the bootstrap hook Job's command (``scalequest bootstrap ...``) -- must exit 0;
2. every Deployment's command + args with its environment (ConfigMap via envFrom, plain env,
   Secret references resolved from a local table), the image entrypoint ``scalequest``
   replaced by ``.venv/bin/scalequest``;

waits until each answers the gRPC health check its readiness probe names, runs the helm test
pods' commands (gRPC health, JetStream round trip) against them, starts a small run through
the coordinator's gRPC API and checks the records land in S3. Every process binds 127.0.0.1
on free ports and is stopped with SIGTERM (the pod's shutdown path) by the test.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from libs.chaos import wait_health_serving
from tests.charts.chartlib import COMPONENTS, Manifest, Rendered, render

pytest.importorskip("helm_python", reason="helm-python-sdk is in the dev extra")

VENV_BIN = Path(sys.executable).parent
SCALEQUEST = VENV_BIN / "scalequest"
SECRET = "sq-local-s3"
START_TIMEOUT = 60.0


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command/args ($$ escapes, unknown stays as is)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def container_env(r: Rendered, m: Manifest, secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """The container's environment as the kubelet would build it."""
    (ctr,) = m.pod_template()["spec"]["containers"]
    env: dict[str, str] = {}
    for src in ctr.get("envFrom") or []:
        env.update(r.named("ConfigMap", src["configMapRef"]["name"]).obj["data"])
    for e in ctr.get("env") or []:
        if "value" in e:
            env[e["name"]] = expand(e["value"], env)
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def command_of(m: Manifest, env: dict[str, str]) -> list[str]:
    (ctr,) = m.pod_template()["spec"]["containers"]
    cmd = [expand(a, env) for a in ctr["command"] + (ctr.get("args") or [])]
    if cmd[0] == "scalequest":  # the image's entrypoint, from this virtualenv
        cmd[0] = str(SCALEQUEST)
    elif cmd[0] == "python":
        cmd[0] = sys.executable
    return cmd


def base_env(home: Path) -> dict[str, str]:
    """A clean process environment: nothing SQ_* or AWS_* leaks in from the test runner."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ", "SYSTEMROOT")}
    return {**keep, "HOME": str(home), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1"}


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, n: int = 30) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return f"--- {self.name} (exit {self.popen.poll()}) ---\n" + "\n".join(lines[-n:])


def start(name: str, cmd: list[str], env: dict[str, str], cwd: Path, logs: Path) -> Proc:
    log = logs / f"{name}.log"
    with open(log, "wb") as f:
        p = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                             start_new_session=True)
    return Proc(name, p, log)


def stop(proc: Proc, grace: float = 20.0) -> int:
    if proc.popen.poll() is None:
        try:
            os.killpg(proc.popen.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait(timeout=10)
    return proc.popen.returncode


async def wait_serving(port: int, service: str, proc: Proc, timeout: float) -> float:
    return await wait_health_serving(port, service, lambda: proc.popen.poll() is None, proc.tail, timeout, proc.name)


@pytest.mark.s3
async def test_chart_driven_local_run(nats_server, s3_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from scalequest.common.v1 import items_pb2 as pb
    from scalequest.coordinator.v1 import coordinator_pb2 as capi
    from scalequest.coordinator.v1 import coordinator_pb2_grpc as capi_grpc

    t_start = time.monotonic()
    ports = free_ports(2 * len(COMPONENTS))
    store_url = f"s3://chart-run-{os.getpid()}/data"
    values = {
        "listenHost": "127.0.0.1",
        "nats": {"enabled": False},
        "minio": {"enabled": False},
        "externalNats": {"url": nats_server.url},
        "objectStore": {"url": store_url, "s3": {"endpoint": s3_server.endpoint, "existingSecret": SECRET}},
        "queue": {"ackWaitSeconds": 30},
        "common": {"config": {"SQ_ENGINE": "fake", "SQ_MODEL": "scripted-math", "SQ_LOG_JSON": True}},
        # The sink holds records un-acked until their shard is durable: room for a whole run.
        "coordinator": {"config": {"SQ_WORKER_CONCURRENCY": 8, "SQ_BATCH_SIZE": 32}},
    }
    for i, c in enumerate(COMPONENTS):
        values.setdefault(c, {})["ports"] = {"grpc": ports[2 * i], "metrics": ports[2 * i + 1]}
    r = render(values)
    secrets = {SECRET: {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key}}
    logs = tmp_path / "logs"
    logs.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    procs: list[Proc] = []
    try:
        # 1. the bootstrap hook Job, to completion
        job = r.one("Job", "bootstrap")
        env = {**base_env(home), **container_env(r, job, secrets)}
        boot = start("bootstrap", command_of(job, env), env, tmp_path, logs)
        assert boot.popen.wait(timeout=60) == 0, boot.tail()

        # 2. every Deployment, as its pod would run it
        probes = {}
        for c in COMPONENTS:
            dep = r.one("Deployment", c)
            env = {**base_env(home), **container_env(r, dep, secrets)}
            assert env["SQ_GRPC_HOST"] == "127.0.0.1"
            procs.append(start(c, command_of(dep, env), env, tmp_path, logs))
            (ctr,) = dep.pod_template()["spec"]["containers"]
            probes[c] = ctr["readinessProbe"]["grpc"]
        started = await asyncio.gather(*(
            wait_serving(probes[p.name]["port"], probes[p.name]["service"], p, START_TIMEOUT) for p in procs))
        t_ready = time.monotonic()

        # 3. the helm test pods' commands against the local services
        for pod in r.of_kind("Pod"):
            env = {**base_env(home), **container_env(r, pod, secrets)}
            cmd = command_of(pod, env)
            if pod.name.endswith("-test-health"):  # Service DNS name -> the local process
                cmd[-2] = "127.0.0.1:" + cmd[-2].rsplit(":", 1)[1]
            out = await asyncio.to_thread(subprocess.run, cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                                          timeout=60, check=False)
            assert out.returncode == 0, f"helm test {pod.name} failed:\n{out.stdout}\n{out.stderr}"

        # metrics are served where the Service says
        import httpx

        metrics_port = values["solver"]["ports"]["metrics"]
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)).text
        assert "scalequest_" in text

        # 4. a small run through the coordinator's gRPC API
        target = 6
        async with grpc.aio.insecure_channel(f"127.0.0.1:{probes['coordinator']['port']}") as ch:
            stub = capi_grpc.CoordinatorServiceStub(ch)
            config = pb.RunConfig(target=target, seed=7, n_candidates=4, max_outstanding=16, shard_max_records=3,
                                  shard_max_seconds=1.0)
            run_id = (await stub.StartRun(capi.StartRunRequest(config=config))).run_id

            async def follow():
                last = None
                async for st in stub.StreamProgress(capi.StreamProgressRequest(run_id=run_id, interval_seconds=0.3)):
                    last = st
                return last

            try:
                last = await asyncio.wait_for(follow(), 60)
            except asyncio.TimeoutError:
                raise AssertionError("run did not complete in 60s\n" + "\n".join(p.tail() for p in procs)) from None
            assert last is not None and last.state == "completed", last
            final = (await stub.GetRun(capi.GetRunRequest(run_id=run_id))).status
        assert final.accepted == target

        # 5. the records are in the object store the chart configured
        from libs.storage.objectstore import open_store
        from libs.storage.shards import list_shards, read_manifest, read_shard

        for k, v in s3_server.env().items():
            monkeypatch.setenv(k, v)
        store = open_store(store_url)
        # The run's end is durable once the manifest says so (the coordinator writes the last
        # shards, then the manifest, then announces the end); the run state may say
        # "completed" a moment earlier.
        deadline = time.monotonic() + 30
        while True:
            manifest = await asyncio.to_thread(read_manifest, store, run_id)
            if manifest is not None and manifest.state == "completed":
                break
            assert time.monotonic() < deadline, f"manifest of {run_id} not completed: {manifest}"
            await asyncio.sleep(0.2)
        keys = await asyncio.to_thread(list_shards, store, run_id)
        rows = [row for key in keys for row in await asyncio.to_thread(read_shard, store, key)]
        assert len(rows) == target and len({row["item_id"] for row in rows}) == target, (
            f"{len(rows)} rows in {keys}\n" + "\n".join(p.tail() for p in procs))
        assert rows[0]["generator_model"] == "fake-math"
        assert manifest.accepted == target and len(manifest.shards) == len(keys)
        t_run = time.monotonic()
    finally:
        codes = {p.name: stop(p) for p in procs}
    # SIGTERM is the pod's shutdown path: every service drains and exits cleanly
    assert all(code == 0 for code in codes.values()), codes
    print(f"\nchart-driven local run: services SERVING after {max(started):.1f}s, "
          f"run of {target} in {t_run - t_ready:.1f}s, total {time.monotonic() - t_start:.1f}s")
