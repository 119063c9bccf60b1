"""Reward stage with a reward model (a fake scoring engine; the real vLLM pooling runner is in
tests/libs/test_pooling.py): rm_score on candidates, normalization, weights, its effect on
selection, the records' candidate rows, and the settings that switch it on."""

from __future__ import annotations

import math

import pytest
from scalequest.common.v1 import items_pb2 as pb

from libs.engines.fake import FakeEngine
from libs.engines.pooling import FakeScoringEngine
from libs.errors import ConfigError
from libs.settings import load_settings
from services.coordinator.records import record_row
from services.reward import main as reward_main
from services.reward.settings import RewardSettings
from services.reward.stage import RewardStage, _sigmoid, normalize_rm

QUESTION = "What is 1 + 1?"
# Three say 2, one says 3 (the RM's favourite), one has no answer.
CANDS = [
    ("so \\boxed{2}", "2", 0.0),
    ("thus \\boxed{2}", "2", 1.0),
    ("hence \\boxed{2}", "2", -1.0),
    ("clearly \\boxed{3}", "3", 3.0),
    ("no idea", "", 9.0),
]


def candidates() -> list[pb.Candidate]:
    return [pb.Candidate(text=t, answer=a) for t, a, _ in CANDS]


async def reward_model(**kwargs) -> FakeScoringEngine:
    raw = {t: r for t, _, r in CANDS}
    engine = FakeScoringEngine(lambda text: raw[text.rsplit("assistant: ", 1)[1]], model_name="rm", **kwargs)
    await engine.start()
    return engine


def test_normalize_rm():
    nan = math.nan
    assert normalize_rm([0.0, 2.0, nan], "sigmoid") == pytest.approx([0.5, _sigmoid(2.0), None])
    assert _sigmoid(-800.0) == 0.0 and _sigmoid(800.0) == 1.0  # no overflow
    assert normalize_rm([1.0, 3.0, 2.0, nan], "minmax") == [0.0, 1.0, 0.5, None]
    assert normalize_rm([4.0, 4.0], "minmax") == [0.5, 0.5]
    assert normalize_rm([nan], "minmax") == [None]
    with pytest.raises(ValueError):
        normalize_rm([1.0], "rank")


async def test_rm_scores_answered_candidates_and_drives_top_reward():
    rm = await reward_model()
    settings = RewardSettings(judge_enabled=False)  # weights: rm 1.0, agreement 0.5
    stage = RewardStage(None, settings, reward_model=rm)
    assert stage.scorer == "rm+agreement"
    scored, sel = await stage.score(QUESTION, candidates(), "top_reward", 0)
    # the RM sees (user = question, assistant = solution); never the unanswered candidate
    assert rm.calls == [f"user: {QUESTION}\nassistant: {t}" for t, a, _ in CANDS if a]
    for c, (_, answer, raw) in zip(scored, CANDS):
        if answer:
            assert c.HasField("rm_score") and c.rm_score == pytest.approx(_sigmoid(raw))
            assert c.reward == pytest.approx((1.0 * _sigmoid(raw) + 0.5 * c.agreement) / 1.5)
        else:
            assert not c.HasField("rm_score") and c.reward == 0.0
    assert sel.index == 3  # sigmoid(3) = .95 beats sigmoid(1) = .73 despite 1/5 vs 3/5 agreement...
    assert scored[3].reward == pytest.approx((0.9526 + 0.5 * 0.2) / 1.5, abs=1e-3)

    # ...while without the reward model agreement decides
    _, plain = await RewardStage(None, settings).score(QUESTION, candidates(), "top_reward", 0)
    assert plain.index == 0
    # and majority_then_reward keeps the majority answer, using the RM only inside it
    _, majority = await stage.score(QUESTION, candidates(), "majority_then_reward", 0)
    assert majority.index == 1


async def test_rm_with_judge_and_minmax():
    rm = await reward_model()
    judge = FakeEngine(text="Yes", logprobs={"Yes": -0.1, "No": -2.4})
    await judge.start()
    settings = RewardSettings(reward_model_normalize="minmax", reward_model_weight=0.5, judge_weight=0.25, agreement_weight=0.25)
    stage = RewardStage(judge, settings, reward_model=rm)
    assert stage.scorer == "rm+agreement+judge"
    scored, sel = await stage.score(QUESTION, candidates(), "top_reward", 0)
    assert [c.rm_score for c in scored[:4]] == pytest.approx([0.25, 0.5, 0.0, 1.0])  # (raw + 1) / 4
    j = scored[0].judge_score
    assert j == pytest.approx(0.909, abs=0.01)
    assert scored[1].reward == pytest.approx(0.5 * 0.5 + 0.25 * j + 0.25 * 0.6)
    assert sel.index == 3 and len(judge.calls) == 4


async def test_rm_overlong_candidate_is_left_unscored():
    rm = await reward_model(max_model_len=12)  # the fake counts words
    cands = candidates()
    cands[1].text = "thus " + "very " * 20 + "\\boxed{2}"
    raw = {t: r for t, _, r in CANDS}
    raw[cands[1].text] = 5.0
    rm.fn = lambda text: raw[text.rsplit("assistant: ", 1)[1]]
    scored, _ = await RewardStage(None, RewardSettings(judge_enabled=False), reward_model=rm).score(QUESTION, cands, "top_reward", 0)
    assert not scored[1].HasField("rm_score") and scored[0].HasField("rm_score")
    assert scored[1].reward == pytest.approx(0.5 * 0.6 / 1.5)


async def test_records_keep_rm_scores():
    rm = await reward_model()
    stage = RewardStage(None, RewardSettings(judge_enabled=False), reward_model=rm)
    scored, sel = await stage.score(QUESTION, candidates(), "top_reward", 0)
    solved = pb.SolvedQuestion(question=pb.Question(run_id="r", item_id="r-0", text=QUESTION), candidates=scored)
    row = record_row(pb.FinalRecord(solved=solved, selected=sel.index, scorer=stage.scorer))
    assert row["scorer"] == "rm+agreement"
    assert [c["rm_score"] for c in row["candidates"][:4]] == pytest.approx([_sigmoid(r) for _, _, r in CANDS[:4]])
    assert row["candidates"][4]["rm_score"] is None and row["candidates"][4]["answer"] == ""
    assert [c["answer"] for c in row["candidates"]] == [a for _, a, _ in CANDS]


async def test_reward_model_settings(monkeypatch):
    assert await reward_main.reward_model_from_settings(load_settings(RewardSettings)) is None
    monkeypatch.setenv("SQ_REWARD_MODEL", "/models/rm")
    monkeypatch.setenv("SQ_REWARD_MODEL_RUNNER", "transformers")
    monkeypatch.setenv("SQ_REWARD_MODEL_WEIGHT", "0.75")
    settings = load_settings(RewardSettings)
    assert settings.reward_model_weight == 0.75 and settings.reward_model_normalize == "sigmoid"
    seen = {}

    async def fake_get_scorer(model, runner, **kwargs):
        seen.update(model=model, runner=runner, **kwargs)
        return "engine"

    monkeypatch.setattr(reward_main, "get_scorer", fake_get_scorer)
    assert await reward_main.reward_model_from_settings(settings) == "engine"
    assert seen == {"model": "/models/rm", "runner": "transformers", "max_model_len": 4096, "dtype": "auto",
                    "gpu_memory_utilization": 0.4}
    monkeypatch.setenv("SQ_REWARD_MODEL_RUNNER", "tgi")
    with pytest.raises(ConfigError, match="SQ_REWARD_MODEL_RUNNER"):
        load_settings(RewardSettings)
