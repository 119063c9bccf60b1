"""Scoring engines (libs/engines/pooling.py): the fake and the registry (unit), the transformers
runner on a tiny sequence-classification model built here (unit: loads in about a second), and
vLLM's pooling runner on the same model (marked `model`; one engine load for the module),
compared with transformers, and wired into the reward stage."""

from __future__ import annotations

import asyncio
import math

import pytest
import pytest_asyncio

from libs.engines.pooling import (
    FakeScoringEngine,
    TransformersScoringEngine,
    last_token_outputs,
    render_messages,
    scoring_spec,
    tokenize,
)
from libs.engines.registry import ScoringSpec, close_all, get_scoring_engine
from libs.errors import ConfigError, InvalidArgument, NotReady
from tests.fixtures.tiny_models import build_tiny_scorer, one_torch_thread

TEXTS = [
    "What is 2 + 2? The answer is 4.",
    "What is 2 + 2? The answer is 5.",
    "Compute the sum of the first 10 positive integers.",
    "x",
    # ends with the tokenizer's pad token (<|im_end|>): still scored at that last token
    "<|im_start|>user\nHi<|im_end|>",
]
CHAT = [{"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": "1 + 1 = \\boxed{2}"}]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def tiny_scorer_dir(tmp_path_factory):
    return build_tiny_scorer(tmp_path_factory.mktemp("tiny-scorer"))


# -- fake + registry -------------------------------------------------------------------------------


async def test_fake_scoring_engine():
    engine = FakeScoringEngine(lambda text: len(text), max_model_len=3)
    with pytest.raises(NotReady):
        await engine.score(["a"])
    await engine.start()
    assert await engine.score(["ab", [{"role": "user", "content": "q"}]]) == [2.0, 7.0]
    assert engine.calls == ["ab", "user: q"]
    with pytest.raises(InvalidArgument):
        await engine.score(["a b c d"])
    out = await engine.score(["a b c d", "a"], skip_overlong=True)
    assert math.isnan(out[0]) and out[1] == 1.0
    default = FakeScoringEngine()
    await default.start()
    a, b, a2 = await default.score(["one", "two", "one"])
    assert a == a2 and a != b and -4 <= a < 4


async def test_registry_shares_one_scoring_engine_per_spec():
    spec = ScoringSpec(kind="fake", model="rm")
    try:
        engines = await asyncio.gather(*(get_scoring_engine(spec) for _ in range(5)))
        assert all(e is engines[0] for e in engines) and engines[0].ready
        assert await get_scoring_engine(ScoringSpec(kind="fake", model="other")) is not engines[0]
    finally:
        await close_all()
    assert not engines[0].ready


async def test_scoring_specs_are_validated():
    with pytest.raises(ConfigError, match="runner"):
        ScoringSpec(kind="tgi", model="/m")
    with pytest.raises(ConfigError, match="default"):
        ScoringSpec(kind="vllm", model="default")
    with pytest.raises(ConfigError, match="default"):
        ScoringSpec(kind="transformers", model="")
    spec = scoring_spec("/m", "vllm", max_model_len=512, gpu_memory_utilization=0.3)
    assert spec == ScoringSpec("vllm", "/m", (("max_model_len", 512), ("dtype", "auto"), ("gpu_memory_utilization", 0.3)))
    assert dict(scoring_spec("/m", "transformers", gpu_memory_utilization=0.3).options).keys() == {"max_model_len", "dtype"}
    with pytest.raises(ConfigError, match="bad options"):
        await get_scoring_engine(ScoringSpec(kind="fake", model="x", options=(("no_such_option", 1),)))


# -- transformers runner ---------------------------------------------------------------------------


async def test_transformers_runner_scores(tiny_scorer_dir):
    engine = TransformersScoringEngine(tiny_scorer_dir, max_model_len=64, dtype="float32", batch_size=2)
    with pytest.raises(NotReady):
        await engine.score(["x"])
    await engine.start()
    try:
        scores = await engine.score(TEXTS)
        assert all(math.isfinite(s) for s in scores)
        assert len({round(s, 4) for s in scores}) == len(TEXTS), scores  # inputs are told apart
        assert await engine.score(TEXTS[::-1]) == pytest.approx(scores[::-1], abs=1e-5)  # other batches
        singles = [await engine.score_one(t) for t in TEXTS]
        assert singles == pytest.approx(scores, abs=1e-5)  # padding never changes a score
        # chat messages are rendered with the model's template (no generation prompt)
        rendered = engine.render(CHAT)
        assert rendered.endswith("<|im_start|>assistant\n1 + 1 = \\boxed{2}<|im_end|>\n")
        assert await engine.score_one(CHAT) == pytest.approx(await engine.score_one(rendered), abs=1e-6)
        with pytest.raises(InvalidArgument, match="max_model_len=64"):
            await engine.score(["word " * 100])
        long_and_short = await engine.score(["word " * 100, TEXTS[0]], skip_overlong=True)
        assert math.isnan(long_and_short[0]) and long_and_short[1] == pytest.approx(scores[0], abs=1e-5)
        with pytest.raises(InvalidArgument):
            await engine.score([""])
    finally:
        await engine.close()
    assert not engine.ready
    with pytest.raises(NotReady):
        await engine.score(["x"])


