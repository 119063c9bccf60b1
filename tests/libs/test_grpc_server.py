"""GrpcServer + ErrorMappingInterceptor over real channels on 127.0.0.1 ephemeral ports.

The test service is a generic handler with raw-bytes messages, so these tests depend only
on grpc itself; one reflection test also hosts a generated scalequest servicer to check
that descriptors resolve."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from libs import errors
from libs.errors import ConfigError
from libs.grpc import GrpcServer
from libs.settings import CommonSettings

SERVICE = "sqtest.echo.v1.EchoService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

DOMAIN_ERRORS = {
    b"invalid": (errors.InvalidArgument("question is empty"), grpc.StatusCode.INVALID_ARGUMENT),
    b"notfound": (errors.NotFound("run r-1 not found"), grpc.StatusCode.NOT_FOUND),
    b"notready": (errors.NotReady("engine loading"), grpc.StatusCode.UNAVAILABLE),
    b"exhausted": (errors.ResourceExhausted("too many questions"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    b"config": (errors.ConfigError("SQ_MODEL: not found"), grpc.StatusCode.FAILED_PRECONDITION),
    b"timeout": (asyncio.TimeoutError(), grpc.StatusCode.DEADLINE_EXCEEDED),
}


class EchoServicer:
    """Echo: returns the request; special payloads raise or abort. Sleep: waits `n` ms."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def echo(self, request: bytes, context: aio.ServicerContext) -> bytes:
        if request in DOMAIN_ERRORS:
            raise DOMAIN_ERRORS[request][0]
        if request == b"crash":
            raise KeyError("db password is hunter2 at line 42")
        if request == b"abort":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not yours")
        if request == b"big-response":
            return b"x" * 200_000
        return request

    async def sleep(self, request: bytes, context: aio.ServicerContext) -> bytes:
        self.started.set()
        await asyncio.sleep(int(request) / 1000)
        return b"slept " + request

    def sync_echo(self, request: bytes, context) -> bytes:
        if request in DOMAIN_ERRORS:
            raise DOMAIN_ERRORS[request][0]
        return request

    async def stream(self, request: bytes, context: aio.ServicerContext):
        yield b"one"
        yield b"two"
        if request in DOMAIN_ERRORS:
            raise DOMAIN_ERRORS[request][0]
        if request == b"crash":
            raise RuntimeError("stream internals")



def add_echo_servicer(servicer: EchoServicer, server: aio.Server) -> None:
    """Plays the part of a generated ``add_<Service>Servicer_to_server``."""
    rpcs = {
        "Echo": grpc.unary_unary_rpc_method_handler(servicer.echo),
        "Sleep": grpc.unary_unary_rpc_method_handler(servicer.sleep),
        "Stream": grpc.unary_stream_rpc_method_handler(servicer.stream),
        "SyncEcho": grpc.unary_unary_rpc_method_handler(servicer.sync_echo),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, rpcs),))


def settings(**kw) -> CommonSettings:
    base = {"grpc_host": "127.0.0.1", "grpc_port": 0, "grpc_max_message_bytes": 64 * 1024, "shutdown_grace_seconds": 5}
    return CommonSettings(**{**base, **kw})


@pytest.fixture
async def echo_server():
    servicer = EchoServicer()
    server = GrpcServer("echo", settings(), servicers=[(add_echo_servicer, servicer, SERVICE)])
    port = await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield server, servicer, channel
    finally:
        await channel.close()
        await server.stop(0)


def call(channel: aio.Channel, method: str):
    return channel.unary_unary(f"/{SERVICE}/{method}")


async def health_status(channel: aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)).status


# --- health and reflection --------------------------------------------------------------------


async def test_health_not_serving_until_set_serving(echo_server):
    server, _, channel = echo_server
    assert await health_status(channel, "") == NOT_SERVING
    assert await health_status(channel, SERVICE) == NOT_SERVING
    # the RPCs themselves are reachable: NOT_SERVING is a readiness signal, not a gate
    assert await call(channel, "Echo")(b"hi", timeout=5) == b"hi"

    await server.set_serving(True)
    assert await health_status(channel, "") == SERVING
    assert await health_status(channel, SERVICE) == SERVING

    await server.set_serving(False)
    assert await health_status(channel, SERVICE) == NOT_SERVING

    with pytest.raises(aio.AioRpcError) as e:
        await health_status(channel, "no.such.Service")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_watch_sees_transition(echo_server):
    server, _, channel = echo_server
    stub = health_pb2_grpc.HealthStub(channel)
    watch = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
    assert (await watch.read()).status == NOT_SERVING
    await server.set_serving(True)
    assert (await asyncio.wait_for(watch.read(), 5)).status == SERVING
    watch.cancel()


