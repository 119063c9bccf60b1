"""The peer side of benchmark 3 (``benchmarks/peer.py``): our job as a distilabel pipeline.

Runs in the distilabel virtualenv (``scripts/bench_peer_venv.sh``), never in .venv::

    .bench-venvs/distilabel/bin/python benchmarks/peer_distilabel_job.py --model DIR --questions 16

One distilabel ``Pipeline`` on distilabel's offline ``vLLM`` LLM class (``vllm.LLM.generate``
on whole batches), the same model directory, prompts and sampling parameters as
``scalequest run``:

1. ``LoadDataFromDicts`` -> question generation, N rows: ``TextGeneration`` with our instructed
   prompt (``--mode instructed``, the ``scalequest run`` default), or a one-line ``Task`` that
   sends the chat template's text up to the user's words (``--mode scratch``, what our
   questiongen sends: ``libs.engines.templates.scratch_prefix``);
2. a step that drops truncated (hit the token limit) and empty questions, as our questiongen
   does, and renders the solver's chat (``services.solver.stage.solve_messages``);
3. ``ChatGeneration`` with ``num_generations`` candidates per question (vLLM ``n``);
4. a step that extracts the last ``\\boxed{}`` answer of each candidate, groups equivalent
   answers and selects with our ``majority_then_reward`` rule, the reward being answer
   agreement only, no judge on either side (``benchmarks.peer.choose_solution``, on
   ``libs.answers``); a question is accepted when one candidate has an answer, as in our
   solver + reward stages.

Prompts, stop markers, answer extraction and selection are imported from this repository (the
venv reaches .venv's packages through a .pth file), so both sides run the same text through
the same rules; only the orchestration differs. Engine options mirror ours on CPU
(``libs/engines/vllm_engine.py``, ``libs/engines/factory.py``): max_model_len 2048, eager mode,
no chunked prefill, the same KV-cache size.

vllm 0.32 dropped ``SamplingParams(logits_processors=...)``, which distilabel 1.5.3 always
passes (an empty list when unused); ``_compat_sampling_params`` drops that empty argument and
nothing else. Its unload deletes a vLLM v0 attribute that v1 engines lack; ``TimedvLLM`` shuts
the engine down through vLLM v1's engine-core client instead. The LLMs run with
``disable_cuda_device_placement`` (no GPU to assign).

Prints one JSON document on the last line of stdout: questions generated/kept, accepted pairs,
drops by reason, generated tokens, and the times (``benchmarks.peer.peer_times``):
``load_seconds`` (vLLM engines loading), ``run_seconds`` (first ``generate`` to the end, engine
loading taken out), ``startup_seconds`` and ``pipeline_seconds`` (``Pipeline.run`` as a whole).
"""

# No `from __future__ import annotations`: distilabel reads the `StepInput` hints at run time.
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from distilabel.models import vLLM
from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts, StepInput, step
from distilabel.steps.tasks import ChatGeneration, Task, TextGeneration

from benchmarks.peer import choose_solution, peer_times
from services.questiongen.stage import INSTRUCTED_PROMPT, clean_question
from services.solver.stage import solve_messages

#: Set in the parent before the pipeline starts; the step processes inherit them (fork).
JOB: dict[str, Any] = {}


def _compat_sampling_params() -> None:
    """Let distilabel 1.5.3 build vllm>=0.11 SamplingParams (no ``logits_processors`` field).

    ``vllm.SamplingParams`` becomes a stand-in class whose call drops an empty
    ``logits_processors`` and returns a real ``SamplingParams``; isinstance checks and class
    attributes go to the real class. vLLM's own modules are imported first, so they keep the
    real class."""
    import vllm
    import vllm.entrypoints.llm

    original = vllm.SamplingParams
    if getattr(original, "_peer_compat", False):
        return

    class _Meta(type):
        def __call__(cls, *args: Any, logits_processors: Any = None, **kwargs: Any) -> Any:
            if logits_processors:
                raise NotImplementedError("this vLLM has no per-request logits processors")
            return original(*args, **kwargs)

        def __instancecheck__(cls, obj: Any) -> bool:
            return isinstance(obj, original)

        def __subclasscheck__(cls, sub: type) -> bool:
            return issubclass(sub, original)

        def __getattr__(cls, name: str) -> Any:
            return getattr(original, name)

    class SamplingParams(metaclass=_Meta):
        _peer_compat = True

    vllm.SamplingParams = SamplingParams  # type: ignore[misc]


