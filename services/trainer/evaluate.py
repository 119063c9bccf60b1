"""Zero-shot greedy pass@1 on math benchmarks, with one answer checker (METHOD §6).

Each question is asked once with the chat template and the prompt SFT trains on (the solver's
zero-shot instruction: reason step by step, final answer in ``\\boxed{}``), sampled greedily
(temperature 0). The answer is the last balanced ``\\boxed{}`` of the output
(:func:`libs.answers.extract_answer`); it counts as correct when math-verify finds it
equivalent to the gold answer (:func:`libs.answers.equivalent`). Gold answers come from the
benchmark files in their own shapes (GSM8K ``#### N``, MATH-style ``\\boxed{}`` solutions, AIME /
AMC / College Math ``answer``, OlympiadBench ``final_answer``; :mod:`libs.benchmarks`). The
same checker for every benchmark and model keeps numbers comparable (toolkits differ by 4-10
points, METHOD §6).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from libs.answers import equivalent, extract_answer
from libs.benchmarks import Problem, load_problems
from libs.engines.base import Engine, SamplingSpec
from libs.errors import ConfigError
from services.trainer.data import prompt_messages


@dataclass
class EvalSpec:
    model: str = "default"
    benches: list[str] = field(default_factory=list)  # "name=path" or "path"
    limit: int | None = None
    max_tokens: int = 2048
    max_model_len: int = 4096
    prompt_style: str = "solver"
    answer_fallback: bool = False
    concurrency: int = 64
    engine: str = "vllm"
    out: str = ""


@dataclass
class BenchResult:
    name: str
    n: int
    correct: int
    answered: int
    truncated: int
    mean_tokens: float
    seconds: float
    samples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    def to_dict(self, with_samples: bool = False) -> dict[str, Any]:
        d = asdict(self)
        d["pass@1"] = self.accuracy
        d["answered_share"] = self.answered / self.n if self.n else 0.0
        if not with_samples:
            d.pop("samples")
        return d


def parse_bench(arg: str) -> tuple[str, str]:
    """``name=path`` -> (name, path); a bare path is named after its directory (``gsm8k/test.jsonl``
    -> ``gsm8k``)."""
    if "=" in arg and not Path(arg).exists() and not arg.startswith("s3://"):
        name, path = arg.split("=", 1)
        if not name or not path:
            raise ConfigError(f"--bench {arg!r}: expected NAME=PATH or PATH")
        return name, path
    p = Path(arg.rstrip("/").rsplit("/", 1)[0] + "/x") if arg.startswith("s3://") else Path(arg)
    return (p.parent.name or p.stem), arg


def load_benches(specs: list[str], limit: int | None) -> dict[str, list[Problem]]:
    if not specs:
        raise ConfigError("no benchmark: give --bench NAME=PATH (repeatable)")
    out: dict[str, list[Problem]] = {}
    for s in specs:
        name, path = parse_bench(s)
        if name in out:
            raise ConfigError(f"benchmark {name!r} given twice; name them with NAME=PATH")
        try:
            if path.startswith("s3://"):
                out[name] = _load_stored(path, limit)
            else:
                out[name] = load_problems(path, limit=limit)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return out


def _load_stored(uri: str, limit: int | None) -> list[Problem]:
    """A benchmark file in the object store (a Job's pod has no local copy)."""
    import tempfile

    from libs.storage.objectstore import open_store

    parent, name = uri.rstrip("/").rsplit("/", 1)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / Path(parent).name / name  # keep the directory name: it names the source
        local.parent.mkdir(parents=True)
        open_store(parent).get_file(name, local)
        return load_problems(local, limit=limit)


async def evaluate(engine: Engine, benches: dict[str, list[Problem]], *, max_tokens: int = 2048,
                   prompt_style: str = "solver", answer_fallback: bool = False, concurrency: int = 64,
                   keep_samples: int = 3) -> list[BenchResult]:
    """pass@1 per benchmark; all questions of all benchmarks share one batch (the engine batches)."""
    sem = asyncio.Semaphore(max(1, concurrency))
    stops = tuple(engine.stop_strings())
    params = SamplingSpec(temperature=0.0, top_p=1.0, max_tokens=max_tokens, seed=0, stop=stops)

    async def one(p: Problem) -> dict[str, Any]:
        prompt = engine.apply_chat_template(prompt_messages(p.question, prompt_style))
        async with sem:
            c = (await engine.generate(prompt, params)).completions[0]
        pred, method = extract_answer(c.text, fallback=answer_fallback)
        return {"question": p.question, "gold": p.gold, "pred": pred, "method": method,
                "correct": equivalent(pred, p.gold) if pred else False,
                "finish_reason": c.finish_reason, "tokens": c.num_tokens, "output": c.text}

    results: list[BenchResult] = []
    t0 = time.monotonic()
    outs = await asyncio.gather(*(asyncio.gather(*(one(p) for p in probs)) for probs in benches.values()))
    wall = time.monotonic() - t0
    for (name, probs), rows in zip(benches.items(), outs):
        n = len(rows)
        results.append(BenchResult(
            name=name,
            n=n,
            correct=sum(r["correct"] for r in rows),
            answered=sum(1 for r in rows if r["pred"]),
            truncated=sum(1 for r in rows if r["finish_reason"] == "length"),
            mean_tokens=sum(r["tokens"] for r in rows) / n if n else 0.0,
            seconds=wall,
            samples=rows[:keep_samples],
        ))
    return results


def results_table(results: list[BenchResult], model: str):
    from rich.table import Table

    t = Table(title=f"zero-shot greedy pass@1 - {model}")
    for col in ("benchmark", "n", "pass@1", "correct", "answered", "truncated", "mean tokens"):
        t.add_column(col, justify="left" if col == "benchmark" else "right")
    for r in results:
        t.add_row(r.name, str(r.n), f"{100 * r.accuracy:.1f}", str(r.correct), f"{100 * r.answered / max(r.n, 1):.0f}%",
                  f"{100 * r.truncated / max(r.n, 1):.0f}%", f"{r.mean_tokens:.0f}")
    if len(results) > 1:
        avg = sum(r.accuracy for r in results) / len(results)
        t.add_row("average", str(sum(r.n for r in results)), f"{100 * avg:.1f}", "", "", "", "")
    return t


def report_json(results: list[BenchResult], spec: EvalSpec, model_name: str) -> dict[str, Any]:
    return {
        "model": model_name,
        "spec": asdict(spec),
        "results": [r.to_dict(with_samples=True) for r in results],
        "average_pass@1": sum(r.accuracy for r in results) / len(results) if results else 0.0,
    }


async def run_eval(spec: EvalSpec, engine: Engine | None = None) -> tuple[list[BenchResult], str]:
    """Load the benchmarks and the model's engine, evaluate; returns (results, model name)."""
    benches = load_benches(spec.benches, spec.limit)
    close = None
    if engine is None:
        if spec.engine != "vllm":
            raise ConfigError("only the vllm engine evaluates a model (fake engines are for tests)")
        from libs.engines.factory import _has_cuda
        from libs.engines.registry import EngineSpec, close_all, get_engine
        from libs.models.resolve import resolve_model

        model_dir = await asyncio.to_thread(resolve_model, spec.model)
        options: tuple = (("max_model_len", spec.max_model_len),)
        if not _has_cuda():
            options += (("enable_chunked_prefill", False),)  # see libs/engines/factory.py
        engine = await get_engine(EngineSpec(kind="vllm", model=model_dir, options=options))
        close = close_all
    if spec.max_tokens >= getattr(engine, "max_model_len", 1 << 30):
        raise ConfigError(f"--max-tokens {spec.max_tokens} leaves no room for the prompt in --max-model-len")
    try:
        results = await evaluate(engine, benches, max_tokens=spec.max_tokens, prompt_style=spec.prompt_style,
                                 answer_fallback=spec.answer_fallback, concurrency=spec.concurrency)
    finally:
        if close is not None:
            await close()
    if spec.out:
        Path(spec.out).write_text(json.dumps(report_json(results, spec, engine.model_name), indent=1) + "\n")
    return results, engine.model_name
