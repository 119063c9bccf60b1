"""gRPC adapter of the reward stage (scalequest.reward.v1.RewardService)."""

from __future__ import annotations

from scalequest.common.v1 import items_pb2 as pb
from scalequest.reward.v1 import reward_pb2 as api
from scalequest.reward.v1 import reward_pb2_grpc as api_grpc

from libs.errors import InvalidArgument
from libs.grpc import validation as check
from services.reward.selection import RULES
from services.reward.stage import RewardStage

SERVICE_NAME = api.DESCRIPTOR.services_by_name["RewardService"].full_name
#: Most candidates one request may carry.
MAX_CANDIDATES = 64
#: Longest extracted answer (answers are compared pairwise with math-verify).
MAX_ANSWER_CHARS = 1024
#: Candidate fields that scoring fills in.
OUTPUT_FIELDS = ("judge_score", "agreement", "reward", "rm_score")


class RewardServicer(api_grpc.RewardServiceServicer):
    def __init__(self, stage: RewardStage) -> None:
        self.stage = stage

    async def ScoreCandidates(self, request: api.ScoreCandidatesRequest, context) -> api.ScoreCandidatesResponse:
        settings = self.stage.settings
        check.text("question", request.question, max_chars=check.MAX_QUESTION_CHARS)
        n = len(request.candidates)
        if not 1 <= n <= MAX_CANDIDATES:
            raise InvalidArgument(f"candidates must hold 1..{MAX_CANDIDATES} entries, got {n}")
        candidates = []
        for i, c in enumerate(request.candidates):
            check.text(f"candidates[{i}].text", c.text, max_chars=settings.max_solution_chars, required=False)
            check.text(f"candidates[{i}].answer", c.answer, max_chars=MAX_ANSWER_CHARS, required=False)
            check.text(f"candidates[{i}].finish_reason", c.finish_reason, max_chars=32, required=False)
            check.int_range(f"candidates[{i}].num_tokens", c.num_tokens, 0, 2**31 - 1)
            own = pb.Candidate()
            own.CopyFrom(c)
            for output in OUTPUT_FIELDS:  # filled in by scoring; what the caller sent is ignored
                own.ClearField(output)
            candidates.append(own)
        if request.rule:
            check.choice("rule", request.rule, RULES)
        check.int_range("min_agreement", request.min_agreement, 0, n)
        check.work(settings, chars=len(request.question) + sum(len(c.text) + len(c.answer) for c in candidates))
        scored, sel = await self.stage.score(request.question, candidates, request.rule, request.min_agreement)
        return api.ScoreCandidatesResponse(
            candidates=scored, selected=sel.index, reason=sel.reason, difficulty=(1.0 - sel.agreement) if sel.index >= 0 else 0.0
        )