async def _list_services(channel: aio.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call_ = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names: set[str] = set()
    async for response in call_:
        names |= {s.name for s in response.list_services_response.service}
    return names


async def test_reflection_lists_services(echo_server):
    _, _, channel = echo_server
    assert await _list_services(channel) == {
        SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


async def test_reflection_resolves_generated_service_descriptors():
    """With a generated servicer, reflection serves its descriptors (what grpcurl needs)."""
    filter_pb2 = pytest.importorskip("scalequest.filter.v1.filter_pb2")
    filter_grpc = pytest.importorskip("scalequest.filter.v1.filter_pb2_grpc")
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    (svc_desc,) = filter_pb2.DESCRIPTOR.services_by_name.values()
    add_fn = getattr(filter_grpc, f"add_{svc_desc.name}Servicer_to_server")
    servicer = getattr(filter_grpc, f"{svc_desc.name}Servicer")()
    server = GrpcServer("filter", settings(), servicers=[(add_fn, servicer, svc_desc.full_name)])
    port = await server.start()
    try:
        def resolve() -> tuple[list[str], list[str]]:
            # the descriptor database is a synchronous client: run it beside the loop
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                db = ProtoReflectionDescriptorDatabase(ch)
                services = list(db.get_services())
                desc = DescriptorPool(db).FindServiceByName(svc_desc.full_name)
                return services, [m.name for m in desc.methods]

        services, methods = await asyncio.to_thread(resolve)
        assert svc_desc.full_name in services
        assert methods == [m.name for m in svc_desc.methods]

        # the generated base servicer's synchronous "Unimplemented" handler passes through
        method = svc_desc.methods[0]
        async with aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            with pytest.raises(aio.AioRpcError) as e:
                await ch.unary_unary(f"/{svc_desc.full_name}/{method.name}")(b"", timeout=5)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(0)


# --- error mapping ----------------------------------------------------------------------------


@pytest.mark.parametrize("payload", list(DOMAIN_ERRORS))
async def test_domain_errors_map_to_status_codes(echo_server, payload):
    _, _, channel = echo_server
    exc, code = DOMAIN_ERRORS[payload]
    with pytest.raises(aio.AioRpcError) as e:
        await call(channel, "Echo")(payload, timeout=5)
    assert e.value.code() == code
    assert e.value.details() == (str(exc) or code.name.lower().replace("_", " "))


@pytest.mark.parametrize("payload", [b"notready", b"invalid"])
async def test_domain_errors_in_server_stream_after_messages(echo_server, payload):
    _, _, channel = echo_server
    got = []
    with pytest.raises(aio.AioRpcError) as e:
        async for message in channel.unary_stream(f"/{SERVICE}/Stream")(payload, timeout=5):
            got.append(message)
    assert got == [b"one", b"two"]
    assert e.value.code() == DOMAIN_ERRORS[payload][1]


async def test_sync_handler_errors_are_mapped_too(echo_server):
    _, _, channel = echo_server
    assert await call(channel, "SyncEcho")(b"hello", timeout=5) == b"hello"
    with pytest.raises(aio.AioRpcError) as e:
        await call(channel, "SyncEcho")(b"notfound", timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def test_unknown_error_is_internal_with_ref_and_traceback_only_in_log(echo_server, caplog):
    _, _, channel = echo_server
    caplog.set_level(logging.INFO, logger="libs.grpc.interceptors")
    with pytest.raises(aio.AioRpcError) as e:
        await call(channel, "Echo")(b"crash", timeout=5)
    assert e.value.code() == grpc.StatusCode.INTERNAL
    details = e.value.details()
    assert details.startswith("internal error (see server logs, ref=")
    assert "hunter2" not in details and "KeyError" not in details and "Traceback" not in details
    ref = details.rsplit("ref=", 1)[1].rstrip(")")
    assert len(ref) >= 8

    (record,) = [r for r in caplog.records if getattr(r, "ref", None) == ref]
    assert record.levelno == logging.ERROR
    assert ref in record.getMessage()
    text = logging.Formatter().formatException(record.exc_info)
    assert "Traceback" in text and "KeyError" in text and "hunter2" in text and "in echo" in text
    assert "hunter2" not in str(e.value.trailing_metadata())


async def test_unknown_error_in_stream_is_internal(echo_server):
    _, _, channel = echo_server
    with pytest.raises(aio.AioRpcError) as e:
        async for _ in channel.unary_stream(f"/{SERVICE}/Stream")(b"crash", timeout=5):
            pass
    assert e.value.code() == grpc.StatusCode.INTERNAL
    assert "stream internals" not in e.value.details()


async def test_abort_passes_through_untouched(echo_server):
    _, _, channel = echo_server
    with pytest.raises(aio.AioRpcError) as e:
        await call(channel, "Echo")(b"abort", timeout=5)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert e.value.details() == "not yours"


async def test_rpc_metrics_recorded(echo_server):
    _, _, channel = echo_server

    def handled(code: str) -> float:
        labels = {"service": "echo", "method": "EchoService/Echo", "code": code}
        return REGISTRY.get_sample_value("scalequest_grpc_server_handled_total", labels) or 0.0

    ok0, nf0 = handled("OK"), handled("NOT_FOUND")
    await call(channel, "Echo")(b"x", timeout=5)
    await call(channel, "Echo")(b"y", timeout=5)
    with pytest.raises(aio.AioRpcError):
        await call(channel, "Echo")(b"notfound", timeout=5)
    assert handled("OK") == ok0 + 2
    assert handled("NOT_FOUND") == nf0 + 1
    count = REGISTRY.get_sample_value(
        "scalequest_grpc_server_handling_seconds_count", {"service": "echo", "method": "EchoService/Echo"}
    )
    assert count is not None and count >= 3
    in_flight = REGISTRY.get_sample_value(
        "scalequest_grpc_server_in_flight_rpcs", {"service": "echo", "method": "EchoService/Echo"}
    )
    assert in_flight == 0


# --- limits, binding, shutdown -----------------------------------------------------------------


async def test_message_size_limit_is_resource_exhausted(echo_server):
    _, _, channel = echo_server  # limit: 64 KiB
    assert await call(channel, "Echo")(b"x" * 60_000, timeout=5) == b"x" * 60_000
    with pytest.raises(aio.AioRpcError) as e:
        await call(channel, "Echo")(b"x" * 100_000, timeout=5)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(aio.AioRpcError) as e:  # a too-large response is refused by the server too
        await call(channel, "Echo")(b"big-response", timeout=5)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_bind_failure_is_config_error_naming_the_setting(echo_server):
    server, _, _ = echo_server
    clash = GrpcServer("clash", settings(grpc_port=server.port))
    with pytest.raises(ConfigError, match="SQ_GRPC_PORT") as e:
        await clash.start()
    assert "SQ_GRPC_HOST" in str(e.value) and str(server.port) in str(e.value)


async def test_stop_lets_in_flight_rpc_finish_within_grace(echo_server):
    server, servicer, channel = echo_server
    await server.set_serving(True)
    in_flight = asyncio.ensure_future(call(channel, "Sleep")(b"300", timeout=10))
    await asyncio.wait_for(servicer.started.wait(), 5)

    t0 = time.monotonic()
    await server.stop(grace=5)
    assert await in_flight == b"slept 300"
    assert time.monotonic() - t0 < 3  # stop returns once the RPC is done, not after the grace
    await server.set_serving(True)  # ignored after stop
    assert not server.serving
    with pytest.raises(aio.AioRpcError) as e:
        await call(channel, "Echo")(b"late", timeout=2)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_stop_cancels_rpc_that_outlives_grace(echo_server):
    server, servicer, channel = echo_server
    in_flight = asyncio.ensure_future(call(channel, "Sleep")(b"10000", timeout=20))
    await asyncio.wait_for(servicer.started.wait(), 5)
    t0 = time.monotonic()
    await server.stop(grace=0.3)
    assert time.monotonic() - t0 < 3
    with pytest.raises(aio.AioRpcError) as e:
        await in_flight
    assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
