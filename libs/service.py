"""Assembly of one service process part: a gRPC server and a queue worker over one stage.

``StageService`` owns the ordered lifecycle of a service: start (gRPC up but NOT_SERVING,
worker pulling, then SERVING) and stop (NOT_SERVING, stop pulling and finish + ack in-flight
work, stop the gRPC server with a grace period, close resources). The CLI hosts one
(``scalequest serve``) or all five (``scalequest run``) in one process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from libs.grpc.server import GrpcServer
from libs.queue.subjects import WorkQueue
from libs.queue.worker import StageWorker
from libs.runstate import RunStates, StageCounters
from libs.storage.objectstore import ObjectStore

log = logging.getLogger("scalequest.service")


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
    queue: WorkQueue
    decode: Callable[[bytes], Any]
    handler: Callable[[list[Any]], Awaitable[list]]


@dataclass
class StageService:
    name: str
    settings: Any
    server: GrpcServer
    infra: Infra
    worker_spec: WorkerSpec | None = None
    counters: StageCounters | None = None
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    worker: StageWorker | None = None
    port: int = 0

    async def start(self) -> int:
        self.port = await self.server.start()
        if self.worker_spec is not None and self.settings.worker_enabled:
            s = self.settings
            self.worker = StageWorker(
                self.infra.js,
                queue=self.worker_spec.queue,
                stage=self.name,
                decode=self.worker_spec.decode,
                handler=self.worker_spec.handler,
                batch_size=s.batch_size,
                max_deliver=s.max_deliver,
                ack_wait=s.ack_wait_seconds,
                concurrency=s.worker_concurrency,
            )
            await self.worker.start()
        if self.counters is not None:
            self.counters.start()
        await self.server.set_serving(True)
        log.info("service ready", extra={"stage": self.name, "port": self.port})
        return self.port

    async def stop(self) -> None:
        log.info("stopping: health NOT_SERVING", extra={"stage": self.name})
        await self.server.set_serving(False)
        if self.worker is not None:
            log.info("stopping: queue worker (finish and ack in-flight work)", extra={"stage": self.name})
            await self.worker.stop()
        if self.counters is not None:
            await self.counters.stop()
        log.info("stopping: gRPC server", extra={"stage": self.name})
        await self.server.stop(self.settings.shutdown_grace_seconds)
        for close in self.closers:
            await close()
        log.info("stopped", extra={"stage": self.name})
