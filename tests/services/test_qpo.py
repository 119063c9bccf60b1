"""QPO data (METHOD §2): rewrite parsing, goal choice, the RewriteQuestions RPC over real gRPC,
and a QPO pipeline run over real NATS writing DPO-ready Parquet (scripted zero-cost engine)."""

from __future__ import annotations

from collections import Counter
from contextlib import AsyncExitStack

import grpc
import pytest
from scalequest.common.v1 import items_pb2 as pb
from scalequest.questiongen.v1 import questiongen_pb2 as qapi
from scalequest.questiongen.v1 import questiongen_pb2_grpc as qapi_grpc

from libs.engines.fake import FakeEngine
from libs.engines.scripted import math_engine
from scalequest_cli.embedded import start_pipeline
from services.questiongen.rewrite import MARKER, Rewriter, parse_rewrite, pick_goal
from tests.services.test_pipeline_fake import OVERRIDES, run_pipeline

ORIGINAL = "Tom has 3 apples and buys 5 more. How many apples does he have?"


@pytest.mark.parametrize(
    "output, expected",
    [
        (f"Add a step.\n{MARKER}\nTom has 3 apples, buys 5 and eats 2. How many are left?",
         ("Tom has 3 apples, buys 5 and eats 2. How many are left?", "")),
        ("Reasoning.\n**Improved problem:** Anna has 4 pens and buys 6. How many?", ("Anna has 4 pens and buys 6. How many?", "")),
        ("x\n## improved problem\n\"Anna has 4 pens and buys 6. How many?\"", ("Anna has 4 pens and buys 6. How many?", "")),
        # only the last marker counts (the first one is inside the reasoning)
        (f"I will write the {MARKER} section.\n{MARKER}\nB has 2 cats and 3 dogs. How many pets?\n",
         ("B has 2 cats and 3 dogs. How many pets?", "")),
        # a solution after the problem is not part of the rewrite
        (f"{MARKER}\nB has 2 cats and 3 dogs. How many pets?\n\nSolution: 2 + 3 = 5.", ("B has 2 cats and 3 dogs. How many pets?", "")),
        ("I think the problem is good. Tom has 3 apples.", ("", "rewrite_no_marker")),
        (f"Nothing to add.\n{MARKER}\n   \n", ("", "rewrite_empty")),
        (f"{MARKER}\n  tom has 3 apples and buys 5 more.   How many apples does he have", ("", "rewrite_unchanged")),
    ],
)
def test_parse_rewrite(output, expected):
    assert parse_rewrite(output, ORIGINAL) == expected


def test_goal_choice_is_seeded_and_balanced():
    goals = [pick_goal(s) for s in range(2000)]
    assert goals == [pick_goal(s) for s in range(2000)]
    share = Counter(goals)[pb.REWRITE_GOAL_SOLVABILITY] / len(goals)
    assert 0.45 < share < 0.55
    assert set(goals) == {pb.REWRITE_GOAL_SOLVABILITY, pb.REWRITE_GOAL_DIFFICULTY}


async def test_rewriter_prompts_and_truncation():
    seen = []

    def responder(prompt, params, index):
        seen.append((prompt, params))
        return "word " * 50

    eng = FakeEngine(responder)
    await eng.start()
    rw = Rewriter(eng, max_tokens=10)
    r = await rw.rewrite(ORIGINAL, pb.REWRITE_GOAL_DIFFICULTY, seed=3)
    assert r.drop_reason == "rewrite_truncated" and r.rewritten == ""
    prompt, params = seen[-1]
    assert "harder" in prompt and ORIGINAL in prompt and MARKER in prompt
    assert params.temperature == 0.0 and params.max_tokens == 10 and params.seed == 3
    await rw.rewrite(ORIGINAL, pb.REWRITE_GOAL_SOLVABILITY, seed=3)
    assert "exactly one numerical answer" in seen[-1][0]
    with pytest.raises(ValueError):
        rw.prompt(ORIGINAL, pb.REWRITE_GOAL_UNSPECIFIED)


async def test_rewrite_rpc(nats_server, tmp_path):
    engine = math_engine()
    await engine.start()
    async with AsyncExitStack() as stack:
        pipe = await start_pipeline(nats_url=nats_server.url, store_url=str(tmp_path), overrides=OVERRIDES,
                                    stack=stack, engine=engine)
        ch = grpc.aio.insecure_channel(f"127.0.0.1:{pipe.port('questiongen')}")
        stack.push_async_callback(ch.close)
        stub = qapi_grpc.QuestionGenServiceStub(ch)
        qs = [f"Tom has {i} apples and buys 4 more. How many apples does he have?" for i in range(2, 12)]
        resp = await stub.RewriteQuestions(qapi.RewriteQuestionsRequest(questions=qs, seed=100))
        assert resp.model == "fake-math" and len(resp.rewrites) == len(qs)
        reasons = Counter(r.drop_reason for r in resp.rewrites)
        # scripted optimizer: seed % 5 == 0 no marker, == 1 unchanged, else a rewrite
        assert reasons == {"": 6, "rewrite_no_marker": 2, "rewrite_unchanged": 2}
        for q, r in zip(qs, resp.rewrites):
            assert r.original == q and r.goal in (pb.REWRITE_GOAL_SOLVABILITY, pb.REWRITE_GOAL_DIFFICULTY)
            assert (r.rewritten != "" and r.rewritten != q) == (r.drop_reason == "")
        fixed = await stub.RewriteQuestions(
            qapi.RewriteQuestionsRequest(questions=qs[:3], goal=pb.REWRITE_GOAL_DIFFICULTY, seed=7)
        )
        assert {r.goal for r in fixed.rewrites} == {pb.REWRITE_GOAL_DIFFICULTY}
        for bad in (
            qapi.RewriteQuestionsRequest(),
            qapi.RewriteQuestionsRequest(questions=["ok question here", "  "]),
            qapi.RewriteQuestionsRequest(questions=["ok question here"], goal=9),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.RewriteQuestions(bad)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_qpo_run_writes_dpo_ready_pairs(nats_server, tmp_path):
    final, rows = await run_pipeline(nats_server.url, str(tmp_path / "store"), target=12, run_type=pb.RUN_TYPE_QPO)
    assert final.accepted == 12 and len(rows) == 12
    assert len({r["item_id"] for r in rows}) == 12
    reasons = {(r.stage, r.reason): r.count for r in final.rejections}
    assert reasons.get(("questiongen", "rewrite_no_marker"), 0) >= 1
    assert reasons.get(("questiongen", "rewrite_unchanged"), 0) >= 1
    # QPO runs end at questiongen: nothing was judged, solved or scored
    assert not any(stage in ("solver", "reward") for stage, _ in reasons)
    for r in rows:
        assert r["prompt"].endswith("<|im_start|>user\n"), r["prompt"]  # the empty-prompt template
        assert r["chosen"] and r["rejected"] and r["chosen"] != r["rejected"]
        assert r["goal"] in ("solvability", "difficulty")
        assert MARKER in r["optimizer_output"]
    assert len({r["goal"] for r in rows}) == 2

    import datasets

    shards = sorted((tmp_path / "store" / "runs" / final.run_id / "shards").glob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=[str(p) for p in shards], split="train")
    assert ds.num_rows == 12 and {"prompt", "chosen", "rejected", "goal"} <= set(ds.column_names)
