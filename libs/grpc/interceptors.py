"""The one server interceptor: domain errors -> gRPC status codes, plus RPC metrics.

Servicers raise :mod:`libs.errors` exceptions and never think about status codes. Domain
errors are meant for the caller, so their message becomes the status details. Anything
unexpected becomes INTERNAL with ``internal error (see server logs, ref=<id>)``: the
traceback is logged under that ref and never sent. A status the handler set itself
(``context.abort``, or ``set_code`` before raising) passes through untouched.

Unary-unary and unary-stream handlers are wrapped (the shapes every scalequest API uses);
a synchronous unary-unary handler runs in the default executor. Synchronous unary-stream,
client-streaming and bidi handlers (reflection) pass through unchanged.

Limits (:class:`RpcLimits`, from the ``grpc_max_*`` settings), never applied to health and
reflection:

* at most ``grpc_max_concurrent_rpcs`` calls in flight per server; one more is refused with
  RESOURCE_EXHAUSTED before its handler runs;
* a unary call runs at most ``min(grpc_max_rpc_seconds, the caller's time remaining)``, a
  server stream at most ``min(grpc_max_stream_seconds, the caller's time remaining)``; then the
  handler is cancelled (engine work stops) and the call ends with DEADLINE_EXCEEDED;
* a request that does not decode as the method's message is INVALID_ARGUMENT (grpc itself
  would answer UNKNOWN with the parser's exception text).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio

from libs import errors, metrics
from libs.logging import log_context

log = logging.getLogger(__name__)

#: Domain error -> status code; the first matching class wins (subclasses before bases).
ERROR_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.PoisonMessage, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.NotReady, grpc.StatusCode.UNAVAILABLE),
    (errors.TransientError, grpc.StatusCode.UNAVAILABLE),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
    (asyncio.TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),  # distinct from asyncio's before 3.11
)

_DETAILS_LIMIT = 1024  # status details travel in a header; keep them short


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    """The status code a domain exception maps to, or None for an unexpected one."""
    for cls, code in ERROR_CODES:
        if isinstance(exc, cls):
            return code
    return None


def _method_label(full_method: str) -> str:
    # "/scalequest.filter.v1.FilterService/FilterQuestions" -> "FilterService/FilterQuestions"
    service, _, method = full_method.lstrip("/").rpartition("/")
    return f"{service.rpartition('.')[2]}/{method}" if service else method


class _Rpc:
    """Bookkeeping for one call: metrics, and turning an exception into a status."""

    __slots__ = ("code", "full_method", "method", "service", "start")

    def __init__(self, service: str, full_method: str) -> None:
        self.service = service
        self.full_method = full_method
        self.method = _method_label(full_method)
        self.start = time.perf_counter()
        self.code = grpc.StatusCode.OK
        metrics.grpc_in_flight().labels(service, self.method).inc()

    def finish(self, context: aio.ServicerContext) -> None:
        code = self.code
        if code is grpc.StatusCode.OK:
            # a handler may have set_code() and returned normally
            code = _context_code(context) or code
        metrics.grpc_in_flight().labels(self.service, self.method).dec()
        metrics.grpc_handled().labels(self.service, self.method, code.name).inc()
        metrics.grpc_handling_seconds().labels(self.service, self.method).observe(time.perf_counter() - self.start)

    async def fail(self, exc: Exception, context: aio.ServicerContext) -> None:
        """Abort the call with the status ``exc`` maps to (always raises)."""
        already = _context_code(context)
        if already is not None and already is not grpc.StatusCode.OK:
            # The handler chose a status and then raised: honour its choice.
            self.code = already
            await context.abort(already, context.details() or "")
        code = status_for(exc)
        if code is not None:
            self.code = code
            details = str(exc) or code.name.lower().replace("_", " ")
            log.info(
                "%s -> %s: %s", self.full_method, code.name, details,
                extra={"grpc_method": self.full_method, "grpc_code": code.name},
            )
            await context.abort(code, details[:_DETAILS_LIMIT])
        ref = uuid.uuid4().hex[:12]
        self.code = grpc.StatusCode.INTERNAL
        log.error(
            "unhandled %s in %s (ref=%s)", type(exc).__name__, self.full_method, ref,
            exc_info=(type(exc), exc, exc.__traceback__),
            extra={"ref": ref, "grpc_method": self.full_method, "grpc_code": "INTERNAL"},
        )
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error (see server logs, ref={ref})")


def _context_code(context: aio.ServicerContext) -> grpc.StatusCode | None:
    try:
        code = context.code()
    except (NotImplementedError, AttributeError):  # pragma: no cover - older grpcio
        return None
    if isinstance(code, int):  # some grpcio versions return the raw cygrpc integer
        code = next((c for c in grpc.StatusCode if c.value[0] == code), None)
    return code


def _in_thread(behavior):
    """Run a synchronous unary handler in the default executor, as grpc.aio itself would,
    so its errors are mapped like an async handler's."""

    async def run(request, context):
        call = functools.partial(contextvars.copy_context().run, behavior, request, context)
        return await asyncio.get_running_loop().run_in_executor(None, call)

    return run


