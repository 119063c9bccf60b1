"""gRPC adapter of the questiongen stage (scalequest.questiongen.v1.QuestionGenService)."""

from __future__ import annotations

import asyncio
import random

from scalequest.common.v1 import items_pb2 as pb
from scalequest.questiongen.v1 import questiongen_pb2 as api
from scalequest.questiongen.v1 import questiongen_pb2_grpc as api_grpc

from libs.errors import InvalidArgument
from services.questiongen.rewrite import pick_goal
from services.questiongen.settings import QuestionGenSettings
from services.questiongen.stage import QuestionGenStage

SERVICE_NAME = api.DESCRIPTOR.services_by_name["QuestionGenService"].full_name


def resolve_sampling(s: pb.Sampling, settings: QuestionGenSettings) -> pb.Sampling:
    """Zero fields take the service defaults; out-of-range values are INVALID_ARGUMENT."""
    out = pb.Sampling(
        temperature=s.temperature or settings.gen_temperature,
        top_p=s.top_p or settings.gen_top_p,
        max_tokens=s.max_tokens or settings.gen_max_tokens,
    )
    if not 0 <= out.temperature <= 5:
        raise InvalidArgument(f"sampling.temperature must be in [0, 5], got {out.temperature}")
    if not 0 < out.top_p <= 1:
        raise InvalidArgument(f"sampling.top_p must be in (0, 1], got {out.top_p}")
    if not 0 < out.max_tokens <= 32768:
        raise InvalidArgument(f"sampling.max_tokens must be in [1, 32768], got {out.max_tokens}")
    return out


class QuestionGenServicer(api_grpc.QuestionGenServiceServicer):
    def __init__(self, stage: QuestionGenStage, settings: QuestionGenSettings) -> None:
        self.stage = stage
        self.settings = settings

    async def GenerateQuestions(self, request: api.GenerateQuestionsRequest, context) -> api.GenerateQuestionsResponse:
        if not 1 <= request.count <= self.settings.gen_max_count:
            raise InvalidArgument(f"count must be in [1, {self.settings.gen_max_count}], got {request.count}")
        if request.mode not in (pb.GENERATION_MODE_UNSPECIFIED, pb.GENERATION_MODE_SCRATCH, pb.GENERATION_MODE_INSTRUCTED):
            raise InvalidArgument(f"unknown mode {request.mode}")
        mode = request.mode or (
            pb.GENERATION_MODE_INSTRUCTED if self.settings.gen_mode == "instructed" else pb.GENERATION_MODE_SCRATCH
        )
        sampling = resolve_sampling(request.sampling, self.settings)
        base = request.seed or random.randrange(1, 2**31 - 1 - request.count)
        samples = await asyncio.gather(*(self.stage.sample(mode, sampling, base + i) for i in range(request.count)))
        return api.GenerateQuestionsResponse(
            model=self.stage.engine.model_name,
            questions=[
                api.GeneratedQuestion(text=s.text, drop_reason=s.drop_reason, num_tokens=s.num_tokens, seed=s.seed)
                for s in samples
            ],
        )

    async def RewriteQuestions(self, request: api.RewriteQuestionsRequest, context) -> api.RewriteQuestionsResponse:
        n = len(request.questions)
        if not 1 <= n <= self.settings.gen_max_count:
            raise InvalidArgument(f"questions must hold 1..{self.settings.gen_max_count} entries, got {n}")
        empty = [i for i, q in enumerate(request.questions) if not q.strip()]
        if empty:
            raise InvalidArgument(f"questions[{empty[0]}] is empty")
        if request.goal not in (pb.REWRITE_GOAL_UNSPECIFIED, pb.REWRITE_GOAL_SOLVABILITY, pb.REWRITE_GOAL_DIFFICULTY):
            raise InvalidArgument(f"unknown goal {request.goal}")
        rewriter = self.stage.rewriter
        if rewriter is None:
            raise InvalidArgument("this questiongen has no optimizer engine configured")
        base = request.seed or random.randrange(1, 2**31 - 1 - n)
        goals = [request.goal or pick_goal(base + i) for i in range(n)]
        results = await asyncio.gather(
            *(rewriter.rewrite(q, g, seed=base + i) for i, (q, g) in enumerate(zip(request.questions, goals)))
        )
        return api.RewriteQuestionsResponse(
            model=rewriter.model_name,
            rewrites=[
                api.Rewrite(original=r.original, goal=r.goal, rewritten=r.rewritten, drop_reason=r.drop_reason, output=r.output)
                for r in results
            ],
        )
