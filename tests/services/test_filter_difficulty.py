"""The filter's learned difficulty check: a real (tiny, transformers-runner) regression model
scores each question that passed the other checks; the score travels on the item and questions
predicted easier than the threshold are rejected as too_easy."""

from __future__ import annotations

import pytest
from scalequest.common.v1 import items_pb2 as pb

from libs.difficulty import build_difficulty_scorer
from libs.settings import load_settings
from services.filter.settings import FilterSettings
from services.filter.stage import FilterStage
from tests.fixtures.tiny_models import build_tiny_scorer, one_torch_thread

QUESTIONS = [f"A farmer has {n} cows and buys {n + 3} more. How many cows does the farmer have now?" for n in range(2, 10)]


@pytest.fixture(scope="module")
def tiny_scorer_dir(tmp_path_factory):
    with one_torch_thread():
        # a small head keeps the raw outputs inside [0, 1], so the clipped scores still differ
        return build_tiny_scorer(tmp_path_factory.mktemp("difficulty") / "model", head_std=0.1)


def question(i: int, text: str) -> pb.Question:
    return pb.Question(schema_version=1, run_id="r", item_id=f"r-{i}", text=text,
                       config=pb.RunConfig(judge_enabled=False))


async def test_predicted_difficulty_travels_and_too_easy_is_rejected(tiny_scorer_dir):
    settings = load_settings(FilterSettings, engine="fake", difficulty_model=str(tiny_scorer_dir),
                             difficulty_model_runner="transformers", dedup_enabled=False, neardup_enabled=False)
    with one_torch_thread():
        scorer = await build_difficulty_scorer(settings)
        assert scorer is not None
        scores = [await scorer.predict_one(q) for q in QUESTIONS]
        assert all(s is not None and 0.0 <= s <= 1.0 for s in scores) and len(set(scores)) > 1
        # threshold between the scores: some questions pass, the others are too easy
        cut = sorted(scores)[len(scores) // 2]
        stage = FilterStage(None, settings.model_copy(update={"difficulty_min_predicted": cut}), difficulty=scorer)
        outs = [(await stage.handle([question(i, q)]))[0] for i, q in enumerate(QUESTIONS)]
    for s, out in zip(scores, outs):
        (pub,) = out
        if s >= cut:
            fwd = pb.Question.FromString(pub.payload)
            assert fwd.predicted_difficulty == pytest.approx(s, abs=1e-6)
            assert fwd.verdicts[-1].check == "difficulty" and fwd.verdicts[-1].passed
        else:
            rej = pb.Outcome.FromString(pub.payload).rejection
            assert rej.reason == "too_easy" and "predicted fail rate" in rej.detail


async def test_no_model_no_check():
    settings = load_settings(FilterSettings, engine="fake", dedup_enabled=False, neardup_enabled=False)
    assert await build_difficulty_scorer(settings) is None
    stage = FilterStage(None, settings)
    ((pub,),) = await stage.handle([question(1, QUESTIONS[0])])
    fwd = pb.Question.FromString(pub.payload)
    assert not fwd.HasField("predicted_difficulty") and all(v.check != "difficulty" for v in fwd.verdicts)