class TimedvLLM(vLLM):
    """distilabel's vLLM, recording when it loads and when its ``vllm.LLM.generate`` calls run
    (one JSON line per event in ``events_path``; step processes append, the parent reads them
    after the run). Nothing else changes."""

    events_path: str = ""

    def _event(self, kind: str, start: float, end: float, **extra: Any) -> None:
        if self.events_path:
            with open(self.events_path, "a") as f:
                f.write(json.dumps({"kind": kind, "start": start, "end": end, "pid": os.getpid(), **extra}) + "\n")

    def load(self) -> None:
        _compat_sampling_params()
        t0 = time.time()
        super().load()
        self._event("load", t0, time.time())
        engine_generate = self._model.generate

        def timed_generate(*args: Any, **kwargs: Any) -> Any:
            g0 = time.time()
            outputs = engine_generate(*args, **kwargs)
            sampling = kwargs.get("sampling_params")
            tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
            self._event("generate", g0, time.time(), prompts=len(outputs), n=getattr(sampling, "n", 1), tokens=tokens)
            return outputs

        self._model.generate = timed_generate

    def _cleanup_vllm_model(self) -> None:
        """distilabel 1.5.3 deletes ``llm_engine.model_executor`` (vLLM v0); v1 engines have none
        and stop through their engine-core client instead."""
        if self._model is None:
            return
        core = getattr(self._model.llm_engine, "engine_core", None)
        if core is not None:
            core.shutdown()
        del self._model
        import gc

        gc.collect()


class RenderedPromptQuestion(Task):
    """From-scratch question sampling: sends ``prompt`` (already rendered text: the chat
    template up to the user's words) to the LLM as is, for every input row."""

    prompt: str

    @property
    def inputs(self) -> list[str]:
        return ["instruction"]

    @property
    def outputs(self) -> list[str]:
        return ["generation", "model_name"]

    def format_input(self, input: dict[str, Any]) -> str:  # type: ignore[override]
        return self.prompt

    def format_output(self, output: str | None, input: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"generation": output}


def _step_event(kind: str, **counts: int) -> None:
    with open(JOB["events_path"], "a") as f:
        f.write(json.dumps({"kind": kind, "start": time.time(), "end": time.time(), **counts}) + "\n")


def _output_tokens(row: dict[str, Any], task: str) -> list[int]:
    stats = (row.get("distilabel_metadata") or {}).get(f"statistics_{task}") or {}
    toks = stats.get("output_tokens", [])
    return list(toks) if isinstance(toks, list) else [toks]


@step(inputs=["generation"], outputs=["question", "messages", "question_tokens"])
def keep_questions(inputs: StepInput):
    """Drop truncated and empty samples (our questiongen: gen_truncated, gen_empty); render the
    solver's chat for the rest."""
    kept, truncated, empty = [], 0, 0
    for row in inputs:
        toks = _output_tokens(row, "generate_questions")
        n_tokens = toks[0] if toks else 0
        text = clean_question(row.get("generation") or "")
        if n_tokens >= JOB["question_max_tokens"]:
            truncated += 1
            continue
        if not text:
            empty += 1
            continue
        kept.append({**row, "question": text, "question_tokens": n_tokens,
                     "messages": solve_messages(text, JOB["solver_prompt"])})  # fmt: skip
    _step_event("keep", rows=len(inputs), kept=len(kept), gen_truncated=truncated, gen_empty=empty)
    yield kept


@step(inputs=["question", "generation"], outputs=["answers", "selected", "solution", "answer", "agreement"])
def score_and_select(inputs: StepInput):
    """Last ``\\boxed{}`` per candidate, equivalence classes, majority then reward (= agreement);
    questions without any answer are dropped (our no_answer)."""
    kept, no_answer = [], 0
    for row in inputs:
        cands = row.get("generation") or []
        chosen = choose_solution([cands] if isinstance(cands, str) else cands)
        if chosen is None:
            no_answer += 1
            continue
        kept.append({**row, **chosen})
    _step_event("select", rows=len(inputs), accepted=len(kept), no_answer=no_answer)
    yield kept


def stop_markers(model: str) -> tuple[list[str], list[int]]:
    """Our end-of-turn stops, split like our engine does: special tokens stop by id (they
    never appear in detokenized text), the rest by string."""
    from transformers import AutoTokenizer

    from libs.engines import templates

    tok = AutoTokenizer.from_pretrained(model)
    ids, text = [], []
    for s in templates.end_of_turn_stops(tok):
        tid = tok.convert_tokens_to_ids(s) if s in templates._special_tokens(tok) else None
        if isinstance(tid, int) and tid >= 0:
            ids.append(tid)
        else:
            text.append(s)
    return text, ids


def scratch_prompt(model: str) -> str:
    from transformers import AutoTokenizer

    from libs.engines import templates

    return templates.scratch_prefix(AutoTokenizer.from_pretrained(model))


def engine_kwargs(max_model_len: int) -> dict[str, Any]:
    """The engine options our VLLMEngine uses on CPU."""
    kw: dict[str, Any] = {"max_model_len": max_model_len, "enforce_eager": True, "disable_log_stats": True,
                          "enable_chunked_prefill": False}  # fmt: skip
    if not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        kw["kv_cache_memory_bytes"] = 1 << 30  # our DEFAULT_CPU_KV_CACHE_GIB
    return kw


