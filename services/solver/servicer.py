"""gRPC adapter of the solver stage (scalequest.solver.v1.SolverService)."""

from __future__ import annotations

import random

from scalequest.solver.v1 import solver_pb2 as api
from scalequest.solver.v1 import solver_pb2_grpc as api_grpc

from libs.grpc import validation as check
from services.solver.settings import SolverSettings
from services.solver.stage import SolverStage

SERVICE_NAME = api.DESCRIPTOR.services_by_name["SolverService"].full_name
#: Most candidates one request may ask for.
MAX_N = 64


class SolverServicer(api_grpc.SolverServiceServicer):
    def __init__(self, stage: SolverStage, settings: SolverSettings) -> None:
        self.stage = stage
        self.settings = settings

    async def SolveQuestion(self, request: api.SolveQuestionRequest, context) -> api.SolveQuestionResponse:
        st = self.settings
        check.text("question", request.question, max_chars=st.max_question_chars)
        q = request.question.strip()
        n = check.int_range("n", request.n, 0, MAX_N) or st.solve_n
        sampling = check.sampling(
            "sampling", request.sampling, temperature=st.solve_temperature, top_p=st.solve_top_p, max_tokens=st.solve_max_tokens
        )
        check.seed("seed", request.seed)
        check.work(st, tokens=n * sampling.max_tokens, what="n x sampling.max_tokens")
        seed = request.seed or random.randrange(1, check.MAX_SEED - MAX_N)
        cands = await self.stage.solve(q, n, sampling, seed)
        return api.SolveQuestionResponse(candidates=cands, model=self.stage.engine.model_name)
