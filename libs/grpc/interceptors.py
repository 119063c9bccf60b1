"""The one server interceptor: domain errors -> gRPC status codes, plus RPC metrics.

Servicers raise :mod:`libs.errors` exceptions and never think about status codes. Domain
errors are meant for the caller, so their message becomes the status details. Anything
unexpected becomes INTERNAL with ``internal error (see server logs, ref=<id>)``: the
traceback is logged under that ref and never sent. A status the handler set itself
(``context.abort``, or ``set_code`` before raising) passes through untouched.

Unary-unary and unary-stream handlers are wrapped (the shapes every scalequest API uses);
a synchronous unary-unary handler runs in the default executor. Synchronous unary-stream,
client-streaming and bidi handlers (reflection) pass through unchanged.
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


class ErrorMappingInterceptor(aio.ServerInterceptor):
    """Maps domain errors to status codes and records ``scalequest_grpc_server_*`` metrics
    (labels: ``service`` slug, ``method`` as ``Service/Method``, ``code``).

    Handler calls run inside ``log_context(service=<slug>)`` so their log lines carry the
    right service even when several services share one process.
    """

    def __init__(self, service: str) -> None:
        self.service = service

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        full_method = handler_call_details.method
        if handler.unary_unary is not None:
            behavior = handler.unary_unary
            if not inspect.iscoroutinefunction(behavior):
                behavior = _in_thread(behavior)  # a plain `def` handler (e.g. generated Unimplemented)
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(behavior, full_method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            if inspect.isasyncgenfunction(handler.unary_stream):
                behavior = self._wrap_stream_generator(handler.unary_stream, full_method)
            elif inspect.iscoroutinefunction(handler.unary_stream):
                behavior = self._wrap_unary(handler.unary_stream, full_method)
            else:
                return handler
            return grpc.unary_stream_rpc_method_handler(
                behavior,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _wrap_unary(self, behavior, full_method: str):
        """Unary-unary, or unary-stream written with ``context.write``."""
        service = self.service

        async def wrapper(request, context):
            rpc = _Rpc(service, full_method)
            try:
                with log_context(service=service):
                    try:
                        return await behavior(request, context)
                    except aio.AbortError:
                        rpc.code = _context_code(context) or grpc.StatusCode.UNKNOWN
                        raise
                    except asyncio.CancelledError:
                        rpc.code = grpc.StatusCode.CANCELLED
                        raise
                    except Exception as exc:  # noqa: BLE001 - mapping every error is the point
                        await rpc.fail(exc, context)
            finally:
                rpc.finish(context)

        return wrapper

    def _wrap_stream_generator(self, behavior, full_method: str):
        """Unary-stream written as an async generator."""
        service = self.service

        async def wrapper(request, context):
            rpc = _Rpc(service, full_method)
            try:
                with log_context(service=service):
                    try:
                        async for response in behavior(request, context):
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
                rpc.finish(context)

        return wrapper
