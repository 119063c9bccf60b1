"""Assembly of one service: a gRPC server and a queue worker over one stage object, with
the lifecycle of :class:`libs.runtime.ServiceRuntime`.

Start: gRPC bound but NOT_SERVING, queue worker pulling, counters flushing, then SERVING.
Stop (SIGTERM or a group shutdown): NOT_SERVING, stop pulling and finish + ack in-flight
work, stop the gRPC server with a grace period, drain NATS, flush counters and close
resources. The CLI hosts one service (``scalequest serve``) or all five in one process
(``scalequest run``, through a :class:`libs.runtime.RuntimeGroup`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from libs.grpc.server import GrpcServer
from libs.items import dead_letter_rejection
from libs.queue.subjects import WorkQueue
from libs.queue.worker import StageWorker, envelope_bytes
from libs.runstate import RunStates, StageCounters
from libs.runtime import ServiceRuntime
from libs.storage.objectstore import ObjectStore


@dataclass
class Infra:
    """Connections a service needs; shared by all services of an embedded process."""

    nc: Any
    js: Any
    kv: Any
    store: ObjectStore | None = None

    def counters(self, stage: str) -> StageCounters:
        return StageCounters(self.kv, stage)

    def run_states(self) -> RunStates:
        return RunStates(self.kv)


@dataclass
class WorkerSpec:
    """What the stage consumes: its work queue, how to decode a message, the batch handler."""

    queue: WorkQueue
    decode: Callable[[bytes], Any]
    handler: Callable[[list[Any]], Awaitable[list]]
    #: Outputs for a dead-lettered item; default: a ``dlq_<reason>`` rejection to the coordinator.
    on_dead_letter: Callable[[Any, str, str], Awaitable[list]] | None = None


@dataclass
class StageService:
    name: str
    settings: Any
    server: GrpcServer
    infra: Infra
    worker_spec: WorkerSpec | None = None
    counters: StageCounters | None = None
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    flushers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    worker: StageWorker | None = None
    runtime: ServiceRuntime = field(init=False)

    def __post_init__(self) -> None:
        rt = ServiceRuntime(self.name, self.settings, self.server)
        if self.worker_spec is not None and self.settings.worker_enabled:
            rt.add_startup(self._start_worker, "queue worker")
        if self.counters is not None:
            rt.add_startup(self._start_counters, "stage counters")
            rt.register_flusher(self.counters.stop, "stage counters")
        rt.register_nats(self.infra.nc)
        for flush in self.flushers:
            rt.register_flusher(flush)
        for close in self.closers:
            rt.register_closer(close)
        self.runtime = rt

    @property
    def port(self) -> int:
        return self.runtime.port or 0

    async def _start_worker(self) -> None:
        s, spec = self.settings, self.worker_spec
        assert spec is not None
        self.worker = StageWorker(
            self.infra.js,
            queue=spec.queue,
            stage=self.name,
            decode=spec.decode,
            handler=spec.handler,
            batch_size=s.batch_size,
            max_deliver=s.max_deliver,
            ack_wait=s.ack_wait_seconds,
            concurrency=s.worker_concurrency,
            fetch_linger=s.fetch_linger_seconds,
            on_dead_letter=spec.on_dead_letter or dead_letter_rejection(self.name),
            max_message_bytes=s.queue_max_message_bytes,
            envelope_max_items=s.envelope_max_items,
            envelope_max_bytes=envelope_bytes(s.queue_max_message_bytes),
        )
        await self.worker.start()
        self.runtime.register_worker(self.worker)

    async def _start_counters(self) -> None:
        assert self.counters is not None
        self.counters.start()

    async def start(self) -> int:
        await self.runtime.start()
        return self.port

    async def stop(self) -> bool:
        """Ordered shutdown (of the whole group when this service belongs to one)."""
        return await self.runtime.shutdown()
