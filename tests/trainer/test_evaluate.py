"""`scalequest eval`: zero-shot greedy pass@1 with one checker, on fixture questions in the
benchmark shapes (GSM8K `#### N`, MATH `\\boxed{}` solutions, OlympiadBench `final_answer`),
with a scripted engine (unit) and with the real default model (marked `model`)."""

from __future__ import annotations

import json
import re

import pytest

from libs.engines.fake import FakeEngine
from services.trainer.evaluate import (
    EvalSpec,
    evaluate,
    load_benches,
    parse_bench,
    run_eval,
)
from tests.trainer.conftest import write_jsonl

GSM8K = [
    {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
    {"question": "A box holds 12 pens. How many pens are in 3 boxes?", "answer": "12 * 3 = 36\n#### 36"},
    {"question": "Sara had 1,000 dollars and spent 250. How much is left?", "answer": "#### 750"},
]
MATH = [
    {"problem": "What is $\\frac{1}{2} + \\frac{1}{4}$?", "solution": "The sum is $\\boxed{\\frac{3}{4}}$."},
    {"problem": "Solve $2x = 10$.", "solution": "So $x = \\boxed{5}$."},
]
OLYMPIAD = [{"question": "Find the smallest prime.", "final_answer": "['2']"}]


def scripted(prompt: str, params, index: int) -> str:
    """A 'model' that is right on some questions, wrong on one, unboxed on one."""
    if "apples" in prompt:
        return "3 + 4 = 7. The final answer is \\boxed{7}."
    if "pens" in prompt:
        return "12 * 3 = 35, so \\boxed{35}."  # wrong
    if "dollars" in prompt:
        return "1000 - 250 = 750 dollars are left."  # no box
    if "frac" in prompt:
        return "Add: 0.5 + 0.25 = 0.75, so \\boxed{0.75}."  # equivalent to 3/4
    if "2x" in prompt:
        return "x = \\boxed{5}"
    return "The smallest prime is \\boxed{2}."


@pytest.fixture
def bench_files(tmp_path):
    return {
        "gsm8k": write_jsonl(tmp_path / "gsm8k" / "test.jsonl", GSM8K),
        "math": write_jsonl(tmp_path / "math" / "test.jsonl", MATH),
        "olympiadbench": write_jsonl(tmp_path / "olympiadbench" / "test.jsonl", OLYMPIAD),
    }


def test_parse_bench_names():
    assert parse_bench("gsm8k=/x/y.jsonl") == ("gsm8k", "/x/y.jsonl")
    assert parse_bench("/data/college_math/test.jsonl") == ("college_math", "/data/college_math/test.jsonl")
    assert parse_bench("s3://b/p/amc23/test.jsonl") == ("amc23", "s3://b/p/amc23/test.jsonl")


async def test_pass_at_1_per_benchmark_with_one_checker(bench_files):
    engine = FakeEngine(scripted, model_name="scripted")
    await engine.start()
    benches = load_benches([f"{k}={v}" for k, v in bench_files.items()], limit=None)
    results = {r.name: r for r in await evaluate(engine, benches, max_tokens=64)}
    assert (results["gsm8k"].n, results["gsm8k"].correct, results["gsm8k"].answered) == (3, 1, 2)
    assert results["math"].correct == 2  # 0.75 == \frac{3}{4} through math-verify
    assert results["olympiadbench"].accuracy == 1.0
    # greedy, zero-shot, the solver's instruction with the chat template, stopping at the turn's end
    prompt, params = engine.calls[0]
    assert params.temperature == 0.0 and params.max_tokens == 64 and "<|im_end|>" in params.stop
    assert prompt.count("<|im_start|>user") == 1 and "\\boxed{}" in prompt and prompt.endswith("<|im_start|>assistant\n")
    # the "answer is" fallback is an explicit choice, not the default
    fallback = {r.name: r for r in await evaluate(engine, benches, max_tokens=64, answer_fallback=True)}
    assert fallback["gsm8k"].correct == 1  # "750 dollars are left" is still not "the answer is"


async def test_run_eval_writes_the_report(bench_files, tmp_path):
    engine = FakeEngine(scripted, model_name="scripted")
    await engine.start()
    out = tmp_path / "report.json"
    spec = EvalSpec(benches=[str(bench_files["gsm8k"]), str(bench_files["math"])], limit=2, max_tokens=32, out=str(out))
    results, name = await run_eval(spec, engine=engine)
    assert name == "scripted" and [r.n for r in results] == [2, 2]
    report = json.loads(out.read_text())
    assert report["results"][0]["name"] == "gsm8k" and report["results"][0]["samples"][0]["gold"] == "7"
    assert report["average_pass@1"] == pytest.approx((0.5 + 1.0) / 2)


def test_cli_eval_needs_a_benchmark(capsys):
    from scalequest_cli.main import main

    assert main(["eval", "--model", "default"]) == 1
    assert "--bench" in capsys.readouterr().err


@pytest.mark.model
def test_eval_of_the_default_model(bench_files, capsys):
    """The real path: vLLM engine on the packaged model, greedy, the table and --json."""
    from scalequest_cli.main import main

    rc = main(["eval", "--model", "default", "--bench", f"gsm8k={bench_files['gsm8k']}",
               "--bench", f"math={bench_files['math']}", "--max-tokens", "96", "--max-model-len", "512", "--json"])
    assert rc == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")][-1]
    report = json.loads(line)
    assert [r["name"] for r in report["results"]] == ["gsm8k", "math"]
    for r in report["results"]:
        assert 0.0 <= r["pass@1"] <= 1.0 and r["mean_tokens"] > 0
    assert re.match(r"smollm2", report["model"], re.IGNORECASE)
