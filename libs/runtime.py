"""The lifecycle every service process shares: ordered start-up and ordered shutdown.

Start-up (:meth:`ServiceRuntime.start`): metrics endpoint (when ``metrics_port`` is set) →
gRPC server bound with health NOT_SERVING → start-up hooks in the order added (load the
engine, connect NATS, start the queue worker, ...) → health SERVING.

Shutdown, on SIGTERM/SIGINT or :meth:`~ServiceRuntime.request_shutdown`, one step at a
time and each step logged (``step=`` field):

1. ``readiness_off``  — health NOT_SERVING, so load balancers and probes stop routing here;
2. ``stop_workers``   — ``await worker.stop(timeout)``: workers stop pulling, finish and ack
   what they hold within ``worker_stop_timeout`` and cancel the rest (not acked, so it is
   redelivered);
3. ``stop_grpc``      — ``server.stop(grace)``: new RPCs refused, in-flight ones get
   ``shutdown_grace_seconds``;
4. ``flush_state``    — registered flushers (stage counters, run state): what must still
   reach NATS KV once no more work is done, so it runs after the workers and RPCs stopped
   and before the connection is drained;
5. ``drain_nats``     — ``await nc.drain()`` for every registered NATS connection (flushes
   pending publishes and acks, then closes);
6. ``close_resources``— registered closers (engines, object-store clients), last registered
   first.

A step that fails or overruns its timeout is logged and the sequence goes on: a stuck step
must not keep the process from exiting (unacked messages are redelivered anyway).

Several services can share one process (embedded mode): :class:`RuntimeGroup` starts them in
order and shuts them down together, step by step across all of them, so no service drains
a NATS connection another one still needs for its acks. Signals are owned once per process
by :func:`install_signal_handlers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn, Protocol

from libs.errors import ConfigError
from libs.logging import log_context
from libs.metrics import start_metrics_server

log = logging.getLogger(__name__)

#: Shutdown steps, in order (also the values of the ``step`` log field).
SHUTDOWN_STEPS = ("readiness_off", "stop_workers", "stop_grpc", "flush_state", "drain_nats", "close_resources")


class Worker(Protocol):
    """A queue worker: ``stop(timeout)`` stops fetching, finishes and acks in-flight messages
    for up to ``timeout`` seconds, then cancels what is left (those messages are not acked)."""

    async def stop(self, timeout: float) -> None: ...


class Drainable(Protocol):
    """A NATS connection (``nats.aio.client.Client``)."""

    async def drain(self) -> None: ...


Closer = Callable[[], Any]  # sync or async, no arguments


def _label(obj: Any) -> str:
    """A short name for log lines: ``Engine.close``, ``load_model``, ``NatsWorker``."""
    owner = getattr(obj, "__self__", None)
    if owner is not None and hasattr(obj, "__name__"):
        return f"{type(owner).__name__}.{obj.__name__}"
    return getattr(obj, "__name__", None) or type(obj).__name__


class ServiceRuntime:
    """The lifecycle of one service: ``rt = ServiceRuntime("filter", settings, server)``.

    ``server`` is a :class:`~libs.grpc.server.GrpcServer` (or None for a process without a
    gRPC API). Register what needs stopping as it is created — typically from inside a
    start-up hook — then ``await rt.run_until_shutdown()``.
    ``step_timeout`` bounds each worker stop, NATS drain and closer (default: the grace,
    at least 5 s). Workers get ``worker_stop_timeout`` (default ``step_timeout``) to finish
    in-flight batches and cancel them themselves; the step's own bound is a little longer, so
    it only catches a worker that ignores it. ``steps`` records the shutdown steps taken, in
    order.
    """

    def __init__(
        self,
        name: str,
        settings: Any,
        server: Any | None = None,
        *,
        step_timeout: float | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.server = server
        self.grace = float(getattr(settings, "shutdown_grace_seconds", 20.0))
        self.step_timeout = max(self.grace, 5.0) if step_timeout is None else float(step_timeout)
        self.worker_stop_timeout = self.step_timeout
        self.port: int | None = None
        self.steps: list[str] = []
        self.failures: list[str] = []
        self._startup: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
        self._workers: list[Worker] = []
        self._nats: list[Drainable] = []
        self._closers: list[tuple[str, Closer]] = []
        self._flushers: list[tuple[str, Closer]] = []
        self._shutdown_requested = asyncio.Event()
        self._shutdown_reason = ""
        self._group: RuntimeGroup | None = None

    # --- registration ----------------------------------------------------------------------

    def add_startup(self, fn: Callable[[], Awaitable[Any]], name: str | None = None) -> None:
        """Run ``await fn()`` during :meth:`start`, after the gRPC server is bound and before
        health turns SERVING; hooks run in the order added."""
        self._startup.append((name or _label(fn), fn))

    def register_worker(self, worker: Worker) -> None:
        self._workers.append(worker)

    def register_nats(self, nc: Drainable) -> None:
        self._nats.append(nc)

    def register_flusher(self, fn: Closer, name: str | None = None) -> None:
        """``fn()`` (sync or async) runs in the ``flush_state`` step, while NATS is still up."""
        self._flushers.append((name or _label(fn), fn))

    def register_closer(self, fn: Closer, name: str | None = None) -> None:
        """``fn()`` (sync or async) runs in the last shutdown step; last registered, first run."""
        self._closers.append((name or _label(fn), fn))

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def shutdown_requested(self) -> bool:
        return self._shutdown_requested.is_set()

    def request_shutdown(self, reason: str = "requested") -> None:
        """Ask for the ordered shutdown (safe from signal handlers and any task)."""
        if not self._shutdown_requested.is_set():
            self._shutdown_reason = reason
            log.info("shutdown requested (%s)", reason, extra={"service": self.name, "step": "shutdown_requested"})
            self._shutdown_requested.set()

    async def wait_for_shutdown_request(self) -> str:
        await self._shutdown_requested.wait()
        return self._shutdown_reason

    async def start(self) -> None:
        """Metrics endpoint, gRPC server (NOT_SERVING), start-up hooks, then SERVING."""
        with log_context(service=self.name):
            metrics_port = int(getattr(self.settings, "metrics_port", 0) or 0)
            if metrics_port:
                start_metrics_server(metrics_port, host=getattr(self.settings, "grpc_host", "0.0.0.0"))
            if self.server is not None:
                self.port = await self.server.start()
            for name, fn in self._startup:
                log.info("startup: %s", name, extra={"step": "startup", "hook": name})
                await fn()
            if self.server is not None:
                await self.server.set_serving(True)
            log.info(
                "%s ready%s", self.name, f" on port {self.port}" if self.port is not None else "",
                extra={"step": "ready", "port": self.port},
            )

    async def shutdown(self) -> bool:
        """The ordered shutdown; idempotent (later calls wait for the first). True when every
        step completed cleanly."""
        return await self.group.shutdown()

    async def run_until_shutdown(self) -> int:
        """Start, serve until shutdown is requested, shut down. Returns a process exit code:
        0 after a clean shutdown, 1 when a shutdown step failed. Start-up errors propagate
        (after everything already started has been shut down)."""
        return await self.group.run_until_shutdown()

    @property
    def group(self) -> RuntimeGroup:
        """The group this runtime shuts down with (a group of one unless it joined one)."""
        if self._group is None:
            RuntimeGroup([self])
        assert self._group is not None
        return self._group

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT → :meth:`request_shutdown` (call once per process, in the loop)."""
        install_signal_handlers(self)

    # --- shutdown steps (driven by RuntimeGroup) --------------------------------------------

    async def _step(self, step: str, seen: set[object]) -> None:
        index = SHUTDOWN_STEPS.index(step) + 1
        with log_context(service=self.name):
            log.info("shutdown %d/%d: %s", index, len(SHUTDOWN_STEPS), step, extra={"step": step})
            self.steps.append(step)
            if step == "readiness_off":
                if self.server is not None and _first(self.server, seen):
                    await self._guard(step, "health", self.server.set_serving(False))
            elif step == "stop_workers":
                # The worker cancels what it still runs at worker_stop_timeout; the guard's
                # margin leaves it time to do so (a guard that fired first would abandon the
                # worker's batches, still running, while NATS is drained under them).
                bound = self.worker_stop_timeout
                guard = bound + min(5.0, max(bound, 0.2))
                await asyncio.gather(
                    *(self._guard(step, _label(w), w.stop(timeout=bound), guard) for w in self._workers if _first(w, seen))
                )
            elif step == "stop_grpc":
                if self.server is not None and _first(self.server, seen):
                    # server.stop bounds itself by the grace; the extra margin only catches a hang
                    await self._guard(step, "grpc", self.server.stop(self.grace), self.grace + 5.0)
            elif step == "flush_state":
                for name, fn in self._flushers:
                    if _first(fn, seen):
                        await self._guard(step, name, _call(fn), self.step_timeout)
            elif step == "drain_nats":
                await asyncio.gather(
                    *(self._guard(step, "nats", self._drain(nc), self.step_timeout) for nc in self._nats if _first(nc, seen))
                )
            elif step == "close_resources":
                for name, fn in reversed(self._closers):
                    if _first(fn, seen):
                        await self._guard(step, name, _call(fn), self.step_timeout)

    @staticmethod
    async def _drain(nc: Drainable) -> None:
        if getattr(nc, "is_closed", False):
            return
        await nc.drain()

    async def _guard(self, step: str, what: str, aw: Awaitable[Any], timeout: float | None = None) -> None:
        try:
            if timeout is None:
                await aw
            else:
                await asyncio.wait_for(aw, timeout)
        except asyncio.TimeoutError:
            self.failures.append(f"{step}:{what}")
            log.warning("shutdown %s: %s did not finish within %.1fs; continuing", step, what, timeout,
                        extra={"step": step})
        except Exception:
            self.failures.append(f"{step}:{what}")
            log.exception("shutdown %s: %s failed; continuing", step, what, extra={"step": step})


