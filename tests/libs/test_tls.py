"""TLS for gRPC (libs/grpc/server.py, libs/grpc/channel.py) and NATS (libs/tls.py) with a
throw-away CA made at test time (tests/fixtures/certs.py)."""

from __future__ import annotations

import asyncio
import ssl

import grpc
import nats
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from libs.errors import ConfigError
from libs.grpc import GrpcServer
from libs.grpc.channel import open_channel
from libs.queue.auth import client_options
from libs.queue.server import EmbeddedNats, free_port
from libs.queue.topology import connect, ensure_topology
from libs.settings import CommonSettings, load_settings
from libs.tls import nats_tls_context

SERVING = health_pb2.HealthCheckResponse.SERVING


def server_settings(pki, **kw) -> CommonSettings:
    return CommonSettings(grpc_host="127.0.0.1", grpc_port=0, shutdown_grace_seconds=0,
                          grpc_tls_cert=str(pki.server_cert), grpc_tls_key=str(pki.server_key), **kw)


async def check(channel, timeout: float = 5.0) -> int:
    resp = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
    return resp.status


# ------------------------------------------------------------------------------ gRPC


async def test_grpc_health_over_tls_and_plaintext_refused(pki):
    server = GrpcServer("tls-test", server_settings(pki))
    port = await server.start()
    await server.set_serving(True)
    try:
        assert server.tls
        for target in (f"127.0.0.1:{port}", f"localhost:{port}"):
            async with open_channel(target, CommonSettings(grpc_tls_ca=str(pki.ca))) as ch:
                assert await check(ch) == SERVING
        # a plaintext client cannot talk to the TLS port
        async with aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            with pytest.raises(aio.AioRpcError) as e:
                await check(ch, timeout=3)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        # a client trusting another CA refuses the server's certificate
        async with open_channel(f"127.0.0.1:{port}", CommonSettings(grpc_tls_ca=str(pki.other_ca))) as ch:
            with pytest.raises(aio.AioRpcError) as e:
                await check(ch, timeout=3)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)


async def test_grpc_mutual_tls_requires_a_client_certificate(pki):
    server = GrpcServer("mtls-test", server_settings(pki, grpc_tls_client_ca=str(pki.ca)))
    port = await server.start()
    await server.set_serving(True)
    try:
        target = f"127.0.0.1:{port}"
        async with open_channel(target, CommonSettings(grpc_tls_ca=str(pki.ca))) as ch:
            with pytest.raises(aio.AioRpcError) as e:
                await check(ch, timeout=3)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        client = CommonSettings(grpc_tls_ca=str(pki.ca), grpc_tls_cert=str(pki.client_cert),
                                grpc_tls_key=str(pki.client_key))
        async with open_channel(target, client) as ch:
            assert await check(ch) == SERVING
    finally:
        await server.stop(0)


async def test_plaintext_health_port_for_probes(pki):
    """SQ_GRPC_HEALTH_PORT: Kubernetes' gRPC probes cannot speak TLS, so the health service
    (and only it) is also served in plaintext on its own port, with the same status."""
    health_port = free_port()
    server = GrpcServer("probe-test", server_settings(pki, grpc_health_port=health_port))
    port = await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{health_port}") as ch:
            assert await check(ch) == health_pb2.HealthCheckResponse.NOT_SERVING
            await server.set_serving(True)
            assert await check(ch) == SERVING
            # nothing but health there: reflection is not served on the plaintext port
            from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

            with pytest.raises(aio.AioRpcError) as e:
                async for _ in reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=3):
                    pass
            assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        async with aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            with pytest.raises(aio.AioRpcError):
                await check(ch, timeout=3)
    finally:
        await server.stop(0)
    async with aio.insecure_channel(f"127.0.0.1:{health_port}") as ch:
        with pytest.raises(aio.AioRpcError):
            await check(ch, timeout=2)


