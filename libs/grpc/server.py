"""The gRPC server scaffold every service uses.

:class:`GrpcServer` is a ``grpc.aio`` server with, always: the
:class:`~libs.grpc.interceptors.ErrorMappingInterceptor`, message size limits from settings,
the standard health service (``grpc.health.v1.Health``) and server reflection. Health starts
NOT_SERVING for every hosted service and for the overall ``""`` service, and stays so until
the owner calls ``set_serving(True)`` (model loaded, queue connected); Kubernetes' native gRPC
probes read it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from libs.errors import ConfigError
from libs.grpc.interceptors import ErrorMappingInterceptor, RpcLimits
from libs.tls import grpc_server_credentials

log = logging.getLogger(__name__)

#: (``add_<Service>Servicer_to_server``, servicer instance, full service name such as
#: ``"scalequest.filter.v1.FilterService"`` — the generated ``DESCRIPTOR.services_by_name``
#: ``full_name``).
ServicerSpec = tuple[Callable[[Any, aio.Server], None], Any, str]

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def _address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):  # bare IPv6 literal
        host = f"[{host}]"
    return f"{host}:{port}"


class GrpcServer:
    """One service's gRPC endpoint: servicers + health + reflection + error mapping.

    ``service`` is the slug (``filter``, ``solver``, ...) used in metric labels and logs.
    ``settings`` is a :class:`~libs.settings.CommonSettings` (``grpc_host``, ``grpc_port``,
    ``grpc_max_message_bytes``, ``shutdown_grace_seconds``, and the ``grpc_max_*`` call limits
    of :class:`~libs.grpc.interceptors.RpcLimits`). ``options`` adds or overrides
    channel arguments; ``interceptors`` run after the error-mapping one.
    """

    def __init__(
        self,
        service: str,
        settings: Any,
        *,
        servicers: Sequence[ServicerSpec] = (),
        options: Sequence[tuple[str, Any]] = (),
        interceptors: Sequence[aio.ServerInterceptor] = (),
    ) -> None:
        self.service = service
        self.settings = settings
        self.service_names = [name for _, _, name in servicers]
        limit = int(settings.grpc_max_message_bytes)
        merged = {
            "grpc.max_send_message_length": limit,
            "grpc.max_receive_message_length": limit,
            # Without this a second process can bind the same port and silently share it.
            "grpc.so_reuseport": 0,
            **dict(options),
        }
        self._server = aio.server(
            interceptors=[ErrorMappingInterceptor(service, RpcLimits.from_settings(settings)), *interceptors],
            options=list(merged.items()),
        )
        for add_fn, servicer, _name in servicers:
            add_fn(servicer, self._server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            [*self.service_names, HEALTH_SERVICE, reflection.SERVICE_NAME], self._server
        )
        self.port: int | None = None
        #: Plaintext health-only endpoint (SQ_GRPC_HEALTH_PORT; probes cannot speak TLS).
        self.health_port: int | None = None
        self._health_server: aio.Server | None = None
        self.tls = False
        self.serving = False
        self._started = False
        self._stopped = False

    @property
    def server(self) -> aio.Server:
        """The underlying ``grpc.aio.Server`` (for tests and unusual wiring)."""
        return self._server

    @property
    def address(self) -> str:
        """``host:port`` as bound (after :meth:`start`)."""
        return _address(self.settings.grpc_host, self.port if self.port is not None else self.settings.grpc_port)

    async def start(self) -> int:
        """Bind ``grpc_host:grpc_port`` and start serving; health is NOT_SERVING until
        :meth:`set_serving`. Returns the bound port (``grpc_port=0`` picks a free one).
        Raises :class:`ConfigError` naming SQ_GRPC_HOST / SQ_GRPC_PORT when binding fails."""
        if self._started:
            assert self.port is not None
            return self.port
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        host, port = self.settings.grpc_host, int(self.settings.grpc_port)
        address = _address(host, port)
        creds = grpc_server_credentials(self.settings)  # TLS when SQ_GRPC_TLS_CERT is set
        self.tls = creds is not None
        try:
            bound = self._server.add_secure_port(address, creds) if creds else self._server.add_insecure_port(address)
        except RuntimeError as e:
            raise ConfigError(
                f"SQ_GRPC_HOST={host!r} / SQ_GRPC_PORT={port}: cannot bind gRPC server to {address} "
                f"(port in use or address not local): {str(e).split(';')[0]}"
            ) from None
        if not bound:  # older grpcio reports failure as port 0
            raise ConfigError(f"SQ_GRPC_HOST={host!r} / SQ_GRPC_PORT={port}: cannot bind gRPC server to {address}")
        health_port = int(getattr(self.settings, "grpc_health_port", 0) or 0)
        if health_port:
            await self._start_health_server(host, health_port)
        await self._server.start()
        self.port = bound
        self._started = True
        log.info(
            "gRPC server listening on %s%s (services: %s; health NOT_SERVING)",
            _address(host, bound), " with TLS" + (" (client certificates required)" if self.settings.grpc_tls_client_ca
                                                  else "") if self.tls else "",
            ", ".join(self.service_names) or "-",
            extra={"step": "grpc_start", "port": bound},
        )
        return bound

    async def _start_health_server(self, host: str, port: int) -> None:
        """A second, plaintext server with only the health service (the same statuses):
        Kubernetes' gRPC probes cannot use TLS."""
        server = aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        address = _address(host, port)
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as e:
            raise ConfigError(
                f"SQ_GRPC_HEALTH_PORT={port}: cannot bind the health endpoint to {address}: {str(e).split(';')[0]}"
            ) from None
        await server.start()
        self._health_server, self.health_port = server, bound
        log.info("gRPC health endpoint (plaintext, health only) on %s", _address(host, bound))

    async def set_serving(self, serving: bool) -> None:
        """Report every hosted service and the overall ``""`` service as SERVING or
        NOT_SERVING. Ignored once :meth:`stop` has begun (health then stays NOT_SERVING)."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self._set_all(status)
        if not self._stopped:
            self.serving = serving

    async def _set_all(self, status: int) -> None:
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING for good, refuse new RPCs, give in-flight RPCs up to ``grace``
        seconds (default ``shutdown_grace_seconds``), then cancel the rest. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.serving = False
        grace = float(self.settings.shutdown_grace_seconds if grace is None else grace)
        await self.health.enter_graceful_shutdown()
        if self._started:
            await self._server.stop(grace)
        if self._health_server is not None:
            await self._health_server.stop(0)
        log.info("gRPC server stopped", extra={"step": "grpc_stopped"})

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()
