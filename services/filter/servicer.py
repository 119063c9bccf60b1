"""gRPC adapter of the filter stage (scalequest.filter.v1.FilterService)."""

from __future__ import annotations

import asyncio
import uuid

from scalequest.filter.v1 import filter_pb2 as api
from scalequest.filter.v1 import filter_pb2_grpc as api_grpc

from libs.errors import InvalidArgument
from services.filter.stage import FilterStage

SERVICE_NAME = api.DESCRIPTOR.services_by_name["FilterService"].full_name
MAX_QUESTIONS = 256


class FilterServicer(api_grpc.FilterServiceServicer):
    def __init__(self, stage: FilterStage) -> None:
        self.stage = stage

    async def JudgeQuestions(self, request: api.JudgeQuestionsRequest, context) -> api.JudgeQuestionsResponse:
        n = len(request.questions)
        if not 1 <= n <= MAX_QUESTIONS:
            raise InvalidArgument(f"questions must hold 1..{MAX_QUESTIONS} entries, got {n}")
        for i, q in enumerate(request.questions):
            if not q.strip():
                raise InvalidArgument(f"questions[{i}] is empty")
        if request.judge and self.stage.engine is None:
            raise InvalidArgument("judge=true but this filter runs without a judge model")
        scope = f"rpc-{request.dedup_scope}" if request.dedup_scope else ""
        if scope and not all(c.isalnum() or c in "-_" for c in request.dedup_scope):
            raise InvalidArgument("dedup_scope may hold only letters, digits, '-' and '_'")
        call = uuid.uuid4().hex[:8]
        results = await asyncio.gather(
            *(self.stage.check(q, scope, f"{call}-{i}", request.judge) for i, q in enumerate(request.questions))
        )
        out = api.JudgeQuestionsResponse()
        for res in results:
            failed = res.failed
            out.judgements.add(accepted=failed is None, reason=failed.reason if failed else "", verdicts=res.verdicts)
        return out