#: Services that are never limited (concurrency cap, server-side duration): probes and tooling
#: must get through to an overloaded server.
UNLIMITED_SERVICES = frozenset({
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
})


@dataclass(frozen=True)
class RpcLimits:
    """Per-server call limits (0 = none). :meth:`from_settings` reads the ``grpc_max_*``
    fields of :class:`~libs.settings.CommonSettings`; a settings object without them gets none."""

    max_concurrent_rpcs: int = 0
    max_rpc_seconds: float = 0.0
    max_stream_seconds: float = 0.0

    @classmethod
    def from_settings(cls, settings: Any) -> RpcLimits:
        return cls(
            max_concurrent_rpcs=int(getattr(settings, "grpc_max_concurrent_rpcs", 0) or 0),
            max_rpc_seconds=float(getattr(settings, "grpc_max_rpc_seconds", 0) or 0),
            max_stream_seconds=float(getattr(settings, "grpc_max_stream_seconds", 0) or 0),
        )


class _Undecodable:
    """What a request that failed to deserialize is handed to the wrapper as."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserializer):
    """Wrap a request deserializer so a parse failure reaches the handler wrapper (which answers
    INVALID_ARGUMENT) instead of grpc's own UNKNOWN with the parser's exception text."""
    if deserializer is None:
        return None

    def deserialize(data: bytes):
        try:
            return deserializer(data)
        except Exception as e:  # noqa: BLE001 - any parser failure is the caller's bad bytes
            return _Undecodable(e)

    return deserialize


def _service_of(full_method: str) -> str:
    return full_method.lstrip("/").rpartition("/")[0]


class _Budget:
    """The time one call may take: the server's limit or the caller's deadline, the shorter."""

    __slots__ = ("end", "why")

    def __init__(self, context: aio.ServicerContext, server_limit: float, setting: str) -> None:
        try:
            remaining = context.time_remaining()
        except (AttributeError, NotImplementedError):  # pragma: no cover - older grpcio
            remaining = None
        limit, self.why = None, ""
        if server_limit > 0:
            limit, self.why = server_limit, f"the server limit of {server_limit:g} s ({setting})"
        if remaining is not None and (limit is None or remaining < limit):
            limit, self.why = max(0.0, remaining), f"the caller's deadline ({max(0.0, remaining):.3g} s)"
        self.end = None if limit is None else asyncio.get_running_loop().time() + limit

    async def run(self, awaitable, full_method: str):
        """Await ``awaitable`` within the budget; past it cancel it and raise TimeoutError."""
        if self.end is None:
            return await awaitable
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(awaitable, max(0.0, self.end - loop.time()))
        except asyncio.TimeoutError:
            if loop.time() < self.end:  # the handler's own timeout, not ours
                raise
            raise asyncio.TimeoutError(f"{_method_label(full_method)} did not finish within {self.why}") from None


class ErrorMappingInterceptor(aio.ServerInterceptor):
    """Maps domain errors to status codes and records ``scalequest_grpc_server_*`` metrics
    (labels: ``service`` slug, ``method`` as ``Service/Method``, ``code``); enforces
    ``limits`` (module doc) on every service but health and reflection.

    Handler calls run inside ``log_context(service=<slug>)`` so their log lines carry the
    right service even when several services share one process.
    """

    def __init__(self, service: str, limits: RpcLimits | None = None) -> None:
        self.service = service
        self.limits = limits or RpcLimits()
        self.in_flight = 0  # limited calls running now (the event loop is the only writer)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        full_method = handler_call_details.method
        limited = _service_of(full_method) not in UNLIMITED_SERVICES
        deserializer = _tolerant(handler.request_deserializer)
        if handler.unary_unary is not None:
            behavior = handler.unary_unary
            if not inspect.iscoroutinefunction(behavior):
                behavior = _in_thread(behavior)  # a plain `def` handler (e.g. generated Unimplemented)
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(behavior, full_method, limited, self.limits.max_rpc_seconds, "SQ_GRPC_MAX_RPC_SECONDS"),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            if inspect.isasyncgenfunction(handler.unary_stream):
                behavior = self._wrap_stream_generator(handler.unary_stream, full_method, limited)
            elif inspect.iscoroutinefunction(handler.unary_stream):
                behavior = self._wrap_unary(
                    handler.unary_stream, full_method, limited, self.limits.max_stream_seconds, "SQ_GRPC_MAX_STREAM_SECONDS"
                )
            else:
                return handler
            return grpc.unary_stream_rpc_method_handler(
                behavior,
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _admit(self, request, full_method: str, limited: bool) -> bool:
        """Refuse an undecodable request or one over the concurrency cap (raises a domain
        error); True when the call now counts as in flight."""
        if isinstance(request, _Undecodable):
            raise errors.InvalidArgument(
                f"request is not a valid {_method_label(full_method)} message: {str(request.error)[:200]}"
            )
        if not limited:
            return False
        cap = self.limits.max_concurrent_rpcs
        if cap and self.in_flight >= cap:
            raise errors.ResourceExhausted(
                f"{self.service} is handling {self.in_flight} RPCs, its limit (SQ_GRPC_MAX_CONCURRENT_RPCS={cap}); "
                "retry later with backoff"
            )
        self.in_flight += 1
        return True

    def _wrap_unary(self, behavior, full_method: str, limited: bool, server_limit: float, setting: str):
        """Unary-unary, or unary-stream written with ``context.write``."""
        service = self.service

        async def wrapper(request, context):
            rpc = _Rpc(service, full_method)
            counted = False
            try:
                with log_context(service=service):
                    try:
                        counted = self._admit(request, full_method, limited)
                        budget = _Budget(context, server_limit if limited else 0.0, setting)
                        return await budget.run(behavior(request, context), full_method)
                    except aio.AbortError:
                        rpc.code = _context_code(context) or grpc.StatusCode.UNKNOWN
                        raise
                    except asyncio.CancelledError:
                        rpc.code = grpc.StatusCode.CANCELLED
                        raise
                    except Exception as exc:  # noqa: BLE001 - mapping every error is the point
                        await rpc.fail(exc, context)
            finally:
                if counted:
                    self.in_flight -= 1
                rpc.finish(context)

        return wrapper

    def _wrap_stream_generator(self, behavior, full_method: str, limited: bool):
        """Unary-stream written as an async generator; the time budget covers the whole stream."""
        service = self.service
        server_limit = self.limits.max_stream_seconds if limited else 0.0

        async def wrapper(request, context):
            rpc = _Rpc(service, full_method)
            counted = False
            stream = None
            try:
                with log_context(service=service):
                    try:
                        counted = self._admit(request, full_method, limited)
                        budget = _Budget(context, server_limit, "SQ_GRPC_MAX_STREAM_SECONDS")
                        stream = behavior(request, context)
                        while True:
                            try:
                                response = await budget.run(stream.__anext__(), full_method)
                            except StopAsyncIteration:
                                break
                            yield response
                    except aio.AbortError:
                        rpc.code = _context_code(context) or grpc.StatusCode.UNKNOWN
                        raise
                    except (asyncio.CancelledError, GeneratorExit):
                        rpc.code = grpc.StatusCode.CANCELLED
                        raise
                    except Exception as exc:  # noqa: BLE001
                        await rpc.fail(exc, context)
            finally:
                if stream is not None:
                    await stream.aclose()
                if counted:
                    self.in_flight -= 1
                rpc.finish(context)

        return wrapper
