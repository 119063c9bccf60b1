"""solver entrypoint: gRPC SolverService + worker on scalequest.work.solve."""

from __future__ import annotations

from scalequest.common.v1 import items_pb2 as pb
from scalequest.solver.v1 import solver_pb2_grpc as api_grpc

from libs.engines.factory import engine_from_settings
from libs.grpc.server import GrpcServer
from libs.items import decoder
from libs.queue import subjects
from libs.service import Infra, StageService, WorkerSpec
from services.solver.servicer import SERVICE_NAME, SolverServicer
from services.solver.settings import SolverSettings
from services.solver.stage import STAGE, SolverStage

Settings = SolverSettings


async def build(settings: SolverSettings, infra: Infra, engine=None) -> StageService:
    engine = engine or await engine_from_settings(settings)
    counters = infra.counters(STAGE)
    stage = SolverStage(engine, answer_fallback=settings.answer_fallback, prompt_style=settings.solve_prompt, counters=counters, runs=infra.run_states())
    server = GrpcServer(
        STAGE,
        settings,
        servicers=[(api_grpc.add_SolverServiceServicer_to_server, SolverServicer(stage, settings), SERVICE_NAME)],
    )
    spec = WorkerSpec(subjects.SOLVE, decoder(pb.Question), stage.handle)
    return StageService(STAGE, settings, server, infra, spec, counters)
