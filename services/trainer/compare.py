"""Compare question generators through the real pipeline (METHOD §3): the same filters, solver
and reward on the default model, only the questiongen model and sampling mode differ.

For each generator, one embedded run admits exactly ``--n`` generation tasks (``max_tasks``)
and reports, over those tasks:

* dropped at generation (truncated / empty samples),
* passing the filters (language, dedup, solvability judge...), with rejections by reason,
* an agreed answer: accepted with at least 2 of the n solver candidates giving the selected
  answer,
* a few accepted questions.

    python -m services.trainer.compare --n 32 \\
        --generator qft=./scalequest-data/models/qft-gsm8k-toy:scratch \\
        --generator untuned=default:scratch --generator untuned-instructed=default:instructed \\
        --md docs/qft_compare.md --json qft_compare.json

A generator is ``LABEL=MODEL[:MODE]`` (MODE scratch or instructed, default scratch); MODEL is a
directory, ``s3://.../models/NAME`` or ``default``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--generator", action="append", required=True, metavar="LABEL=MODEL[:MODE]")
    p.add_argument("--solver-model", default="default", help="model of filter/solver/reward (default: packaged)")
    p.add_argument("--n", type=int, default=32, help="generation tasks per generator")
    p.add_argument("--store", default="./scalequest-compare", help="store for the runs' shards")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--n-candidates", type=int, default=4)
    p.add_argument("--question-max-tokens", type=int, default=256)
    p.add_argument("--solution-max-tokens", type=int, default=384)
    p.add_argument("--judge-max-tokens", type=int, default=128)
    p.add_argument("--max-outstanding", type=int, default=16)
    p.add_argument("--samples", type=int, default=4, help="accepted questions shown per generator")
    p.add_argument("--md", default="", help="write the comparison as Markdown here")
    p.add_argument("--json", default="", help="write all figures as JSON here")
    return p.parse_args(argv)


def parse_generator(arg: str) -> tuple[str, str, str]:
    label, sep, rest = arg.partition("=")
    if not sep or not label or not rest:
        raise SystemExit(f"--generator {arg!r}: expected LABEL=MODEL[:MODE]")
    model, mode = rest, "scratch"
    head, _, tail = rest.rpartition(":")
    if tail in ("scratch", "instructed") and head:
        model, mode = head, tail
    return label, model, mode


async def one_run(args, label: str, model: str, mode: str) -> dict[str, Any]:
    from scalequest.coordinator.v1 import coordinator_pb2 as capi
    from scalequest.coordinator.v1 import coordinator_pb2_grpc as capi_grpc

    from libs.models.resolve import resolve_model
    from libs.storage.objectstore import open_store
    from libs.storage.shards import list_shards, read_shard
    from scalequest_cli.commands import run_config, run_overrides
    from scalequest_cli.embedded import start_pipeline

    gen_model = model if model == "default" else await asyncio.to_thread(resolve_model, model)
    ns = argparse.Namespace(
        engine="vllm", model=args.solver_model, judge_max_tokens=args.judge_max_tokens, answer_fallback=False,
        solver_prompt="one_shot", target=args.n, seed=args.seed, question_max_tokens=args.question_max_tokens,
        solution_max_tokens=args.solution_max_tokens, n_candidates=args.n_candidates, mode=mode,
        selection_rule="majority_then_reward", min_agreement=2, max_outstanding=args.max_outstanding,
        shard_max_records=64, shard_max_seconds=5.0, no_judge=False, difficulty_keep="", run_type="synthesis",
        optimizer_model="", optimizer_max_tokens=512,
    )
    overrides = run_overrides(ns)
    overrides["questiongen"] = {**overrides["questiongen"], "model": gen_model}
    config = run_config(ns, Path(gen_model).name if gen_model != "default" else "SmolLM2-135M-Instruct")
    config.max_tasks = args.n  # exactly n generation tasks, whatever gets accepted
    t0 = time.monotonic()
    async with AsyncExitStack() as stack:
        pipe = await start_pipeline(nats_url=None, store_url=args.store, overrides=overrides, stack=stack)
        from libs.grpc.channel import open_channel

        async with open_channel(f"127.0.0.1:{pipe.port('coordinator')}") as ch:  # TLS when SQ_GRPC_TLS_CA is set
            stub = capi_grpc.CoordinatorServiceStub(ch)
            run_id = (await stub.StartRun(capi.StartRunRequest(config=config, run_id=f"compare-{label}-{int(time.time())}"))).run_id
            last = -1
            async for st in stub.StreamProgress(capi.StreamProgressRequest(run_id=run_id, interval_seconds=2.0)):
                if st.finished != last:
                    last = st.finished
                    print(f"  [{label}] finished {st.finished}/{args.n} accepted {st.accepted}", file=sys.stderr, flush=True)
            await pipe.flush_counters()
            final = (await stub.GetRun(capi.GetRunRequest(run_id=run_id))).status
    wall = time.monotonic() - t0
    store = open_store(args.store)
    rows = [r for k in list_shards(store, run_id) for r in read_shard(store, k)]
    return summarize(label, model, mode, final, rows, args.n_candidates, wall, args.samples)


def summarize(label, model, mode, final, rows, n_candidates, wall, n_samples) -> dict[str, Any]:
    reasons: dict[str, int] = {}
    by_stage: dict[str, int] = {}
    for r in final.rejections:
        reasons[f"{r.stage}/{r.reason}"] = reasons.get(f"{r.stage}/{r.reason}", 0) + r.count
        by_stage[r.stage] = by_stage.get(r.stage, 0) + r.count
    n = max(final.finished, 1)
    generated = final.finished - by_stage.get("questiongen", 0)
    passed = generated - by_stage.get("filter", 0)
    agreed = sum(1 for r in rows if (r.get("agreement") or 0.0) * n_candidates >= 2 - 1e-6)
    return {
        "label": label, "model": model, "mode": mode, "run_id": final.run_id, "tasks": final.finished,
        "questions": generated, "passed_filters": passed, "accepted": final.accepted, "agreed": agreed,
        "share_questions": generated / n, "share_passed_filters": passed / n, "share_accepted": final.accepted / n,
        "share_agreed": agreed / n, "rejections": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "generated_tokens": dict(final.tokens), "wall_seconds": wall,
        "samples": [r["question"] for r in rows[:n_samples]],
    }


def to_markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| generator | mode | tasks | valid samples | pass filters | accepted | agreed answer (>= 2 of n) | wall |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['label']} | {r['mode']} | {r['tasks']} | {100 * r['share_questions']:.0f}% | "
            f"{100 * r['share_passed_filters']:.0f}% | {100 * r['share_accepted']:.0f}% | "
            f"{100 * r['share_agreed']:.0f}% | {r['wall_seconds'] / 60:.1f} min |"
        )
    lines.append("")
    lines.append("Rejections by reason:")
    lines.append("")
    for r in results:
        rej = ", ".join(f"{k} {v}" for k, v in r["rejections"].items()) or "none"
        lines.append(f"- **{r['label']}**: {rej}")
    lines.append("")
    for r in results:
        lines.append(f"Accepted questions, **{r['label']}**:")
        lines.append("")
        for q in r["samples"]:
            lines.append("> " + " ".join(q.split())[:400])
            lines.append("")
    return "\n".join(lines)


async def main(args) -> int:
    results = []
    for g in args.generator:
        label, model, mode = parse_generator(g)
        print(f"[compare] {label}: {model} ({mode}), {args.n} tasks", file=sys.stderr, flush=True)
        results.append(await one_run(args, label, model, mode))
    md = to_markdown(results)
    print(md)
    if args.md:
        Path(args.md).write_text(md + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from libs.logging import setup_logging

    setup_logging(os.environ.get("SQ_LOG_LEVEL", "WARNING"), json=False, service="compare")
    sys.exit(asyncio.run(main(parse_args())))
