"""ServiceRuntime / RuntimeGroup: ordered start-up and shutdown, against a real gRPC server,
plus a real process stopped with SIGTERM / SIGINT."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from libs.errors import ConfigError
from libs.grpc import GrpcServer
from libs.metrics import counter, gauge, stage_metrics, start_metrics_server
from libs.runtime import SHUTDOWN_STEPS, RuntimeGroup, ServiceRuntime
from libs.settings import CommonSettings

REPO = Path(__file__).resolve().parents[2]
SERVICE = "sqtest.slow.v1.SlowService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Slow:
    """`Sleep` waits the requested milliseconds; `started` is set when a call arrives."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def sleep(self, request: bytes, context) -> bytes:
        self.started.set()
        await asyncio.sleep(int(request) / 1000)
        return b"done " + request


def add_slow(servicer: Slow, server: aio.Server) -> None:
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Sleep": grpc.unary_unary_rpc_method_handler(servicer.sleep)}
    )
    server.add_generic_rpc_handlers((handler,))


def settings(**kw) -> CommonSettings:
    base = {"grpc_host": "127.0.0.1", "grpc_port": 0, "shutdown_grace_seconds": 5, "metrics_port": 0}
    return CommonSettings(**{**base, **kw})


async def health(port: int) -> int:
    async with aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=2)
        return resp.status


class Recorder:
    """Fake worker / NATS connection / closer that record into one shared list, checking
    what is still up when they are called."""

    def __init__(self, events: list, name: str, server: GrpcServer | None = None, port: int | None = None):
        self.events, self.name, self.server, self.port = events, name, server, port

    async def stop(self, timeout: float) -> None:  # worker
        # readiness is already off, but the server still answers (in-flight RPCs can finish)
        self.events.append((f"{self.name}.stop", await health(self.port)))
        await asyncio.sleep(0.05)  # "finish and ack in-flight work"
        self.events.append((f"{self.name}.stopped", None))

    async def drain(self) -> None:  # NATS connection
        self.events.append((f"{self.name}.drain", self.server._stopped))

    async def close(self) -> None:  # closer
        self.events.append((f"{self.name}.close", None))


async def test_startup_hooks_run_in_order_before_serving():
    server = GrpcServer("svc", settings(), servicers=[(add_slow, Slow(), SERVICE)])
    rt = ServiceRuntime("svc", settings(), server)
    seen = []

    async def load_engine():
        seen.append(("load_engine", await health(server.port)))

    async def start_worker():
        seen.append(("start_worker", await health(server.port)))

    rt.add_startup(load_engine)
    rt.add_startup(start_worker)
    await rt.start()
    try:
        assert seen == [("load_engine", NOT_SERVING), ("start_worker", NOT_SERVING)]
        assert await health(rt.port) == SERVING
    finally:
        assert await rt.shutdown() is True


async def test_shutdown_runs_steps_in_order_and_in_flight_rpc_completes():
    events: list = []
    slow = Slow()
    server = GrpcServer("svc", settings(), servicers=[(add_slow, slow, SERVICE)])
    rt = ServiceRuntime("svc", settings(), server)

    async def wire():
        rt.register_worker(Recorder(events, "worker", port=server.port))
        rt.register_nats(Recorder(events, "nats", server=server))
        rt.register_closer(Recorder(events, "engine").close)
        rt.register_closer(lambda: events.append(("store.close", None)), name="store")  # sync closer
        rt.register_flusher(lambda: events.append(("counters.flush", None)), name="counters")

    rt.add_startup(wire)
    runner = asyncio.ensure_future(rt.run_until_shutdown())
    while not server.serving:
        await asyncio.sleep(0.01)
    assert await health(server.port) == SERVING

    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        in_flight = asyncio.ensure_future(ch.unary_unary(f"/{SERVICE}/Sleep")(b"400", timeout=10))
        await asyncio.wait_for(slow.started.wait(), 5)
        rt.request_shutdown("test")
        assert await asyncio.wait_for(runner, 15) == 0
        assert await in_flight == b"done 400"  # finished within the grace

    assert rt.steps == list(SHUTDOWN_STEPS)
    assert events == [
        ("worker.stop", NOT_SERVING),  # readiness was turned off first, server still up
        ("worker.stopped", None),
        ("counters.flush", None),  # state reaches KV after the work stopped, before NATS drains
        ("nats.drain", True),  # after the gRPC server stopped
        ("store.close", None),  # closers: last registered first
        ("engine.close", None),
    ]


