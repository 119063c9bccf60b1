"""Every service over real gRPC channels: health, reflection, validation (INVALID_ARGUMENT),
and the RPC paths of each stage (scripted zero-cost engine)."""

from __future__ import annotations

from contextlib import AsyncExitStack

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from scalequest.common.v1 import items_pb2 as pb
from scalequest.coordinator.v1 import coordinator_pb2 as capi
from scalequest.coordinator.v1 import coordinator_pb2_grpc as capi_grpc
from scalequest.filter.v1 import filter_pb2 as fapi
from scalequest.filter.v1 import filter_pb2_grpc as fapi_grpc
from scalequest.questiongen.v1 import questiongen_pb2 as qapi
from scalequest.questiongen.v1 import questiongen_pb2_grpc as qapi_grpc
from scalequest.reward.v1 import reward_pb2 as rapi
from scalequest.reward.v1 import reward_pb2_grpc as rapi_grpc
from scalequest.solver.v1 import solver_pb2 as sapi
from scalequest.solver.v1 import solver_pb2_grpc as sapi_grpc

from libs.engines.scripted import math_engine
from scalequest_cli.embedded import start_pipeline
from services.registry import SERVICES

SERVICE_NAMES = {
    "questiongen": "scalequest.questiongen.v1.QuestionGenService",
    "filter": "scalequest.filter.v1.FilterService",
    "solver": "scalequest.solver.v1.SolverService",
    "reward": "scalequest.reward.v1.RewardService",
    "coordinator": "scalequest.coordinator.v1.CoordinatorService",
}
FAKE = {"engine": "fake"}


@pytest_asyncio.fixture
async def pipeline(nats_server, tmp_path):
    engine = math_engine()
    await engine.start()
    async with AsyncExitStack() as stack:
        pipe = await start_pipeline(
            nats_url=nats_server.url,
            store_url=str(tmp_path),
            overrides={s: dict(FAKE) for s in SERVICES if s != "coordinator"},
            stack=stack,
            engine=engine,
        )
        channels = {}
        for name in SERVICES:
            ch = grpc.aio.insecure_channel(f"127.0.0.1:{pipe.port(name)}")
            stack.push_async_callback(ch.close)
            channels[name] = ch
        yield channels


async def test_health_and_reflection(pipeline):
    for name, ch in pipeline.items():
        health = health_pb2_grpc.HealthStub(ch)
        for svc in ("", SERVICE_NAMES[name]):
            resp = await health.Check(health_pb2.HealthCheckRequest(service=svc))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING, (name, svc)
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        names = set()
        async for resp in refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])):
            names |= {s.name for s in resp.list_services_response.service}
        assert SERVICE_NAMES[name] in names and "grpc.health.v1.Health" in names


async def expect_invalid(call, request):
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call(request)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert "Traceback" not in (e.value.details() or "")
    return e.value.details()


async def test_invalid_arguments(pipeline):
    q = qapi_grpc.QuestionGenServiceStub(pipeline["questiongen"])
    assert "count" in await expect_invalid(q.GenerateQuestions, qapi.GenerateQuestionsRequest(count=0))
    await expect_invalid(q.GenerateQuestions, qapi.GenerateQuestionsRequest(count=10_000))
    await expect_invalid(
        q.GenerateQuestions, qapi.GenerateQuestionsRequest(count=1, sampling=pb.Sampling(top_p=1.5))
    )
    f = fapi_grpc.FilterServiceStub(pipeline["filter"])
    await expect_invalid(f.JudgeQuestions, fapi.JudgeQuestionsRequest())
    await expect_invalid(f.JudgeQuestions, fapi.JudgeQuestionsRequest(questions=["  "]))
    await expect_invalid(f.JudgeQuestions, fapi.JudgeQuestionsRequest(questions=["What is 2+2?"], dedup_scope="a b"))
    s = sapi_grpc.SolverServiceStub(pipeline["solver"])
    await expect_invalid(s.SolveQuestion, sapi.SolveQuestionRequest(question=""))
    await expect_invalid(s.SolveQuestion, sapi.SolveQuestionRequest(question="What is 2+2?", n=65))
    r = rapi_grpc.RewardServiceStub(pipeline["reward"])
    await expect_invalid(r.ScoreCandidates, rapi.ScoreCandidatesRequest(question="q"))
    await expect_invalid(
        r.ScoreCandidates,
        rapi.ScoreCandidatesRequest(question="q", candidates=[pb.Candidate(text="x", answer="1")], rule="best"),
    )
    c = capi_grpc.CoordinatorServiceStub(pipeline["coordinator"])
    await expect_invalid(c.GetRun, capi.GetRunRequest())
    await expect_invalid(c.StartRun, capi.StartRunRequest(config=pb.RunConfig(target=1), run_id="Bad Id!"))


async def test_stage_rpcs(pipeline):
    q = qapi_grpc.QuestionGenServiceStub(pipeline["questiongen"])
    resp = await q.GenerateQuestions(qapi.GenerateQuestionsRequest(count=3, seed=42))
    assert len(resp.questions) == 3 and resp.model == "fake-math"
    assert [x.seed for x in resp.questions] == [42, 43, 44]

    f = fapi_grpc.FilterServiceStub(pipeline["filter"])
    qs = ["Tom has 5 apples and buys 3 more. How many?", "tom has 5 apples and buys 3 more. how many", "小明有三个苹果，又买了两个。他现在有几个苹果？"]
    out = await f.JudgeQuestions(fapi.JudgeQuestionsRequest(questions=qs, dedup_scope="t1", judge=True))
    assert [j.accepted for j in out.judgements] == [True, False, False]
    assert [j.reason for j in out.judgements] == ["", "duplicate", "non_english_script"]
    assert [v.check for v in out.judgements[0].verdicts] == ["length", "language", "dedup", "solvability"]

    s = sapi_grpc.SolverServiceStub(pipeline["solver"])
    sol = await s.SolveQuestion(sapi.SolveQuestionRequest(question=qs[0], n=4, seed=100))
    assert [c.answer for c in sol.candidates] == ["8", "8", "8", "9"]  # seed 103 answers wrongly

    r = rapi_grpc.RewardServiceStub(pipeline["reward"])
    scored = await r.ScoreCandidates(rapi.ScoreCandidatesRequest(question=qs[0], candidates=sol.candidates))
    assert scored.selected in (0, 1, 2) and scored.difficulty == pytest.approx(0.25)
    assert all(0 < c.judge_score <= 1 for c in scored.candidates)
    assert scored.candidates[3].agreement == pytest.approx(0.25)
