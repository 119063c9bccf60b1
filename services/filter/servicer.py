"""gRPC adapter of the filter stage (scalequest.filter.v1.FilterService)."""

from __future__ import annotations

import uuid

from scalequest.filter.v1 import filter_pb2 as api
from scalequest.filter.v1 import filter_pb2_grpc as api_grpc

from libs.errors import InvalidArgument
from libs.grpc import validation as check
from services.filter.stage import FilterStage

SERVICE_NAME = api.DESCRIPTOR.services_by_name["FilterService"].full_name
MAX_QUESTIONS = 256
#: Longest single question a request may carry (the filter's own length check rejects earlier).
MAX_REQUEST_QUESTION_CHARS = 1024 * 1024
#: Longest dedup_scope (it becomes part of NATS KV keys).
MAX_SCOPE_CHARS = 64


class FilterServicer(api_grpc.FilterServiceServicer):
    def __init__(self, stage: FilterStage) -> None:
        self.stage = stage

    async def JudgeQuestions(self, request: api.JudgeQuestionsRequest, context) -> api.JudgeQuestionsResponse:
        settings = self.stage.settings
        # Longer questions than max_question_chars are judged (rejected as too_long), not refused;
        # the request as a whole is bounded by SQ_GRPC_MAX_REQUEST_CHARS.
        check.texts("questions", request.questions, max_count=MAX_QUESTIONS, max_chars=MAX_REQUEST_QUESTION_CHARS)
        if request.dedup_scope:
            check.identifier("dedup_scope", request.dedup_scope, max_chars=MAX_SCOPE_CHARS)
        scope = f"rpc-{request.dedup_scope}" if request.dedup_scope else ""
        if request.judge and self.stage.engine is None:
            raise InvalidArgument("judge=true but this filter runs without a judge model")
        n = len(request.questions)
        check.work(
            settings,
            tokens=n * settings.judge_max_tokens if request.judge else 0,
            chars=sum(len(q) for q in request.questions),
            what="questions x SQ_JUDGE_MAX_TOKENS",
        )
        call = uuid.uuid4().hex[:8]
        results = await self.stage.check_many([(q, scope, f"{call}-{i}", request.judge)
                                               for i, q in enumerate(request.questions)])  # fmt: skip
        out = api.JudgeQuestionsResponse()
        for res in results:
            if isinstance(res, BaseException):  # a claim or judge call failed: the interceptor maps it
                raise res
            failed = res.failed
            out.judgements.add(accepted=failed is None, reason=failed.reason if failed else "", verdicts=res.verdicts)
        return out
