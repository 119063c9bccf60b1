"""Pipeline efficiency: generated tokens/s through the whole pipeline ÷ the same engine driven
directly on the same requests (the practical limit). Target: >= 0.9.

(a) pipeline: ``scalequest run``'s embedded pipeline (all five services, a real nats-server,
    gRPC, Parquet shards in a temporary store) on vLLM with the default model, with the engine
    wrapped in ``libs.engines.recording.RecordingEngine`` so every engine call is recorded:
    prompt, sampling parameters (seed and n included), token counts, start and end time.
(b) direct: a fresh engine of the same class and settings (same ``EngineSpec``) in this process
    replays exactly those calls, all submitted at once (``libs.engines.recording.replay``): the
    engine's own scheduler decides what runs, as fast as it can.

Both engines are loaded before their clock starts (load time is reported on its own) and both
start with an empty prefix cache. Pipeline tokens/s is measured two ways:

* busy (the headline): generated tokens ÷ (first engine call start → last engine call end), the
  same span the direct side is timed over (first submission → last completion);
* run: generated tokens ÷ (StartRun → run completed or last engine call ended, whichever is
  later), adding the coordinator's admission latency and the final shard write.

In practice they agree to 0.1%: the first call starts ~20 ms after StartRun, and a run completes
while the calls of items still in flight finish. Either way the pipeline pays for its ramp-up
and drain (a question must exist before it is judged, solved and scored; admission sizes the
work to the target), which the direct side, handed the whole workload at once, does not; so the
ratio grows with the run size (measured here: ~0.9 at target 8, ~1.0 at 12 and 16). A third
ratio, tokens per CPU second of vLLM's worker process, does not depend on other load on the
machine (which takes CPU from one side and not the other); it is the one to trust on a shared
machine. The tables also give the engine's mean sequences in flight on each side, CPU cores per
process, in-flight sequences per tenth of the pipeline's busy window, and calls per stage.

    python -m benchmarks.efficiency                      # target 12, 3 repeats (~17 min on 2 cores)
    python -m benchmarks.efficiency --target 8 --repeats 1 --direct-concurrency 16,32,64 --save-calls /tmp/calls
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/efficiency.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    base_parser,
    median,
    peak_rss_mib,
    spread,
    table,
    write_result,
)
from benchmarks.proctree import cpu_delta, tree_cpu

NAME = "efficiency"
ENGINE_STAGES = ("questiongen", "filter", "solver", "reward")


def stage_of(prompt: str) -> str:
    """Which stage made an engine call, from its prompt (the stages' own prompt texts)."""
    from services.filter.prompts import JUDGE_INSTRUCTION
    from services.questiongen.stage import INSTRUCTED_PROMPT
    from services.reward.stage import JUDGE_PROMPT

    if JUDGE_PROMPT.rsplit("\n", 1)[-1] in prompt:
        return "reward"
    if JUDGE_INSTRUCTION.split("{question}")[0][-60:] in prompt:
        return "filter"
    if INSTRUCTED_PROMPT in prompt or "\\boxed" not in prompt:
        return "questiongen"
    return "solver"


def run_args(args) -> Any:
    """`scalequest run`'s own arguments (its defaults unless given here)."""
    from scalequest_cli.main import build_parser

    argv = ["run", "--target", str(args.target), "--max-outstanding", str(args.max_outstanding), "--seed", str(args.seed)]
    if args.no_judge:
        argv.append("--no-judge")
    return build_parser().parse_args(argv)


def pipeline_overrides(args, rargs) -> dict[str, dict]:
    from scalequest_cli.commands import run_overrides

    overrides = run_overrides(rargs)
    for stage in ENGINE_STAGES:
        if args.stage_batch_size:
            overrides[stage]["batch_size"] = args.stage_batch_size
        if args.stage_concurrency:
            overrides[stage]["worker_concurrency"] = args.stage_concurrency
    return overrides


async def load_engine(overrides: dict[str, dict]):
    """A started engine built exactly as the embedded pipeline builds it (one per process)."""
    from libs.engines.factory import engine_spec
    from libs.engines.registry import get_engine
    from libs.settings import load_settings
    from services.questiongen.settings import QuestionGenSettings

    settings = load_settings(QuestionGenSettings, **overrides["questiongen"])
    spec = engine_spec(settings)
    t0 = time.monotonic()
    engine = await get_engine(spec)
    return engine, time.monotonic() - t0, spec


async def run_pipeline(args, engine) -> dict[str, Any]:
    """(a): one `scalequest run` on `engine` (recorded); returns the recording and run figures."""
    import grpc
    from scalequest.coordinator.v1 import coordinator_pb2 as capi
    from scalequest.coordinator.v1 import coordinator_pb2_grpc as capi_grpc

    from libs.engines.recording import RecordingEngine
    from scalequest_cli.commands import run_config
    from scalequest_cli.embedded import start_pipeline

    rargs = run_args(args)
    rec = RecordingEngine(engine, clock=time.time)  # wall clock: comparable with the run's started_at/ended_at
    with tempfile.TemporaryDirectory(prefix="sq-eff-") as tmp:
        async with AsyncExitStack() as stack:
            t0 = time.monotonic()
            pipe = await start_pipeline(nats_url=None, store_url=str(Path(tmp) / "store"),
                                        overrides=pipeline_overrides(args, rargs), stack=stack, engine=rec)  # fmt: skip
            startup = time.monotonic() - t0
            cpu0 = tree_cpu(os.getpid())
            async with grpc.aio.insecure_channel(f"127.0.0.1:{pipe.port('coordinator')}") as ch:
                stub = capi_grpc.CoordinatorServiceStub(ch)
                sent = time.time()
                resp = await stub.StartRun(capi.StartRunRequest(config=run_config(rargs, engine.model_name)))
                async for st in stub.StreamProgress(capi.StreamProgressRequest(run_id=resp.run_id, interval_seconds=0.2)):
                    pass
                final = (await stub.GetRun(capi.GetRunRequest(run_id=resp.run_id))).status
            nats_cpu = cpu_delta(cpu0, tree_cpu(os.getpid())).get("nats-server", 0.0)  # gone after shutdown
        # The pipeline is shut down: in-flight batches finished, every engine call is recorded.
        cpu = {**cpu_delta(cpu0, tree_cpu(os.getpid())), "nats-server": nats_cpu}
        cpu_window = time.time() - sent
    return {"calls": list(rec.calls), "sent": sent, "status": final, "startup_s": startup, "cpu_s": cpu,
            "cores": {name: secs / cpu_window for name, secs in cpu.items()}}  # fmt: skip


def summarize(calls, window: tuple[float, float]) -> dict[str, Any]:
    from libs.engines.recording import concurrency_profile

    ok = [c for c in calls if not c.error]
    span = max(window[1] - window[0], 1e-9)
    tokens = sum(c.generated_tokens for c in ok)
    prof = concurrency_profile(ok, *window)
    return {
        "calls": len(ok),
        "errors": len(calls) - len(ok),
        "generated_tokens": tokens,
        "prompt_tokens": sum(c.prompt_tokens for c in ok),
        "seconds": span,
        "tok_s": tokens / span,
        "mean_in_flight": prof["mean_in_flight"],
        "max_in_flight": prof["max_in_flight"],
        "idle_share": prof["idle_share"],
    }


def timeline(calls, window: tuple[float, float], bins: int = 10) -> list[float]:
    from libs.engines.recording import concurrency_profile

    ok = [c for c in calls if not c.error]
    step = (window[1] - window[0]) / bins
    return [concurrency_profile(ok, window[0] + i * step, window[0] + (i + 1) * step)["mean_in_flight"] for i in range(bins)]


def save_calls(path: Path, calls, t0: float) -> None:
    """One JSON line per call (times relative to `t0`), for a closer look at a run."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for c in sorted(calls, key=lambda c: c.started):
            f.write(json.dumps({"stage": stage_of(c.prompt), "start": round(c.started - t0, 4), "end": round(c.ended - t0, 4),
                                "n": c.params.n, "max_tokens": c.params.max_tokens, "seed": c.params.seed,
                                "prompt_tokens": c.prompt_tokens, "tokens": list(c.completion_tokens),
                                "finish": list(c.finish_reasons), "error": c.error}) + "\n")  # fmt: skip


def per_stage(calls) -> dict[str, dict[str, Any]]:
    from libs.engines.recording import busy_window

    out = {}
    for stage in ENGINE_STAGES:
        sc = [c for c in calls if not c.error and stage_of(c.prompt) == stage]
        if not sc:
            continue
        first, last = busy_window(sc)
        out[stage] = {
            "calls": len(sc),
            "sequences": sum(c.params.n for c in sc),
            "generated_tokens": sum(c.generated_tokens for c in sc),
            "mean_call_s": sum(c.seconds for c in sc) / len(sc),
            "first_start": first,
            "last_end": last,
        }
    return out


async def one_repeat(args, index: int) -> dict[str, Any]:
    from libs.engines.recording import busy_window, replay
    from libs.engines.registry import close_all

    rargs = run_args(args)
    overrides = pipeline_overrides(args, rargs)

    # (a) the pipeline
    engine, load_a, spec = await load_engine(overrides)
    try:
        a = await run_pipeline(args, engine)
    finally:
        await close_all()
    calls = a["calls"]
    st = a["status"]
    first, last = busy_window(calls)
    run_end = max(st.ended_at or last, last)
    busy = summarize(calls, (first, last))
    whole = summarize(calls, (a["sent"], run_end))
    after_end = sum(c.generated_tokens for c in calls if not c.error and c.ended > (st.ended_at or last))

    # (b) the same calls, straight into a fresh engine of the same spec
    engine, load_b, _ = await load_engine(overrides)
    try:
        cpu0 = tree_cpu(os.getpid())
        t0 = time.time()
        direct_calls = await replay(engine, calls, clock=time.time)
        t1 = time.time()
        direct_cpu = cpu_delta(cpu0, tree_cpu(os.getpid()))
        direct_cores = {name: secs / (t1 - t0) for name, secs in direct_cpu.items()}
        capped = {}
        for cap in args.direct_concurrency:
            c0 = time.time()
            got = await replay(engine, calls, clock=time.time, max_concurrency=cap)
            capped[str(cap)] = summarize(got, (c0, time.time()))
    finally:
        await close_all()
    direct = summarize(direct_calls, (t0, t1))
    if args.save_calls:
        save_calls(args.save_calls / f"repeat{index}_pipeline.jsonl", calls, first)
        save_calls(args.save_calls / f"repeat{index}_direct.jsonl", direct_calls, t0)

    # Same request, same seed: the same tokens unless batch composition changed the numerics.
    by_key: dict[tuple, list[int]] = {}
    for c in calls:
        if not c.error:
            by_key.setdefault((c.prompt, c.params), []).append(c.generated_tokens)
    same = sum(1 for c in direct_calls if c.generated_tokens in by_key.get((c.prompt, c.params), []))

    stages = per_stage(calls)
    for s in stages.values():
        s["first_start"] -= first
        s["last_end"] -= first
    out_cpu_ratio = (busy["generated_tokens"] / max(a["cpu_s"].get("vllm worker", 0.0), 1e-9)) / max(
        direct["generated_tokens"] / max(direct_cpu.get("vllm worker", 0.0), 1e-9), 1e-9)
    out = {
        "repeat": index,
        "engine_spec": {"kind": spec.kind, "model": spec.model, "options": dict(spec.options)},
        "pipeline": {
            "load_s": load_a,
            "startup_s": a["startup_s"],  # services + NATS + gRPC, after the engine was loaded
            "run_state": st.state,
            "accepted": st.accepted,
            "finished": st.finished,
            "admitted": st.admitted,
            "ramp_up_s": first - a["sent"],  # StartRun -> first engine call
            "drain_s": run_end - last,  # last engine call -> run completed (final shard, status)
            "tokens_after_run_end": after_end,
            "busy": busy,
            "run": whole,
            # CPU cores used per process (CPU seconds / wall seconds, StartRun -> run end).
            "cores": a["cores"],
            # Generated tokens per CPU second of vLLM's worker (the process that runs the model):
            # a machine-load-independent view of engine efficiency (a busy machine takes CPU
            # time from the worker, not work from a CPU second it got).
            "tok_per_worker_cpu_s": busy["generated_tokens"] / max(a["cpu_s"].get("vllm worker", 0.0), 1e-9),
            "stages": stages,
            # Mean sequences in flight in each tenth of the busy window (ramp-up, steady, drain).
            "in_flight_by_tenth": timeline(calls, (first, last)),
        },
        "direct": {"load_s": load_b, **direct, "same_token_counts_share": same / max(len(direct_calls), 1),
                   "cores": direct_cores,
                   "tok_per_worker_cpu_s": direct["generated_tokens"] / max(direct_cpu.get("vllm worker", 0.0), 1e-9)},
        # The same replay with at most N calls in flight: the engine's tokens/s against its batch.
        "direct_capped": capped,
        "ratio_busy": busy["tok_s"] / direct["tok_s"] if direct["tok_s"] else float("nan"),
        "ratio_run": whole["tok_s"] / direct["tok_s"] if direct["tok_s"] else float("nan"),
        # Tokens per CPU second of vLLM's worker, pipeline ÷ direct: insensitive to other load on
        # the machine (which takes CPU time from one side and not the other); equals the wall
        # ratio when both workers had the same CPU share.
        "ratio_worker_cpu": out_cpu_ratio,
    }
    return out


def report(reps: list[dict[str, Any]]) -> dict[str, Any]:
    def col(path: str) -> list[float]:
        vals = []
        for r in reps:
            v: Any = r
            for key in path.split("."):
                v = v[key]
            vals.append(v)
        return vals

    rows = [
        ("generated tokens", spread(col("pipeline.busy.generated_tokens")), spread(col("direct.generated_tokens"))),
        ("engine calls", spread(col("pipeline.busy.calls")), spread(col("direct.calls"))),
        ("seconds (busy window / replay)", spread(col("pipeline.busy.seconds")), spread(col("direct.seconds"))),
        ("tok/s over the busy window", spread(col("pipeline.busy.tok_s")), spread(col("direct.tok_s"))),
        ("seconds (whole run)", spread(col("pipeline.run.seconds")), "-"),
        ("tok/s over the whole run", spread(col("pipeline.run.tok_s")), "-"),
        ("mean sequences in flight (busy)", spread(col("pipeline.busy.mean_in_flight")), spread(col("direct.mean_in_flight"))),
        ("peak sequences in flight", spread(col("pipeline.busy.max_in_flight")), spread(col("direct.max_in_flight"))),
        ("engine idle share (busy window)", spread(col("pipeline.busy.idle_share")), spread(col("direct.idle_share"))),
        ("tok per vLLM worker CPU-s", spread(col("pipeline.tok_per_worker_cpu_s")), spread(col("direct.tok_per_worker_cpu_s"))),
        ("engine load s (excluded)", spread(col("pipeline.load_s")), spread(col("direct.load_s"))),
        ("services start-up s (excluded)", spread(col("pipeline.startup_s")), "-"),
        ("StartRun -> first engine call s", spread(col("pipeline.ramp_up_s")), "-"),
        ("last engine call -> run end s", spread(col("pipeline.drain_s")), "-"),
        ("accepted / finished items", f"{median(col('pipeline.accepted')):.0f} / {median(col('pipeline.finished')):.0f}", "-"),
        ("calls with identical token counts", "-", spread(col("direct.same_token_counts_share"))),
    ]
    print(table(("", "(a) pipeline", "(b) direct"), rows, "Pipeline vs the same engine driven directly (median (min-max))"))
    stage_rows = []
    for stage in ENGINE_STAGES:
        got = [r["pipeline"]["stages"][stage] for r in reps if stage in r["pipeline"]["stages"]]
        if got:
            stage_rows.append((stage, median(s["calls"] for s in got), median(s["generated_tokens"] for s in got),
                               median(s["mean_call_s"] for s in got), median(s["first_start"] for s in got),
                               median(s["last_end"] for s in got)))  # fmt: skip
    print(table(("stage", "calls", "gen tokens", "mean call s", "first start s", "last end s"), stage_rows,
                "Pipeline engine calls by stage (median; times from the first engine call)"))  # fmt: skip
    names = sorted({n for r in reps for side in (r["pipeline"]["cores"], r["direct"]["cores"]) for n in side})
    core_rows = [(n, median(r["pipeline"]["cores"].get(n, 0.0) for r in reps), median(r["direct"]["cores"].get(n, 0.0) for r in reps))
                 for n in names]  # fmt: skip
    print(table(("process", "(a) pipeline", "(b) direct"), core_rows, "CPU cores used (CPU s / wall s, median)"))
    tenths = [median(r["pipeline"]["in_flight_by_tenth"][i] for r in reps) for i in range(10)]
    print(table([f"{10 * i}-{10 * i + 10}%" for i in range(10)], [tenths],
                "Pipeline: mean sequences in flight per tenth of the busy window (median)"))  # fmt: skip
    caps = sorted({int(k) for r in reps for k in r["direct_capped"]})
    if caps:
        cap_rows = [(str(c), median(r["direct_capped"][str(c)]["tok_s"] for r in reps),
                     median(r["direct_capped"][str(c)]["mean_in_flight"] for r in reps)) for c in caps]  # fmt: skip
        cap_rows.append(("all at once", median(col("direct.tok_s")), median(col("direct.mean_in_flight"))))
        print(table(("calls in flight at most", "direct tok/s", "mean sequences in flight"), cap_rows,
                    "The same replay with bounded concurrency (what the engine gives per batch size)"))  # fmt: skip
    ratio_busy, ratio_run, ratio_cpu = col("ratio_busy"), col("ratio_run"), col("ratio_worker_cpu")
    print(table(("ratio (a)/(b)", "median", "min", "max"),
                [("tok/s, busy window (headline)", median(ratio_busy), min(ratio_busy), max(ratio_busy)),
                 ("tok/s, whole run", median(ratio_run), min(ratio_run), max(ratio_run)),
                 ("tok per worker CPU-s (load check)", median(ratio_cpu), min(ratio_cpu), max(ratio_cpu))],
                "Efficiency (target >= 0.9)"))  # fmt: skip
    return {
        "ratio_busy_median": median(ratio_busy),
        "ratio_run_median": median(ratio_run),
        "ratio_worker_cpu_median": median(ratio_cpu),
        "headline": "ratio_busy_median",
        "pipeline_tok_s_busy_median": median(col("pipeline.busy.tok_s")),
        "pipeline_tok_s_run_median": median(col("pipeline.run.tok_s")),
        "direct_tok_s_median": median(col("direct.tok_s")),
        "peak_rss_mib_benchmark_process": peak_rss_mib(),
        "repeats": reps,
    }


async def amain(args) -> int:
    reps = []
    for i in range(args.repeats):
        print(f"repeat {i + 1}/{args.repeats}: pipeline (target {args.target}) then direct replay ...", flush=True)
        rep = await one_repeat(args, i)
        print(f"  pipeline {rep['pipeline']['busy']['tok_s']:.1f} tok/s busy, {rep['pipeline']['run']['tok_s']:.1f} tok/s run; "
              f"direct {rep['direct']['tok_s']:.1f} tok/s; ratio {rep['ratio_busy']:.3f} busy, {rep['ratio_run']:.3f} run",
              flush=True)  # fmt: skip
        reps.append(rep)
    results = report(reps)
    write_result(args.out, NAME, args, results)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = base_parser(NAME, __doc__)
    p.add_argument("--target", type=int, default=12, help="accepted pairs per pipeline run")
    p.add_argument("--max-outstanding", type=int, default=32, help="admission bound (scalequest run's default)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--no-judge", action="store_true", help="skip the solvability judge")
    p.add_argument("--stage-batch-size", type=int, default=0, help="SQ_BATCH_SIZE of the engine stages (0 = default)")
    p.add_argument("--stage-concurrency", type=int, default=0,
                   help="SQ_WORKER_CONCURRENCY of the engine stages (0 = default)")  # fmt: skip
    p.add_argument("--direct-concurrency", type=lambda v: [int(x) for x in v.split(",") if x], default=[],
                   help="also replay with at most N calls in flight, for each N of a comma list (e.g. 16,32,64)")
    p.add_argument("--save-calls", type=Path, default=None, help="write every engine call of both sides as JSONL here")
    args = p.parse_args(argv)
    logging.basicConfig(level=os.environ.get("SQ_LOG_LEVEL", "WARNING").upper())
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
