"""gRPC adapter of the reward stage (scalequest.reward.v1.RewardService)."""

from __future__ import annotations

from scalequest.reward.v1 import reward_pb2 as api
from scalequest.reward.v1 import reward_pb2_grpc as api_grpc

from libs.errors import InvalidArgument
from services.reward.selection import RULES
from services.reward.stage import RewardStage

SERVICE_NAME = api.DESCRIPTOR.services_by_name["RewardService"].full_name


class RewardServicer(api_grpc.RewardServiceServicer):
    def __init__(self, stage: RewardStage) -> None:
        self.stage = stage

    async def ScoreCandidates(self, request: api.ScoreCandidatesRequest, context) -> api.ScoreCandidatesResponse:
        if not request.question.strip():
            raise InvalidArgument("question is empty")
        if not 1 <= len(request.candidates) <= 64:
            raise InvalidArgument(f"candidates must hold 1..64 entries, got {len(request.candidates)}")
        limit = self.stage.settings.max_solution_chars
        for i, c in enumerate(request.candidates):
            if len(c.text) > limit:
                raise InvalidArgument(f"candidates[{i}].text is longer than {limit} characters")
        if request.rule and request.rule not in RULES:
            raise InvalidArgument(f"rule must be one of {', '.join(RULES)}, got {request.rule!r}")
        if request.min_agreement < 0 or request.min_agreement > len(request.candidates):
            raise InvalidArgument("min_agreement must be in [0, number of candidates]")
        scored, sel = await self.stage.score(request.question, list(request.candidates), request.rule, request.min_agreement)
        return api.ScoreCandidatesResponse(
            candidates=scored, selected=sel.index, reason=sel.reason, difficulty=(1.0 - sel.agreement) if sel.index >= 0 else 0.0
        )
