"""gRPC adapter of the solver stage (scalequest.solver.v1.SolverService)."""

from __future__ import annotations

import random

from scalequest.common.v1 import items_pb2 as pb
from scalequest.solver.v1 import solver_pb2 as api
from scalequest.solver.v1 import solver_pb2_grpc as api_grpc

from libs.errors import InvalidArgument
from services.solver.settings import SolverSettings
from services.solver.stage import SolverStage

SERVICE_NAME = api.DESCRIPTOR.services_by_name["SolverService"].full_name


class SolverServicer(api_grpc.SolverServiceServicer):
    def __init__(self, stage: SolverStage, settings: SolverSettings) -> None:
        self.stage = stage
        self.settings = settings

    async def SolveQuestion(self, request: api.SolveQuestionRequest, context) -> api.SolveQuestionResponse:
        q = request.question.strip()
        if not q:
            raise InvalidArgument("question is empty")
        if len(q) > self.settings.max_question_chars:
            raise InvalidArgument(f"question is longer than {self.settings.max_question_chars} characters")
        n = request.n or self.settings.solve_n
        if not 1 <= n <= 64:
            raise InvalidArgument(f"n must be in [1, 64], got {n}")
        s = request.sampling
        sampling = pb.Sampling(
            temperature=s.temperature or self.settings.solve_temperature,
            top_p=s.top_p or self.settings.solve_top_p,
            max_tokens=s.max_tokens or self.settings.solve_max_tokens,
        )
        if not 0 <= sampling.temperature <= 5 or not 0 < sampling.top_p <= 1 or not 0 < sampling.max_tokens <= 32768:
            raise InvalidArgument("sampling out of range (temperature [0,5], top_p (0,1], max_tokens [1,32768])")
        seed = request.seed or random.randrange(1, 2**31 - 65)
        cands = await self.stage.solve(q, n, sampling, seed)
        return api.SolveQuestionResponse(candidates=cands, model=self.stage.engine.model_name)