def build_pipeline(args: argparse.Namespace, events_path: str, cache_dir: str) -> Pipeline:
    stop_text, stop_ids = stop_markers(args.model)
    stops = {"stop": stop_text or None, "stop_token_ids": stop_ids or None}

    def llm(generation_kwargs: dict[str, Any]) -> TimedvLLM:
        # No CUDA here: distilabel would otherwise ask pynvml which GPU each LLM gets.
        return TimedvLLM(model=args.model, seed=args.seed, events_path=events_path, generation_kwargs=generation_kwargs,
                         disable_cuda_device_placement=True,
                         extra_kwargs=engine_kwargs(args.max_model_len))  # fmt: skip

    question_kwargs = {"temperature": args.question_temperature, "top_p": args.question_top_p,
                       "max_new_tokens": args.question_max_tokens, **stops}  # fmt: skip
    solution_kwargs = {"temperature": args.solution_temperature, "top_p": args.solution_top_p,
                       "max_new_tokens": args.solution_max_tokens, **stops}  # fmt: skip
    with Pipeline(name="scalequest-peer", cache_dir=cache_dir) as pipeline:
        load = LoadDataFromDicts(name="tasks", data=[{"instruction": INSTRUCTED_PROMPT}] * args.questions,
                                 batch_size=args.batch_size)  # fmt: skip
        if args.mode == "instructed":
            gen = TextGeneration(name="generate_questions", llm=llm(question_kwargs), input_batch_size=args.batch_size)
        else:
            gen = RenderedPromptQuestion(name="generate_questions", llm=llm(question_kwargs), prompt=scratch_prompt(args.model),
                                         input_batch_size=args.batch_size)  # fmt: skip
        keep = keep_questions(name="keep_questions", input_batch_size=args.batch_size)
        solve = ChatGeneration(name="solve", llm=llm(solution_kwargs), num_generations=args.n_candidates,
                               group_generations=True, input_batch_size=args.batch_size)  # fmt: skip
        choose = score_and_select(name="score_and_select", input_batch_size=args.batch_size)
        load >> gen >> keep >> solve >> choose
    return pipeline


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model directory (vLLM loads it; nothing is downloaded)")
    p.add_argument("--questions", type=int, default=16, help="question-generation rows (N)")
    p.add_argument("--n-candidates", type=int, default=4)
    p.add_argument("--mode", choices=["instructed", "scratch"], default="instructed")
    p.add_argument("--solver-prompt", choices=["zero_shot", "one_shot"], default="one_shot")
    p.add_argument("--question-temperature", type=float, default=1.0)
    p.add_argument("--question-top-p", type=float, default=0.99)
    p.add_argument("--question-max-tokens", type=int, default=256)
    p.add_argument("--solution-temperature", type=float, default=0.7)
    p.add_argument("--solution-top-p", type=float, default=0.95)
    p.add_argument("--solution-max-tokens", type=int, default=512)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=32, help="distilabel batch_size / input_batch_size of every step")
    p.add_argument("--load-groups", choices=["together", "sequential"], default="together",
                   help="together: both vLLM steps load at start and run concurrently (distilabel's default); "
                        "sequential: load_groups='sequential_step_execution', one step (and engine) at a time")
    p.add_argument("--seed", type=int, default=0, help="engine seed")
    p.add_argument("--rows-out", type=Path, default=None, help="write the accepted rows as JSONL here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sq-peer-distilabel-") as work:
        events_path = os.path.join(work, "events.jsonl")
        JOB.update(question_max_tokens=args.question_max_tokens, solver_prompt=args.solver_prompt, events_path=events_path)
        pipeline = build_pipeline(args, events_path, os.path.join(work, "cache"))
        t_start = time.time()
        distiset = pipeline.run(
            use_cache=False,
            load_groups="sequential_step_execution" if args.load_groups == "sequential" else None,
        )
        t_end = time.time()
        events = [json.loads(line) for line in Path(events_path).read_text().splitlines()] if os.path.exists(events_path) else []
    rows = list(distiset["default"]["train"]) if "default" in distiset else []
    gens = [e for e in events if e["kind"] == "generate"]

    def total(kind: str, key: str) -> int:
        return sum(e.get(key, 0) for e in events if e["kind"] == kind)

    result: dict[str, Any] = {
        "framework": "distilabel",
        "distilabel_version": __import__("distilabel").__version__,
        "vllm_version": __import__("vllm").__version__,
        "mode": args.mode,
        "batch_size": args.batch_size,
        "load_groups": args.load_groups,
        "questions_generated": args.questions,
        "questions_kept": total("keep", "kept"),
        "accepted": len(rows),
        "rejected": {
            "gen_truncated": total("keep", "gen_truncated"),
            "gen_empty": total("keep", "gen_empty"),
            "no_answer": total("select", "no_answer"),
        },
        "generated_tokens": sum(e.get("tokens", 0) for e in gens),
        "question_tokens": sum(e.get("tokens", 0) for e in gens if e.get("n", 1) == 1 and args.n_candidates != 1),
        "generate_calls": len(gens),
        "engines_loaded": sum(1 for e in events if e["kind"] == "load"),
        **peer_times(events, t_start, t_end),
    }
    if args.rows_out:
        args.rows_out.parent.mkdir(parents=True, exist_ok=True)
        with args.rows_out.open("w") as f:
            for r in rows:
                f.write(json.dumps({k: r.get(k) for k in ("question", "solution", "answer", "answers", "agreement")}) + "\n")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
