"""`scalequest serve <svc>` as its container runs it: settings from env, gRPC health goes
SERVING once the engine and the queue are up, and SIGTERM shuts down in order, exit 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from libs.queue.server import free_port

CLI = str(Path(sys.executable).with_name("scalequest"))


def wait_serving(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise AssertionError("service never became SERVING")


@pytest.mark.parametrize("service", ["filter", "coordinator"])
def test_serve_and_sigterm(nats_server, tmp_path, service):
    port = free_port()
    env = {
        **os.environ,
        "SQ_NATS_URL": nats_server.url,
        "SQ_ENGINE": "fake",
        "SQ_GRPC_HOST": "127.0.0.1",
        "SQ_GRPC_PORT": str(port),
        "SQ_STORE_URL": str(tmp_path / "store"),
        "SQ_LOG_JSON": "true",
    }
    proc = subprocess.Popen([CLI, "serve", service], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_serving(port)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    steps = [json.loads(ln).get("step") for ln in err.splitlines() if ln.startswith("{")]
    order = ["readiness_off", "stop_workers", "stop_grpc", "flush_state", "drain_nats", "close_resources"]
    assert [s for s in steps if s in order] == order, steps
