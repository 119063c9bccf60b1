"""questiongen entrypoint: gRPC QuestionGenService + worker on scalequest.work.generate."""

from __future__ import annotations

from scalequest.common.v1 import items_pb2 as pb
from scalequest.questiongen.v1 import questiongen_pb2_grpc as api_grpc

from libs.engines.factory import engine_from_settings
from libs.grpc.server import GrpcServer
from libs.items import decoder
from libs.queue import subjects
from libs.service import Infra, StageService, WorkerSpec
from services.questiongen.rewrite import Rewriter
from services.questiongen.servicer import SERVICE_NAME, QuestionGenServicer
from services.questiongen.settings import QuestionGenSettings
from services.questiongen.stage import STAGE, QuestionGenStage

Settings = QuestionGenSettings


async def build(settings: QuestionGenSettings, infra: Infra, engine=None) -> StageService:
    engine = engine or await engine_from_settings(settings)
    counters = infra.counters(STAGE)
    rewriter = Rewriter(
        await optimizer_engine(settings, engine),
        temperature=settings.optimizer_temperature,
        max_tokens=settings.optimizer_max_tokens,
    )
    stage = QuestionGenStage(engine, counters=counters, runs=infra.run_states(), rewriter=rewriter)
    server = GrpcServer(
        STAGE,
        settings,
        servicers=[(api_grpc.add_QuestionGenServiceServicer_to_server, QuestionGenServicer(stage, settings), SERVICE_NAME)],
    )
    spec = WorkerSpec(subjects.GENERATE, decoder(pb.GenerateTask), stage.handle)
    return StageService(STAGE, settings, server, infra, spec, counters)


async def optimizer_engine(settings: QuestionGenSettings, generator):
    """The QPO optimizer: the generator's own engine ("same") or one built from the optimizer_* settings."""
    if settings.optimizer_engine == "same":
        return generator
    opt = settings.model_copy(
        update={
            "engine": settings.optimizer_engine,
            "model": settings.optimizer_model or settings.model,
            "engine_base_url": settings.optimizer_base_url,
        }
    )
    return await engine_from_settings(opt)
