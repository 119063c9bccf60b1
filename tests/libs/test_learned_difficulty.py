"""Learned difficulty scorer (libs/difficulty.py): clipping and settings (fake engine), training a
regression head on a tiny causal LM built here (transformers), and the trained head served by
vLLM's pooling runner (marked `model`)."""

from __future__ import annotations

import math

import pytest

from libs.difficulty import (
    DifficultyModelSettings,
    DifficultyScorer,
    build_difficulty_scorer,
    train_difficulty_head,
)
from libs.engines.pooling import FakeScoringEngine, TransformersScoringEngine
from libs.engines.registry import close_all
from libs.settings import CommonSettings, load_settings
from tests.fixtures.tiny_models import build_tiny_causal_lm, one_torch_thread

EASY = ["What is 1 + 1?", "What is 2 + 3?", "What is 4 + 4?", "What is 5 + 2?"]
HARD = [
    "Find all integer solutions of x^3 + y^3 = z^3 with xyz != 0 and prove there are none.",
    "Prove that the number of partitions of n into distinct parts equals the number into odd parts.",
    "Determine every function f: R -> R with f(x + f(y)) = f(x) + y for all real x, y.",
    "How many lattice paths from (0,0) to (10,10) never rise above the diagonal and touch it five times?",
]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with one_torch_thread():
        yield


async def test_scorer_clips_to_unit_interval_and_skips_overlong():
    values = {"a": -0.5, "b": 0.25, "c": 1.7}
    engine = FakeScoringEngine(lambda text: values.get(text, 0.5), max_model_len=3)
    await engine.start()
    scorer = DifficultyScorer(engine)
    assert await scorer.predict(["a", "b", "c", "one two three four"]) == [0.0, 0.25, 1.0, None]
    assert await scorer.predict_one("b") == 0.25
    assert engine.calls == ["a", "b", "c", "b"]  # bare question text, no template
    assert scorer.model_name == "fake-scorer"


async def test_build_from_settings():
    class FilterLike(CommonSettings, DifficultyModelSettings):
        pass

    settings = load_settings(FilterLike)
    assert (settings.difficulty_model, settings.difficulty_model_runner) == ("", "vllm")
    assert await build_difficulty_scorer(settings) is None
    assert await build_difficulty_scorer(object()) is None  # settings without the fields: off

    class Custom:  # any object with the field names works, e.g. the filter's settings
        difficulty_model = "scripted"
        difficulty_model_runner = "fake"
        difficulty_model_max_len = 64

    try:
        scorer = await build_difficulty_scorer(Custom())
        assert isinstance(scorer, DifficultyScorer) and scorer.engine.max_model_len == 64
        assert scorer.model_name == "scripted"
    finally:
        await close_all()


def test_settings_from_environment(monkeypatch):
    class FilterLike(CommonSettings, DifficultyModelSettings):
        pass

    monkeypatch.setenv("SQ_DIFFICULTY_MODEL", "/models/difficulty")
    monkeypatch.setenv("SQ_DIFFICULTY_MODEL_RUNNER", "transformers")
    settings = load_settings(FilterLike)
    assert (settings.difficulty_model, settings.difficulty_model_runner) == ("/models/difficulty", "transformers")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-causal"))
    out = tmp_path_factory.mktemp("difficulty-head")
    questions, rates = EASY + HARD, [0.0] * len(EASY) + [1.0] * len(HARD)
    report = train_difficulty_head(base, questions, rates, out, steps=40, batch_size=4, lr=1e-3, head_lr=1e-2)
    return report


def test_train_difficulty_head(trained):
    import json

    assert trained.steps == 40 and len(trained.losses) == 40
    assert all(math.isfinite(x) for x in trained.losses)
    assert sum(trained.losses[-5:]) / 5 < sum(trained.losses[:5]) / 5 / 4  # it learns the split
    config = json.loads((trained.out_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert config["problem_type"] == "regression" and config["id2label"] == {"0": "fail_rate"}
    assert (trained.out_dir / "tokenizer.json").is_file()


async def test_trained_head_predicts_fail_rates(trained):
    engine = TransformersScoringEngine(trained.out_dir, max_model_len=128, dtype="float32")
    await engine.start()
    try:
        preds = await DifficultyScorer(engine).predict(EASY + HARD)
    finally:
        await engine.close()
    assert all(p is not None and 0.0 <= p <= 1.0 for p in preds)
    easy, hard = preds[: len(EASY)], preds[len(EASY) :]
    assert max(easy) < min(hard), preds
    assert sum(easy) / len(easy) < 0.25 and sum(hard) / len(hard) > 0.75


def test_train_rejects_bad_data(tmp_path):
    with pytest.raises(ValueError, match="as many"):
        train_difficulty_head(tmp_path, ["q"], [0.1, 0.2], tmp_path / "out")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        train_difficulty_head(tmp_path, ["q"], [1.5], tmp_path / "out")


@pytest.mark.model
async def test_trained_head_in_vllm_matches_transformers(trained):
    """What the trainer saves loads in vLLM's pooling runner and predicts what transformers does."""
    from libs.engines.pooling import VLLMScoringEngine

    questions = EASY + HARD
    reference = TransformersScoringEngine(trained.out_dir, max_model_len=256, dtype="float32")
    await reference.start()
    try:
        expected = await reference.score(questions)
    finally:
        await reference.close()
    engine = VLLMScoringEngine(trained.out_dir, max_model_len=256, dtype="float32")
    await engine.start()
    try:
        assert engine.task == "classify"
        got = await engine.score(questions)
        preds = await DifficultyScorer(engine).predict(questions)
    finally:
        await engine.close()
    assert got == pytest.approx(expected, abs=1e-3, rel=1e-3)
    assert preds == pytest.approx([min(1.0, max(0.0, x)) for x in expected], abs=1e-3)
