"""coordinator entrypoint: gRPC CoordinatorService + the sink worker on scalequest.work.sink."""

from __future__ import annotations

import asyncio

from scalequest.common.v1 import items_pb2 as pb
from scalequest.coordinator.v1 import coordinator_pb2_grpc as api_grpc

from libs.grpc.server import GrpcServer
from libs.items import decoder
from libs.queue import subjects
from libs.service import Infra, StageService, WorkerSpec
from libs.storage import shards
from services.coordinator.runs import STAGE, RunManager
from services.coordinator.servicer import SERVICE_NAME, CoordinatorServicer
from services.coordinator.settings import CoordinatorSettings

Settings = CoordinatorSettings


_decode_outcome = decoder(pb.Outcome)


async def build(settings: CoordinatorSettings, infra: Infra, engine=None) -> StageService:
    await asyncio.to_thread(shards.warm_up)  # the first shard write's imports, before any run
    manager = RunManager(settings, infra.js, infra.kv, infra.store)
    await manager.resume_runs()
    server = GrpcServer(
        STAGE,
        settings,
        servicers=[(api_grpc.add_CoordinatorServiceServicer_to_server, CoordinatorServicer(manager), SERVICE_NAME)],
    )
    spec = WorkerSpec(subjects.SINK, _decode_outcome, manager.handle_outcomes, on_dead_letter=manager.on_dead_letter)
    svc = StageService(STAGE, settings, server, infra, spec, flushers=[manager.close])
    svc.manager = manager  # type: ignore[attr-defined]
    return svc