async def test_failed_step_is_logged_and_the_rest_still_runs(caplog):
    events: list = []

    class BadWorker:
        async def stop(self, timeout):
            raise RuntimeError("worker exploded")

    class HungWorker:  # ignores its timeout: the step's bound catches it
        async def stop(self, timeout):
            await asyncio.sleep(60)

    rt = ServiceRuntime("svc", settings(), None, step_timeout=0.2)
    rt.register_worker(BadWorker())
    rt.register_worker(HungWorker())
    rt.register_closer(lambda: events.append("closed"))
    rt.request_shutdown("test")
    t0 = time.monotonic()
    assert await rt.run_until_shutdown() == 1
    assert time.monotonic() - t0 < 3
    assert events == ["closed"]
    assert rt.failures == ["stop_workers:BadWorker", "stop_workers:HungWorker"]
    assert "worker exploded" in caplog.text


async def test_startup_failure_cleans_up_and_propagates():
    events: list = []
    server = GrpcServer("svc", settings(), servicers=[(add_slow, Slow(), SERVICE)])
    rt = ServiceRuntime("svc", settings(), server)

    async def connect():
        rt.register_nats(Recorder(events, "nats", server=server))

    async def load():
        raise ConfigError("SQ_MODEL='nope': no such model")

    rt.add_startup(connect)
    rt.add_startup(load)
    with pytest.raises(ConfigError, match="SQ_MODEL"):
        await rt.run_until_shutdown()
    assert events == [("nats.drain", True)]
    assert server._stopped


async def test_shutdown_request_during_startup_cancels_it():
    events: list = []
    rt = ServiceRuntime("svc", settings(), GrpcServer("svc", settings()))

    async def slow_model_load():
        rt.register_closer(lambda: events.append("engine.close"))
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            events.append("load cancelled")
            raise

    rt.add_startup(slow_model_load)
    runner = asyncio.ensure_future(rt.run_until_shutdown())
    await asyncio.sleep(0.2)
    rt.request_shutdown("SIGTERM")
    assert await asyncio.wait_for(runner, 10) == 0
    assert events == ["load cancelled", "engine.close"]


async def test_group_shuts_down_step_by_step_and_shared_objects_once():
    events: list = []
    servers = [GrpcServer(n, settings()) for n in ("filter", "solver")]
    runtimes = [ServiceRuntime(s.service, settings(), s) for s in servers]
    shared_nats = Recorder(events, "shared-nats", server=servers[1])

    class Worker:
        def __init__(self, name):
            self.name = name

        async def stop(self, timeout):
            events.append((f"{self.name}.stop", all(not s.serving for s in servers)))
            await asyncio.sleep(0.05)

    class Engine:
        async def close(self):
            events.append(("engine.close", None))

    engine = Engine()
    for rt in runtimes:
        rt.register_worker(Worker(rt.name))
        rt.register_nats(shared_nats)
        rt.register_closer(engine.close)  # one engine shared by both services

    group = RuntimeGroup(runtimes)
    runner = asyncio.ensure_future(group.run_until_shutdown())
    while not all(s.serving for s in servers):
        await asyncio.sleep(0.01)
    runtimes[0].request_shutdown("test")  # one member asking shuts down the whole group
    assert await asyncio.wait_for(runner, 15) == 0

    assert [rt.steps for rt in runtimes] == [list(SHUTDOWN_STEPS)] * 2
    # both services were out of rotation before either worker stopped
    assert sorted(events[:2]) == [("filter.stop", True), ("solver.stop", True)]
    assert events[2:] == [("shared-nats.drain", True), ("engine.close", None)]
    assert await runtimes[1].shutdown() is True  # idempotent, same result


# --- metrics -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_runtime_serves_metrics_with_rpc_and_stage_counters():
    port = _free_port()
    server = GrpcServer("metered", settings(), servicers=[(add_slow, Slow(), SERVICE)])
    rt = ServiceRuntime("metered", settings(metrics_port=port), server)
    await rt.start()
    try:
        assert start_metrics_server(port, "127.0.0.1") == port  # idempotent per address
        async with aio.insecure_channel(f"127.0.0.1:{rt.port}") as ch:
            await ch.unary_unary(f"/{SERVICE}/Sleep")(b"1", timeout=5)
        stage_metrics("filter").processed.inc(3)
        stage_metrics("filter").dead_lettered("duplicate").inc()
        stage_metrics("filter").batch_seconds.observe(0.2)

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return r.read().decode()

        text = await asyncio.to_thread(scrape)
        assert 'scalequest_grpc_server_handled_total{code="OK",method="SlowService/Sleep",service="metered"}' in text
        assert 'scalequest_worker_items_processed_total{stage="filter"}' in text
        assert 'scalequest_worker_items_dead_lettered_total{reason="duplicate",stage="filter"}' in text
        assert 'scalequest_worker_batch_seconds_count{stage="filter"}' in text
    finally:
        await rt.shutdown()


