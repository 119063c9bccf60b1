"""gRPC adapter of the questiongen stage (scalequest.questiongen.v1.QuestionGenService)."""

from __future__ import annotations

import asyncio
import random

from scalequest.common.v1 import items_pb2 as pb
from scalequest.questiongen.v1 import questiongen_pb2 as api
from scalequest.questiongen.v1 import questiongen_pb2_grpc as api_grpc

from libs.errors import InvalidArgument
from libs.grpc import validation as check
from services.questiongen.rewrite import pick_goal
from services.questiongen.settings import QuestionGenSettings
from services.questiongen.stage import QuestionGenStage

SERVICE_NAME = api.DESCRIPTOR.services_by_name["QuestionGenService"].full_name


def resolve_sampling(s: pb.Sampling, settings: QuestionGenSettings) -> pb.Sampling:
    """Zero fields take the service defaults; out-of-range values are INVALID_ARGUMENT."""
    return check.sampling(
        "sampling", s, temperature=settings.gen_temperature, top_p=settings.gen_top_p, max_tokens=settings.gen_max_tokens
    )


class QuestionGenServicer(api_grpc.QuestionGenServiceServicer):
    def __init__(self, stage: QuestionGenStage, settings: QuestionGenSettings) -> None:
        self.stage = stage
        self.settings = settings

    async def GenerateQuestions(self, request: api.GenerateQuestionsRequest, context) -> api.GenerateQuestionsResponse:
        check.int_range("count", request.count, 1, self.settings.gen_max_count)
        check.enum("mode", request.mode, pb.GenerationMode)
        check.seed("seed", request.seed)
        mode = request.mode or (
            pb.GENERATION_MODE_INSTRUCTED if self.settings.gen_mode == "instructed" else pb.GENERATION_MODE_SCRATCH
        )
        sampling = resolve_sampling(request.sampling, self.settings)
        check.work(self.settings, tokens=request.count * sampling.max_tokens, what="count x sampling.max_tokens")
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
        check.texts("questions", request.questions, max_count=self.settings.gen_max_count, max_chars=check.MAX_QUESTION_CHARS)
        check.enum("goal", request.goal, pb.RewriteGoal)
        check.seed("seed", request.seed)
        rewriter = self.stage.rewriter
        if rewriter is None:
            raise InvalidArgument("this questiongen has no optimizer engine configured")
        check.work(
            self.settings,
            tokens=n * rewriter.max_tokens,
            chars=sum(len(q) for q in request.questions),
            what="questions x SQ_OPTIMIZER_MAX_TOKENS",
        )
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