def _first(obj: Any, seen: set[object]) -> bool:
    """True the first time a (possibly shared) object is met during one shutdown."""
    owner, func = getattr(obj, "__self__", None), getattr(obj, "__func__", None)
    # bound methods are new objects on every attribute access: key them by owner + function
    key: object = (id(owner), id(func)) if owner is not None and func is not None else id(obj)
    if key in seen:
        return False
    seen.add(key)
    return True


async def _call(fn: Closer) -> None:
    result = fn()
    if inspect.isawaitable(result):
        await result


class RuntimeGroup:
    """Several :class:`ServiceRuntime` in one process (embedded mode), started in order and
    shut down together: each shutdown step runs across every runtime before the next step
    begins. Objects registered with more than one runtime (a shared NATS connection, one
    engine) are stopped once. A shutdown request to any member shuts down the group."""

    def __init__(self, runtimes: Sequence[ServiceRuntime]) -> None:
        self.runtimes = list(runtimes)
        for rt in self.runtimes:
            rt._group = self  # rt.shutdown() now shuts the whole group down
        self._lock = asyncio.Lock()
        self._result: bool | None = None

    def request_shutdown(self, reason: str = "requested") -> None:
        for rt in self.runtimes:
            rt.request_shutdown(reason)

    def install_signal_handlers(self) -> None:
        install_signal_handlers(self)

    async def _any_shutdown_request(self) -> str:
        waits = [asyncio.ensure_future(rt.wait_for_shutdown_request()) for rt in self.runtimes]
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            return next(iter(done)).result()
        finally:
            for w in waits:
                w.cancel()

    async def start(self) -> None:
        """Start every runtime, in list order (no shutdown handling: see run_until_shutdown)."""
        for rt in self.runtimes:
            await rt.start()

    async def shutdown(self) -> bool:
        """Run the shutdown steps across all members; idempotent. True when clean."""
        async with self._lock:
            if self._result is not None:
                return self._result
            for rt in self.runtimes:
                rt.request_shutdown("shutdown")
            for step in SHUTDOWN_STEPS:
                # Each runtime claims its (possibly shared) objects in `seen` before its first
                # await, in list order, so a shared object is stopped exactly once.
                seen: set[object] = set()
                if step == "flush_state":
                    # In list order: a later member (the coordinator) saves run state after the
                    # earlier ones (the stages) have flushed their counters into it.
                    for rt in self.runtimes:
                        await rt._step(step, seen)
                else:
                    await asyncio.gather(*(rt._step(step, seen) for rt in self.runtimes))
            self._result = not any(rt.failures for rt in self.runtimes)
            names = ", ".join(rt.name for rt in self.runtimes)
            if self._result:
                log.info("shutdown complete (%s)", names, extra={"step": "shutdown_complete"})
            else:
                failures = [f"{rt.name}:{f}" for rt in self.runtimes for f in rt.failures]
                log.warning("shutdown finished with problems (%s): %s", names, ", ".join(failures),
                            extra={"step": "shutdown_complete"})
            return self._result

    async def run_until_shutdown(self) -> int:
        """Start all, serve until any shutdown request, shut all down. Returns the exit code
        (0 = clean). A start-up error propagates after what was started has been shut down;
        a shutdown request during start-up cancels the remaining start-up."""
        starting = asyncio.ensure_future(self.start())
        requested = asyncio.ensure_future(self._any_shutdown_request())
        try:
            await asyncio.wait({starting, requested}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()  # re-raises a start-up failure
                await requested
            else:
                log.info("shutdown requested during start-up; cancelling start-up", extra={"step": "startup"})
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
        finally:
            starting.cancel()
            requested.cancel()
            clean = await asyncio.shield(self.shutdown())
        return 0 if clean else 1


# --- signals and entrypoints -------------------------------------------------------------------

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_installed: list[signal.Signals] = []


def install_signal_handlers(*targets: ServiceRuntime | RuntimeGroup) -> None:
    """Route SIGTERM and SIGINT to ``request_shutdown`` of every target. Call once per
    process from inside the running loop. A second signal while shutting down exits at once
    (status 130), for an operator who really means it."""
    loop = asyncio.get_running_loop()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        if received:
            log.warning("second %s during shutdown: exiting now", sig.name)
            logging.shutdown()
            os._exit(130)
        received.append(sig.name)
        for target in targets:
            target.request_shutdown(sig.name)

    for sig in _SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
        _installed.append(sig)


def remove_signal_handlers() -> None:
    """Undo :func:`install_signal_handlers` (tests; processes that hand signals back)."""
    loop = asyncio.get_running_loop()
    while _installed:
        loop.remove_signal_handler(_installed.pop())


def run_main(main: Callable[[], Awaitable[int | None]], prog: str = "scalequest") -> NoReturn:
    """Process entrypoint: ``asyncio.run(main())`` and exit with its code. A
    :class:`ConfigError` (bad setting) becomes one line on stderr and exit status 2."""
    try:
        code = asyncio.run(main())
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(int(code or 0))