def test_metric_helpers_create_once_and_reject_conflicts():
    a = counter("test_things_total", "Things.", ["kind"])
    assert counter("scalequest_test_things_total", "Things.", ["kind"]) is a
    with pytest.raises(ValueError, match="already exists"):
        counter("test_things_total", "Things.", ["other"])
    with pytest.raises(ValueError, match="already exists"):
        gauge("test_things_total", "Things.", ["kind"])


def test_metrics_port_in_use_is_config_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match="SQ_METRICS_PORT"):
            start_metrics_server(port, "127.0.0.1")
    assert start_metrics_server(0) == 0  # disabled


# --- a real process -----------------------------------------------------------------------------

SERVICE_SCRIPT = textwrap.dedent(
    """
    import asyncio, grpc, logging, sys
    from libs.grpc import GrpcServer
    from libs.logging import setup_logging
    from libs.runtime import ServiceRuntime, run_main
    from libs.settings import CommonSettings, load_settings

    class Worker:
        async def stop(self, timeout):
            logging.getLogger("tiny.worker").info("worker finished in-flight work")

    async def sleep(request, context):
        await asyncio.sleep(int(request) / 1000)
        return b"done"

    def add(servicer, server):
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "tiny.v1.Tiny", {"Sleep": grpc.unary_unary_rpc_method_handler(sleep)}),))

    async def main():
        settings = load_settings(CommonSettings)
        setup_logging(settings.log_level, json=settings.log_json, service="tiny")
        server = GrpcServer("tiny", settings, servicers=[(add, None, "tiny.v1.Tiny")])
        rt = ServiceRuntime("tiny", settings, server)
        rt.add_startup(lambda: asyncio.sleep(0))
        rt.register_worker(Worker())
        rt.register_closer(lambda: logging.getLogger("tiny").info("engine closed"), name="engine")
        rt.install_signal_handlers()
        return await rt.run_until_shutdown()

    run_main(main, prog="tiny")
    """
)


def _spawn(tmp_path: Path, **env: str) -> subprocess.Popen:
    script = tmp_path / "tiny_service.py"
    script.write_text(SERVICE_SCRIPT)
    full_env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "SQ_GRPC_HOST": "127.0.0.1",
        "SQ_GRPC_PORT": "0",
        "SQ_METRICS_PORT": "0",
        "SQ_LOG_JSON": "true",
        "SQ_SHUTDOWN_GRACE_SECONDS": "5",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, env=full_env, stderr=subprocess.PIPE, text=True
    )


def _wait_ready(proc: subprocess.Popen, timeout: float = 20) -> tuple[int, list[dict]]:
    lines: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = proc.stderr.readline()
        if not raw:
            break
        line = json.loads(raw)
        lines.append(line)
        if line.get("step") == "ready":
            return int(line["port"]), lines
    proc.kill()
    raise AssertionError(f"service never became ready: {lines}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_process_exits_cleanly_on_signal_with_logged_steps(tmp_path, sig):
    proc = _spawn(tmp_path)
    try:
        port, before = _wait_ready(proc)
        assert all(line["service"] == "tiny" for line in before)

        # an RPC in flight when the signal arrives still completes
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            future = ch.unary_unary("/tiny.v1.Tiny/Sleep").future(b"500", timeout=10)
            time.sleep(0.15)
            proc.send_signal(sig)
            assert future.result() == b"done"
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    after = [json.loads(x) for x in err.splitlines() if x.strip()]
    steps = [x["step"] for x in after if x.get("step")]
    assert steps[0] == "shutdown_requested"
    assert [s for s in steps if s in SHUTDOWN_STEPS] == list(SHUTDOWN_STEPS)
    assert steps[-1] == "shutdown_complete"
    messages = [x["msg"] for x in after]
    assert messages.index("worker finished in-flight work") < messages.index("engine closed")
    assert any(sig.name in m for m in messages)


def test_process_with_invalid_port_exits_2_with_one_line(tmp_path):
    proc = _spawn(tmp_path, SQ_GRPC_PORT="70000")
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 2
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("tiny: invalid configuration: SQ_GRPC_PORT=")


def test_process_with_port_in_use_exits_2_naming_the_setting(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _spawn(tmp_path, SQ_GRPC_PORT=str(port))
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 2
    # grpc's C core may log its own line first; ours is the last one
    assert err.strip().splitlines()[-1].startswith(f"tiny: SQ_GRPC_HOST='127.0.0.1' / SQ_GRPC_PORT={port}: cannot bind")
