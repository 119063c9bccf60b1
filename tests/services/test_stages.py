"""Stage logic called directly (no transport), with the fake engine."""

from __future__ import annotations

import pytest
from scalequest.common.v1 import items_pb2 as pb

from libs.engines.fake import FakeEngine
from services.filter.settings import FilterSettings
from services.filter.stage import FilterStage
from services.questiongen.stage import (
    INSTRUCTED_PROMPT,
    QuestionGenStage,
    clean_question,
)
from services.reward.settings import RewardSettings
from services.reward.stage import RewardStage
from services.solver.stage import SolverStage, solve_messages

SAMPLING = pb.Sampling(temperature=1.0, top_p=0.99, max_tokens=64)


async def started(engine: FakeEngine) -> FakeEngine:
    await engine.start()
    return engine


async def test_scratch_prompt_is_only_the_template_prefix():
    eng = await started(FakeEngine(text="How many?"))
    stage = QuestionGenStage(eng)
    p = stage.prompt(pb.GENERATION_MODE_SCRATCH)
    assert p == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    await stage.sample(pb.GENERATION_MODE_SCRATCH, SAMPLING, 5)
    prompt, params = eng.calls[-1]
    assert prompt == p and params.seed == 5 and "<|im_end|>" in params.stop
    assert params.temperature == pytest.approx(1.0) and params.top_p == pytest.approx(0.99)


async def test_instructed_prompt_asks_for_a_problem():
    eng = await started(FakeEngine())
    p = QuestionGenStage(eng).prompt(pb.GENERATION_MODE_INSTRUCTED)
    assert INSTRUCTED_PROMPT in p and p.endswith("<|im_start|>assistant\n")


async def test_truncated_and_empty_samples_are_dropped():
    eng = await started(FakeEngine(text="word " * 100))
    s = await QuestionGenStage(eng).sample(pb.GENERATION_MODE_SCRATCH, SAMPLING, 1)
    assert s.drop_reason == "gen_truncated"
    eng = await started(FakeEngine(text="   "))
    s = await QuestionGenStage(eng).sample(pb.GENERATION_MODE_SCRATCH, SAMPLING, 1)
    assert s.drop_reason == "gen_empty"


def test_clean_question():
    assert clean_question("  Question: What is 2+2? ") == "What is 2+2?"


async def test_judge_strict_and_forced():
    settings = FilterSettings(judge_verdict="strict")
    eng = await started(FakeEngine(text="It mentions numbers, yes, but I am unsure."))
    v, _ = await FilterStage(eng, settings).judge_solvable("What is 2+2?")
    assert (v.passed, v.reason) == (False, "judge_unparseable")
    # force: a second greedy step after "Verdict:" compares P(Yes) and P(No)
    eng = await started(FakeEngine(text="I am unsure.", logprobs={" No": -0.3, " Yes": -1.5}))
    v, _ = await FilterStage(eng, FilterSettings(judge_verdict="force")).judge_solvable("What is 2+2?")
    assert (v.passed, v.reason) == (False, "judge_unsolvable") and "forced" in v.detail
    eng = await started(FakeEngine(text="Everything is given.\nVerdict: Yes"))
    v, _ = await FilterStage(eng, settings).judge_solvable("What is 2+2?")
    assert v.passed and v.detail == "Verdict: Yes"


async def test_solver_candidates_have_own_seeds_and_answers():
    eng = await started(FakeEngine(lambda p, params, i: f"so \\boxed{{{params.seed % 2}}}"))
    cands = await SolverStage(eng).solve("What is 1 - 1?", 4, SAMPLING, 10)
    assert [c.seed for c in cands] == [10, 11, 12, 13]
    assert [c.answer for c in cands] == ["0", "1", "0", "1"]


def test_one_shot_prompt_has_a_worked_example():
    msgs = solve_messages("Q?", "one_shot")
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"] and "\\boxed{7}" in msgs[1]["content"]
    with pytest.raises(ValueError):
        solve_messages("Q?", "three_shot")


async def test_reward_scores_and_selects():
    eng = await started(FakeEngine(text="Yes", logprobs={"Yes": -0.1, "No": -2.4}))
    stage = RewardStage(eng, RewardSettings())
    cands = [pb.Candidate(text="a", answer="2"), pb.Candidate(text="b", answer="2.0"), pb.Candidate(text="c", answer="3"),
             pb.Candidate(text="d", answer="")]
    scored, sel = await stage.score("What is 1+1?", cands, "majority_then_reward", 2)
    assert sel.index in (0, 1) and sel.agreement == pytest.approx(0.5)
    assert scored[0].judge_score == pytest.approx(0.909, abs=0.01)
    assert scored[3].judge_score == 0.0 and scored[3].agreement == 0.0  # unanswered: never judged
    assert len(eng.calls) == 3
