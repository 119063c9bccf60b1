"""Solvability-judge prompts per model family, and the order of the filter's checks."""

from __future__ import annotations

import pytest

from libs.engines.fake import FakeEngine
from libs.errors import ConfigError
from libs.settings import load_settings
from services.filter.prompts import detect_family, judge_prompt
from services.filter.settings import FilterSettings
from services.filter.stage import FilterStage


class PlainTemplateEngine(FakeEngine):
    """A fake engine whose chat template is DeepSeek-Math's plain ``User: ... Assistant:`` form."""

    def apply_chat_template(self, messages, add_generation_prompt=True):
        assert all(m["role"] != "system" for m in messages), "DeepSeek prompts carry no system turn"
        text = "<｜begin▁of▁sentence｜>" + "".join(f"User: {m['content']}\n\n" for m in messages)
        return text + ("Assistant:" if add_generation_prompt else "")


class NoTemplateEngine(FakeEngine):
    """A base model without a chat template."""

    def apply_chat_template(self, messages, add_generation_prompt=True):
        raise ValueError("tokenizer has no chat template")


async def started(engine):
    await engine.start()
    return engine


async def test_family_detection_from_template_then_name():
    assert detect_family(await started(FakeEngine(model_name="whatever"))) == "chatml"  # <|im_start|>
    assert detect_family(await started(PlainTemplateEngine(model_name="my-model"))) == "deepseek"
    assert detect_family(await started(NoTemplateEngine(model_name="deepseek-math-7b-rl"))) == "deepseek"
    assert detect_family(await started(NoTemplateEngine(model_name="Qwen2-Math-7B-Instruct"))) == "chatml"
    assert detect_family(await started(NoTemplateEngine(model_name="llama-base"))) == "generic"


async def test_prompts_per_family():
    q = "What is 2+2?"
    chatml = judge_prompt(await started(FakeEngine()), "chatml", q)
    assert "<|im_start|>system\nYou are a careful mathematics teacher" in chatml.text
    assert "Verdict: Yes" in chatml.text and chatml.text.endswith("<|im_start|>assistant\n")
    assert chatml.force_suffix == "\nVerdict:"
    generic = judge_prompt(await started(FakeEngine()), "generic", q)
    assert "careful mathematics teacher" not in generic.text and "Problem:\nWhat is 2+2?" in generic.text
    ds = judge_prompt(await started(PlainTemplateEngine()), "deepseek", q)
    assert "within \\boxed{}" in ds.text and ds.text.endswith("Assistant:") and ds.force_suffix.endswith("\\boxed{")
    plain = judge_prompt(await started(NoTemplateEngine()), "generic", q)
    assert plain.text.startswith("You check math problems") and plain.text.endswith("Reasoning:\n")
    with pytest.raises(ValueError):
        judge_prompt(await started(NoTemplateEngine()), "chatml", q)


async def test_stage_uses_the_configured_or_detected_family():
    eng = await started(PlainTemplateEngine(text="The numbers suffice.\n\\boxed{Yes}"))
    stage = FilterStage(eng, FilterSettings(judge_verdict="strict"))
    assert stage.prompt_family == "deepseek"
    v, _ = await stage.judge_solvable("What is 2+2?")
    assert v.passed and "\\boxed{" in eng.calls[-1][0]
    params = eng.calls[-1][1]
    assert params.temperature == 0.0  # greedy
    # forced verdict after the family's own suffix
    eng = await started(PlainTemplateEngine(text="Hmm.", logprobs={"No": -0.1, "Yes": -3.0}))
    v, _ = await FilterStage(eng, FilterSettings(judge_verdict="force")).judge_solvable("What is 2+2?")
    assert (v.passed, v.reason) == (False, "judge_unsolvable")
    assert eng.calls[-1][0].endswith("Hmm.\nThe final verdict is \\boxed{")
    # an explicit setting wins over detection
    eng = await started(FakeEngine(text="Verdict: No"))
    stage = FilterStage(eng, FilterSettings(judge_prompt_family="generic", judge_verdict="strict"))
    v, _ = await stage.judge_solvable("What is 2+2?")
    assert stage.prompt_family == "generic" and v.reason == "judge_unsolvable"
    # no verdict at all stays its own reason
    eng = await started(FakeEngine(text="The problem mentions apples."))
    v, _ = await FilterStage(eng, FilterSettings(judge_verdict="strict")).judge_solvable("What is 2+2?")
    assert v.reason == "judge_unparseable"


def test_family_setting_validates(monkeypatch):
    monkeypatch.setenv("SQ_JUDGE_PROMPT_FAMILY", "llama")
    with pytest.raises(ConfigError, match="SQ_JUDGE_PROMPT_FAMILY"):
        load_settings(FilterSettings)
    monkeypatch.setenv("SQ_JUDGE_PROMPT_FAMILY", "DeepSeek")
    assert load_settings(FilterSettings).judge_prompt_family == "deepseek"
    monkeypatch.delenv("SQ_JUDGE_PROMPT_FAMILY")
    monkeypatch.setenv("SQ_NEARDUP_THRESHOLD", "1.5")
    with pytest.raises(ConfigError, match="SQ_NEARDUP_THRESHOLD"):
        load_settings(FilterSettings)
    monkeypatch.setenv("SQ_NEARDUP_THRESHOLD", "0.7")
    monkeypatch.setenv("SQ_NEARDUP_NUM_PERM", "64")
    monkeypatch.setenv("SQ_NEARDUP_BANDS", "100")
    with pytest.raises(ConfigError, match="SQ_NEARDUP_BANDS=100 exceeds SQ_NEARDUP_NUM_PERM=64"):
        load_settings(FilterSettings)


async def test_checks_run_cheapest_first_and_stop_at_the_first_failure():
    calls = []

    class Recorder:
        async def claim(self, scope, key, item_id):
            calls.append("exact")
            return True

    class NearRecorder:
        async def claim(self, scope, item_id, text):
            calls.append("near")

        async def release(self, scope, item_id):
            calls.append("release")

    class Decontam:
        def check(self, text):
            calls.append("decontam")

    eng = await started(FakeEngine(text="Verdict: No"))
    stage = FilterStage(eng, FilterSettings(judge_verdict="strict"), Recorder(), neardup=NearRecorder(), decontam=Decontam())
    res = await stage.check("What is the sum of 2 and 3?", "run", "run-1", judge=True)
    assert [v.check for v in res.verdicts] == ["length", "language", "decontam", "dedup", "solvability"]
    assert calls == ["decontam", "exact", "near", "release"]  # judge rejected: near claim released
    calls.clear()
    res = await stage.check("Сколько будет 2 + 2?", "run", "run-2", judge=True)
    assert res.failed.reason == "non_english_script" and calls == []


async def test_normalized_text_travels_on():
    from scalequest.common.v1 import items_pb2 as pb

    eng = await started(FakeEngine(text="Verdict: Yes"))
    for normalize, expected in ((True, r"What is 3 \times 4 - 2?"), (False, "What is 3 × 4 – 2?")):
        # handle() owns its items (the worker's freshly decoded messages): a new one per call.
        q = pb.Question(run_id="r", item_id="r-1", text="What is 3 × 4 – 2?", config=pb.RunConfig(judge_enabled=True))
        stage = FilterStage(eng, FilterSettings(language_normalize=normalize))
        [out] = await stage.handle([q])
        fwd = pb.Question.FromString(out[0].payload)
        assert fwd.text == expected
