"""reward entrypoint: gRPC RewardService + worker on scalequest.work.score."""

from __future__ import annotations

import asyncio

from scalequest.common.v1 import items_pb2 as pb
from scalequest.reward.v1 import reward_pb2_grpc as api_grpc

from libs import answers
from libs.engines.factory import engine_from_settings
from libs.engines.pooling import ScoringEngine, get_scorer
from libs.grpc.server import GrpcServer
from libs.items import decoder
from libs.queue import subjects
from libs.service import Infra, StageService, WorkerSpec
from services.reward.servicer import SERVICE_NAME, RewardServicer
from services.reward.settings import RewardSettings
from services.reward.stage import STAGE, RewardStage

Settings = RewardSettings


async def reward_model_from_settings(settings: RewardSettings) -> ScoringEngine | None:
    """The reward model's scoring engine (one per process, from the registry); None when
    ``SQ_REWARD_MODEL`` is empty."""
    if not settings.reward_model:
        return None
    return await get_scorer(
        settings.reward_model,
        settings.reward_model_runner,
        max_model_len=settings.reward_model_max_len,
        dtype=settings.reward_model_dtype,
        gpu_memory_utilization=settings.reward_model_gpu_memory_utilization,
    )


async def build(settings: RewardSettings, infra: Infra, engine=None, reward_model: ScoringEngine | None = None) -> StageService:
    if settings.judge_enabled:
        engine = engine or await engine_from_settings(settings)
    else:
        engine = None
    reward_model = reward_model or await reward_model_from_settings(settings)
    counters = infra.counters(STAGE)
    await asyncio.to_thread(answers.warm_up)  # math-verify's imports before the first item, not in it
    stage = RewardStage(engine, settings, reward_model=reward_model, counters=counters, runs=infra.run_states())
    server = GrpcServer(
        STAGE, settings, servicers=[(api_grpc.add_RewardServiceServicer_to_server, RewardServicer(stage), SERVICE_NAME)]
    )
    spec = WorkerSpec(subjects.SCORE, decoder(pb.SolvedQuestion), stage.handle)
    return StageService(STAGE, settings, server, infra, spec, counters)