async def test_open_channel_reads_the_environment(pki, monkeypatch):
    server = GrpcServer("env-test", server_settings(pki))
    port = await server.start()
    await server.set_serving(True)
    try:
        monkeypatch.setenv("SQ_GRPC_TLS_CA", str(pki.ca))
        monkeypatch.setenv("SQ_GRPC_TLS_SERVER_NAME", "localhost")
        async with open_channel(f"127.0.0.1:{port}") as ch:
            assert await check(ch) == SERVING
    finally:
        await server.stop(0)


async def test_bad_tls_files_are_config_errors(pki, tmp_path):
    not_pem = tmp_path / "x.pem"
    not_pem.write_text("hello")
    with pytest.raises(ConfigError, match="SQ_GRPC_TLS_CERT=.*cannot read"):
        await GrpcServer("x", CommonSettings(grpc_host="127.0.0.1", grpc_port=0, grpc_tls_cert=str(tmp_path / "missing.pem"),
                                             grpc_tls_key=str(pki.server_key))).start()
    with pytest.raises(ConfigError, match="SQ_NATS_TLS_CA=.*not a PEM"):
        nats_tls_context(CommonSettings(nats_tls_ca=str(not_pem)))
    with pytest.raises(ConfigError, match="SQ_GRPC_TLS_CERT and SQ_GRPC_TLS_KEY go together"):
        load_settings(CommonSettings, grpc_tls_cert=str(pki.server_cert))


# ------------------------------------------------------------------------------ NATS


def tls_server(tmp_path, pki, *, verify_clients: bool = False) -> EmbeddedNats:
    lines = [f'  cert_file: "{pki.server_cert}"', f'  key_file: "{pki.server_key}"']
    if verify_clients:
        lines += [f'  ca_file: "{pki.ca}"', "  verify: true"]
    probe = ssl.create_default_context(cafile=str(pki.ca))
    if verify_clients:
        probe.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return EmbeddedNats(store_dir=tmp_path / "nats", config="tls {\n" + "\n".join(lines) + "\n}\n", probe_tls=probe)


async def round_trip(url: str, settings: CommonSettings) -> None:
    nc, js = await connect(url, "pytest-tls", max_reconnect_attempts=2, **client_options(settings))
    try:
        await ensure_topology(js)
        ack = await js.publish("scalequest.work.generate", b"over tls", timeout=5)
        sub = await js.pull_subscribe_bind(durable="questiongen", stream=ack.stream)
        (msg,) = await sub.fetch(1, timeout=5)
        assert msg.data == b"over tls"
        await msg.ack_sync(timeout=5)
    finally:
        await nc.close()


async def test_nats_over_tls(pki, tmp_path):
    srv = tls_server(tmp_path, pki)
    await asyncio.to_thread(srv.start)
    try:
        await round_trip(srv.url, CommonSettings(nats_url=srv.url, nats_tls_ca=str(pki.ca)))
        # without TLS, or trusting another CA, there is no connection
        for opts in ({}, client_options(CommonSettings(nats_tls_ca=str(pki.other_ca)))):
            with pytest.raises((nats.errors.Error, OSError, ssl.SSLError)):
                await connect(srv.url, "pytest-no-tls", allow_reconnect=False, **opts)
    finally:
        await asyncio.to_thread(srv.close)


async def test_nats_mutual_tls(pki, tmp_path):
    srv = tls_server(tmp_path, pki, verify_clients=True)
    await asyncio.to_thread(srv.start)
    try:
        with pytest.raises((nats.errors.Error, OSError, ssl.SSLError)):
            await connect(srv.url, "pytest-no-cert", allow_reconnect=False,
                          **client_options(CommonSettings(nats_tls_ca=str(pki.ca))))
        await round_trip(srv.url, CommonSettings(nats_url=srv.url, nats_tls_ca=str(pki.ca),
                                                 nats_tls_cert=str(pki.client_cert), nats_tls_key=str(pki.client_key)))
    finally:
        await asyncio.to_thread(srv.close)