def test_last_token_outputs_read_the_last_real_token(tiny_scorer_dir):
    """The pooled output is the head at the last token, whatever padding or pad-token ids the
    inputs contain (transformers alone would skip a trailing pad-token id)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_scorer_dir), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_scorer_dir))
    ids = [tokenize(tok, t) for t in TEXTS]
    assert ids[-1][-1] == model.config.pad_token_id
    with torch.inference_mode():
        batched = last_token_outputs(model, ids)[:, 0]
        for row, seq in zip(batched, ids):
            hidden = model.model(input_ids=torch.tensor([seq])).last_hidden_state[0, -1]
            assert float(row) == pytest.approx(float(model.score(hidden)[0]), abs=1e-5)
    assert model.config.pad_token_id == tok.pad_token_id  # restored


def test_render_without_chat_template():
    class Plain:
        chat_template = None

    assert render_messages(Plain(), CHAT) == "What is 1 + 1?\n\n1 + 1 = \\boxed{2}"


async def test_transformers_runner_through_the_registry(tiny_scorer_dir):
    spec = scoring_spec(str(tiny_scorer_dir), "transformers", max_model_len=128, dtype="float32")
    try:
        a, b = await asyncio.gather(get_scoring_engine(spec), get_scoring_engine(spec))
        assert a is b and isinstance(a, TransformersScoringEngine) and a.model_name == tiny_scorer_dir.name
    finally:
        await close_all()


# -- vLLM pooling runner (one engine for the module) -----------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vllm_scorer(tiny_scorer_dir):
    from libs.engines.pooling import VLLMScoringEngine

    engine = VLLMScoringEngine(tiny_scorer_dir, served_name="tiny-rm", max_model_len=512, dtype="float32")
    await engine.start()
    yield engine
    await engine.close()


@pytest.mark.model
@pytest.mark.asyncio(loop_scope="module")
async def test_vllm_pooling_scores(vllm_scorer):
    assert vllm_scorer.ready and vllm_scorer.task == "classify" and vllm_scorer.model_name == "tiny-rm"
    scores = await vllm_scorer.score(TEXTS)
    assert all(math.isfinite(s) for s in scores)
    assert len({round(s, 4) for s in scores}) == len(TEXTS), scores
    again = await vllm_scorer.score(TEXTS[::-1])  # other batch, prefix cache warm
    assert again[::-1] == pytest.approx(scores, abs=1e-4)
    # concurrent callers share the engine's batch
    many = await asyncio.gather(*(vllm_scorer.score_one(t) for t in TEXTS * 3))
    assert many == pytest.approx(scores * 3, abs=1e-4)
    assert await vllm_scorer.score_one(CHAT) == pytest.approx(await vllm_scorer.score_one(vllm_scorer.render(CHAT)), abs=1e-5)
    with pytest.raises(InvalidArgument, match="max_model_len=512"):
        await vllm_scorer.score(["word " * 600])
    out = await vllm_scorer.score(["word " * 600, TEXTS[0]], skip_overlong=True)
    assert math.isnan(out[0]) and out[1] == pytest.approx(scores[0], abs=1e-4)


@pytest.mark.model
@pytest.mark.asyncio(loop_scope="module")
async def test_vllm_token_classify_reads_the_last_token(vllm_scorer):
    """The path for reward models that vLLM serves with a per-token value head (InternLM2-Reward
    offers only token_classify): the score is the last token's value. A sequence-classification
    model offers both tasks, and they must agree."""
    expected = await vllm_scorer.score(TEXTS[:3])
    vllm_scorer._task = "token_classify"
    try:
        got = await vllm_scorer.score(TEXTS[:3])
    finally:
        vllm_scorer._task = "classify"
    assert got == pytest.approx(expected, abs=1e-4)


@pytest.mark.model
@pytest.mark.asyncio(loop_scope="module")
async def test_vllm_agrees_with_transformers(vllm_scorer, tiny_scorer_dir):
    inputs = [*TEXTS, CHAT, "A longer input. " * 40]
    reference = TransformersScoringEngine(tiny_scorer_dir, max_model_len=512, dtype="float32")
    await reference.start()
    try:
        expected = await reference.score(inputs)
    finally:
        await reference.close()
    got = await vllm_scorer.score(inputs)
    assert got == pytest.approx(expected, abs=1e-3, rel=1e-3)


@pytest.mark.model
@pytest.mark.asyncio(loop_scope="module")
async def test_vllm_reward_model_in_the_reward_stage(vllm_scorer):
    """The reward model's score lands on every answered candidate and decides top_reward."""
    from scalequest.common.v1 import items_pb2 as pb

    from services.reward.settings import RewardSettings
    from services.reward.stage import RewardStage, _sigmoid

    question = "What is 1 + 1?"
    texts = ["1 + 1 = \\boxed{2}", "It is two: \\boxed{2}", "Clearly \\boxed{3}", "I do not know."]
    cands = [pb.Candidate(text=t, answer=a) for t, a in zip(texts, ["2", "2", "3", ""])]
    stage = RewardStage(None, RewardSettings(judge_enabled=False, agreement_weight=0.0), reward_model=vllm_scorer)
    assert stage.scorer == "rm+agreement"
    scored, sel = await stage.score(question, cands, "top_reward", 0)
    raw = await vllm_scorer.score([[{"role": "user", "content": question}, {"role": "assistant", "content": t}] for t in texts[:3]])
    assert [c.rm_score for c in scored[:3]] == pytest.approx([_sigmoid(r) for r in raw], abs=1e-4)
    assert not scored[3].HasField("rm_score") and scored[3].reward == 0.0
    assert [c.reward for c in scored[:3]] == pytest.approx([c.rm_score for c in scored[:3]])
    assert sel.index == max(range(3), key=lambda i: raw[i])
