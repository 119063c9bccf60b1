"""gRPC adapter of the coordinator (scalequest.coordinator.v1.CoordinatorService)."""

from __future__ import annotations

import asyncio

from scalequest.common.v1 import items_pb2 as pb
from scalequest.coordinator.v1 import coordinator_pb2 as api
from scalequest.coordinator.v1 import coordinator_pb2_grpc as api_grpc

from libs.errors import InvalidArgument
from libs.grpc import validation as check
from libs.runstate import CLOSED_STATES
from services.coordinator.runs import RUN_ID_RE, RunManager, status_to_proto
from services.coordinator.settings import CoordinatorSettings
from services.reward.selection import RULES

SERVICE_NAME = api.DESCRIPTOR.services_by_name["CoordinatorService"].full_name


#: Largest target a run may ask for (the paper's dataset is 1M pairs).
MAX_TARGET = 10**9
#: Largest explicit max_tasks (0 = target x SQ_MAX_TASKS_FACTOR).
MAX_TASKS = 2**53
#: Largest max_outstanding (the bound of SQ_MAX_OUTSTANDING).
MAX_OUTSTANDING = 100000
#: Largest shard_max_records / shard_max_seconds a run may ask for.
MAX_SHARD_RECORDS = 1_000_000
MAX_SHARD_SECONDS = 86400.0
#: Longest model name (path, id or served name) recorded in a run's provenance.
MAX_MODEL_CHARS = 1024
#: Longest difficulty_keep spec.
MAX_KEEP_CHARS = 1024
MAX_N_CANDIDATES = 64
RUN_ID_RULE = "lowercase letters, digits and '-' (starting with a letter or digit), at most 48 characters"


def _run_id(value: str, field: str = "run_id") -> str:
    if not value:
        raise InvalidArgument(f"{field} is required")
    return check.identifier(field, value, max_chars=48, pattern=RUN_ID_RE, rule=RUN_ID_RULE)


def check_run_config(cfg: pb.RunConfig, settings: CoordinatorSettings) -> None:
    """Field-by-field checks of a StartRun config (0 / "" = the coordinator default); the
    cross-field checks after defaults are filled in are RunManager.resolve_config's."""
    check.int_range("config.target", cfg.target, 0, MAX_TARGET)
    # config.seed: any int64 (task seeds are hashed from it)
    for name in ("generator_model", "solver_model", "judge_model", "optimizer_model"):
        check.text(f"config.{name}", getattr(cfg, name), max_chars=MAX_MODEL_CHARS, required=False)
    check.sampling(
        "config.question_sampling", cfg.question_sampling, temperature=settings.run_question_temperature,
        top_p=settings.run_question_top_p, max_tokens=settings.run_question_max_tokens,
    )  # fmt: skip
    check.sampling(
        "config.solution_sampling", cfg.solution_sampling, temperature=settings.run_solution_temperature,
        top_p=settings.run_solution_top_p, max_tokens=settings.run_solution_max_tokens,
    )  # fmt: skip
    # optimizer_sampling: max_tokens 0 = all three defaults; temperature 0 is a real value (greedy)
    os_ = cfg.optimizer_sampling
    check.float_range("config.optimizer_sampling.temperature", os_.temperature, 0.0, check.MAX_TEMPERATURE)
    check.float_range("config.optimizer_sampling.top_p", os_.top_p, 0.0, 1.0)
    check.int_range("config.optimizer_sampling.max_tokens", os_.max_tokens, 0, check.MAX_SAMPLING_TOKENS)
    check.int_range("config.n_candidates", cfg.n_candidates, 0, MAX_N_CANDIDATES)
    check.enum("config.mode", cfg.mode, pb.GenerationMode)
    if cfg.selection_rule:
        check.choice("config.selection_rule", cfg.selection_rule, RULES)
    check.int_range("config.min_agreement", cfg.min_agreement, 0, MAX_N_CANDIDATES)
    check.int_range("config.max_outstanding", cfg.max_outstanding, 0, MAX_OUTSTANDING)
    check.int_range("config.max_tasks", cfg.max_tasks, 0, MAX_TASKS)
    check.int_range("config.shard_max_records", cfg.shard_max_records, 0, MAX_SHARD_RECORDS)
    check.float_range("config.shard_max_seconds", cfg.shard_max_seconds, 0.0, MAX_SHARD_SECONDS)
    check.text("config.difficulty_keep", cfg.difficulty_keep, max_chars=MAX_KEEP_CHARS, required=False)
    check.enum("config.run_type", cfg.run_type, pb.RunType)


class CoordinatorServicer(api_grpc.CoordinatorServiceServicer):
    def __init__(self, manager: RunManager) -> None:
        self.manager = manager

    async def StartRun(self, request: api.StartRunRequest, context) -> api.StartRunResponse:
        check_run_config(request.config, self.manager.settings)
        if request.run_id:
            _run_id(request.run_id)
        run_id = await self.manager.start_run(request.config, request.run_id)
        return api.StartRunResponse(run_id=run_id)

    async def GetRun(self, request: api.GetRunRequest, context) -> api.GetRunResponse:
        st = await self.manager.status(_run_id(request.run_id))
        return api.GetRunResponse(status=status_to_proto(st))

    async def ListRuns(self, request: api.ListRunsRequest, context) -> api.ListRunsResponse:
        return api.ListRunsResponse(runs=[status_to_proto(s) for s in await self.manager.list_runs()])

    async def CancelRun(self, request: api.CancelRunRequest, context) -> api.CancelRunResponse:
        run = await self.manager.cancel_run(_run_id(request.run_id))
        return api.CancelRunResponse(status=status_to_proto(await self.manager.status(run.run_id)))

    async def StreamProgress(self, request: api.StreamProgressRequest, context):
        run_id = _run_id(request.run_id)
        interval = request.interval_seconds or 1.0
        check.float_range("interval_seconds", interval, 0.2, 60.0)
        while True:
            st = await self.manager.status(run_id)
            yield status_to_proto(st)
            if st["state"] in CLOSED_STATES:
                return
            await asyncio.sleep(interval)
