"""filter entrypoint: gRPC FilterService + worker on scalequest.work.filter."""

from __future__ import annotations

from libs.engines.factory import engine_from_settings
from libs.grpc.server import GrpcServer
from libs.items import decoder
from libs.queue import subjects
from libs.service import Infra, StageService, WorkerSpec
from scalequest.common.v1 import items_pb2 as pb
from scalequest.filter.v1 import filter_pb2_grpc as api_grpc
from services.filter.dedup import KVDedupIndex
from services.filter.servicer import SERVICE_NAME, FilterServicer
from services.filter.settings import FilterSettings
from services.filter.stage import STAGE, FilterStage

Settings = FilterSettings


async def build(settings: FilterSettings, infra: Infra, engine=None) -> StageService:
    engine = engine or await engine_from_settings(settings)
    counters = infra.counters(STAGE)
    stage = FilterStage(engine, settings, KVDedupIndex(infra.kv), counters=counters, runs=infra.run_states())
    server = GrpcServer(
        STAGE, settings, servicers=[(api_grpc.add_FilterServiceServicer_to_server, FilterServicer(stage), SERVICE_NAME)]
    )
    spec = WorkerSpec(subjects.FILTER, decoder(pb.Question), stage.handle)
    return StageService(STAGE, settings, server, infra, spec, counters)
