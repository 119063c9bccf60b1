"""questiongen entrypoint: gRPC QuestionGenService + worker on scalequest.work.generate."""

from __future__ import annotations

from libs.engines.factory import engine_from_settings
from libs.grpc.server import GrpcServer
from libs.items import decoder
from libs.queue import subjects
from libs.service import Infra, StageService, WorkerSpec
from scalequest.common.v1 import items_pb2 as pb
from scalequest.questiongen.v1 import questiongen_pb2_grpc as api_grpc
from services.questiongen.servicer import SERVICE_NAME, QuestionGenServicer
from services.questiongen.settings import QuestionGenSettings
from services.questiongen.stage import STAGE, QuestionGenStage

Settings = QuestionGenSettings


async def build(settings: QuestionGenSettings, infra: Infra, engine=None) -> StageService:
    engine = engine or await engine_from_settings(settings)
    counters = infra.counters(STAGE)
    stage = QuestionGenStage(engine, counters=counters, runs=infra.run_states())
    server = GrpcServer(
        STAGE,
        settings,
        servicers=[(api_grpc.add_QuestionGenServiceServicer_to_server, QuestionGenServicer(stage, settings), SERVICE_NAME)],
    )
    spec = WorkerSpec(subjects.GENERATE, decoder(pb.GenerateTask), stage.handle)
    return StageService(STAGE, settings, server, infra, spec, counters)
