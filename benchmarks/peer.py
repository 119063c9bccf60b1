"""Peer comparison: the same job through distilabel's vLLM integration and through our pipeline,
on the same machine and model. Reports accepted pairs per second, ours ÷ distilabel.

The job: N questions generated with the question sampler (``scalequest run``'s defaults:
instructed prompt, T=1.0, top_p=0.99, 256 tokens), ``--n-candidates`` solutions each (one-shot
solver prompt, T=0.7, top_p=0.95, 512 tokens), answers scored by agreement (last ``\\boxed{}``,
math-verify equivalence), one solution selected per question (majority, then reward). A
question-solution pair is accepted when a candidate has a final answer; truncated or empty
questions are dropped first. Both sides are fresh subprocesses, one after the other, in
alternating order across rounds:

(a) ours: ``scalequest run``'s embedded pipeline (scalequest_cli.embedded: nats-server, object
    store, the five services over gRPC and JetStream, one vLLM engine) with the run's
    ``max_tasks`` = N, so the coordinator admits exactly N generation tasks and the run ends
    ("exhausted") when all N are accounted for. The solvability judge (filter) and the
    generative judge (reward) are off, since the peer has no judge; with ``--filters job`` (default)
    exact and near-duplicate removal are off too, so both sides do the same work (length and
    language checks stay: they cost microseconds and rarely fire); ``--filters all`` keeps every
    default filter of ours.
(b) distilabel: ``benchmarks/peer_distilabel_job.py`` in its own virtualenv
    (``scripts/bench_peer_venv.sh``, run first if needed): LoadDataFromDicts → TextGeneration →
    a keep step → ChatGeneration (num_generations = n, i.e. vLLM ``n``) → a score/select step, on
    distilabel's offline ``vLLM`` class. Every step gets ``batch_size``/``input_batch_size`` =
    ``--peer-batch-size`` (default 32, the number of generation tasks our coordinator keeps in
    flight, ``max_outstanding``); with N <= 32 each LLM step is one ``LLM.generate`` call over the
    whole batch, which is vLLM's most efficient offline use.

Why the same questions and not the same number of accepted pairs: a distilabel pipeline is a
batch job over a fixed input, it cannot stop at a target; giving both sides the same N inputs
makes the work identical, and dividing by time normalizes the (random) accepted counts.
Questions/s and generated tokens/s are reported as well: with small N the accepted count is the
noisiest of the three.

Times, per side: ``run`` (steady state: ours StartRun → the run reported ended, its records in
Parquet shards, all services already up; distilabel: first ``LLM.generate`` → the select step
has yielded its last rows, engine loading taken out; its teardown, writing and reading back the
dataset, is reported apart), ``load`` (ours: NATS, store, engine and the five services
starting; distilabel: its vLLM engines loading), and ``total`` (the whole subprocess,
interpreter start to exit). Round i uses seed ``--seed`` + i on both sides, so rounds are
different samples. Ratios are taken per round, then the median.

What differs by design: distilabel runs each LLM step in its own process with its
own vLLM engine (two engines on the same cores here, 2x the KV cache), in batches, each batch a
blocking ``generate`` call; ours runs one shared engine fed continuously by all stages. The
peer's n candidates are one request with ``n`` (vLLM samples them off one prefill); ours are n
requests with their own seeds (reproducible per candidate).

    python -m benchmarks.peer                          # 16 questions, 3 rounds: ~15 min on 2 idle cores
    python -m benchmarks.peer --questions 64 --repeats 1

The first call creates .bench-venvs/distilabel (~30 s; distilabel and a few small packages from
PyPI, everything heavy reused from .venv).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/peer.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import base_parser, median, spread, table, write_result

NAME = "peer"
REPO = Path(__file__).resolve().parent.parent
PEER_VENV = REPO / ".bench-venvs" / "distilabel"
PEER_PYTHON = PEER_VENV / "bin" / "python"
PEER_JOB = REPO / "benchmarks" / "peer_distilabel_job.py"
VENV_SCRIPT = REPO / "scripts" / "bench_peer_venv.sh"


# ----------------------------------------------------------------------------- the job
def job_spec(args) -> dict[str, Any]:
    """The job both sides run: sampling and prompts from ``scalequest run``'s own defaults
    (its parser and ``run_config``), so the two cannot drift apart."""
    from scalequest_cli.commands import run_config
    from scalequest_cli.main import build_parser

    cli = build_parser().parse_args(
        ["run", "--target", str(args.questions), "--no-judge", "--n-candidates", str(args.n_candidates)]
        + (["--mode", args.mode] if args.mode else [])
        + (["--seed", str(args.seed)] if getattr(args, "seed", None) is not None else [])
    )
    cfg = run_config(cli, "model")
    qs, ss = cfg.question_sampling, cfg.solution_sampling
    return {
        "questions": args.questions,
        "n_candidates": cfg.n_candidates,
        "mode": cli.mode,
        "solver_prompt": cli.solver_prompt,
        "selection_rule": cfg.selection_rule,
        "seed": cfg.seed,
        "question_sampling": {"temperature": round(qs.temperature, 4), "top_p": round(qs.top_p, 4), "max_tokens": qs.max_tokens},
        "solution_sampling": {"temperature": round(ss.temperature, 4), "top_p": round(ss.top_p, 4), "max_tokens": ss.max_tokens},
    }


# ----------------------------------------------------------------------------- shared accounting
def choose_solution(candidates: list[str | None]) -> dict[str, Any] | None:
    """The peer's scoring and selection, by our rules: last ``\\boxed{}`` per candidate,
    math-verify equivalence classes, ``majority_then_reward`` with reward = agreement share (our
    reward stage with no judge and no reward model). None when no candidate has an answer
    (our ``no_answer``)."""
    from libs.answers import extract_answer, group_equivalent
    from services.reward.selection import agreement_shares, select

    texts = [c or "" for c in candidates]
    answers = [extract_answer(t)[0] for t in texts]
    labels = group_equivalent(answers)
    sel = select(labels, agreement_shares(labels), "majority_then_reward")
    if sel.index < 0:
        return None
    return {"answers": answers, "selected": sel.index, "solution": texts[sel.index], "answer": answers[sel.index],
            "agreement": sel.agreement}  # fmt: skip


def interval_union(intervals: list[tuple[float, float]], lo: float = float("-inf"), hi: float = float("inf")) -> float:
    """Seconds covered by the union of `intervals`, clipped to [lo, hi]."""
    total, cur_s, cur_e = 0.0, 0.0, None
    for s, e in sorted((max(s, lo), min(e, hi)) for s, e in intervals):
        if e <= s:
            continue
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def peer_times(events: list[dict[str, Any]], t_start: float, t_end: float) -> dict[str, float]:
    """The distilabel side's times from its events (``{"kind", "start", "end"}``: engine
    ``load`` and ``generate`` calls, and the ``keep`` / ``select`` steps finishing a batch) and
    ``Pipeline.run``'s start and end:

    * ``load_seconds``: time during which some vLLM engine was loading;
    * ``run_seconds``: first ``generate`` call → the last event (the select step has yielded
      the last accepted rows), minus loading that overlapped it (with sequential load groups
      the second engine loads mid-run);
    * ``startup_seconds``: ``Pipeline.run`` → first ``generate``, minus loading (process pool,
      step processes, queues);
    * ``teardown_seconds``: the last event → ``Pipeline.run`` returned (engines unloading, the
      dataset written and read back);
    * ``pipeline_seconds``: ``Pipeline.run`` as a whole.
    """
    loads = [(e["start"], e["end"]) for e in events if e["kind"] == "load"]
    work_start = min((e["start"] for e in events if e["kind"] == "generate"), default=t_end)
    work_end = min(max((e["end"] for e in events if e["kind"] != "load"), default=t_end), t_end)
    return {
        "load_seconds": interval_union(loads),
        "run_seconds": (work_end - work_start) - interval_union(loads, work_start, work_end),
        "startup_seconds": (work_start - t_start) - interval_union(loads, t_start, work_start),
        "teardown_seconds": t_end - work_end,
        "pipeline_seconds": t_end - t_start,
    }


# ----------------------------------------------------------------------------- ours (child)
async def run_ours(spec: dict[str, Any], model: str, filters: str, store: str) -> dict[str, Any]:
    """Our embedded pipeline on exactly ``spec['questions']`` generation tasks (in this process)."""
    from contextlib import AsyncExitStack

    from scalequest.coordinator.v1 import coordinator_pb2 as capi
    from scalequest.coordinator.v1 import coordinator_pb2_grpc as capi_grpc

    from libs.grpc.channel import open_channel
    from scalequest_cli.commands import run_config, run_overrides
    from scalequest_cli.embedded import start_pipeline
    from scalequest_cli.main import build_parser

    n = spec["questions"]
    cli = build_parser().parse_args([
        "run", "--target", str(n), "--no-judge", "--model", model, "--store", store, "--seed", str(spec["seed"]),
        "--n-candidates", str(spec["n_candidates"]), "--mode", spec["mode"], "--solver-prompt", spec["solver_prompt"],
    ])  # fmt: skip
    overrides = run_overrides(cli)
    overrides["reward"]["judge_enabled"] = False  # agreement only, like the peer
    if filters == "job":
        overrides["filter"].update(dedup_enabled=False, neardup_enabled=False)
    t0 = time.monotonic()
    async with AsyncExitStack() as stack:
        pipe = await start_pipeline(nats_url=None, store_url=store, overrides=overrides, stack=stack)
        t_ready = time.monotonic()
        channel = open_channel(f"127.0.0.1:{pipe.port('coordinator')}")
        stack.push_async_callback(channel.close)
        stub = capi_grpc.CoordinatorServiceStub(channel)
        cfg = run_config(cli, "SmolLM2-135M-Instruct")
        cfg.max_tasks = n  # exactly N generation tasks; target N is never reached first
        t_start = time.monotonic()
        resp = await stub.StartRun(capi.StartRunRequest(config=cfg))
        async for st in stub.StreamProgress(capi.StreamProgressRequest(run_id=resp.run_id, interval_seconds=0.2)):
            pass
        t_end = time.monotonic()
        await pipe.flush_counters()
        await asyncio.sleep(0.2)
        final = (await stub.GetRun(capi.GetRunRequest(run_id=resp.run_id))).status
    rejected = {r.reason if not r.stage else f"{r.stage}/{r.reason}": int(r.count) for r in final.rejections}
    return {
        "framework": "scalequest",
        "state": final.state,
        "questions_generated": int(final.admitted),
        "finished": int(final.finished),
        "accepted": int(final.accepted),
        "rejected": rejected,
        "generated_tokens": int(sum(final.tokens.values())),
        "question_tokens": int(final.tokens.get("questiongen", 0)),
        "tokens_by_stage": {k: int(v) for k, v in final.tokens.items()},
        "load_seconds": t_ready - t0,
        "run_seconds": t_end - t_start,
        "shutdown_seconds": time.monotonic() - t_end,
    }


def child_ours(argv: list[str]) -> int:
    """``python -m benchmarks.peer --child-ours SPEC_JSON MODEL FILTERS``: one run, JSON on stdout."""
    spec, model, filters = json.loads(argv[0]), argv[1], argv[2]
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from libs.logging import setup_logging

    setup_logging(os.environ.get("SQ_LOG_LEVEL", "WARNING"), json=True, service="bench-peer")
    with tempfile.TemporaryDirectory(prefix="sq-bench-peer-") as store:
        result = asyncio.run(run_ours(spec, model, filters, store))
    print(json.dumps(result), flush=True)
    return 0


# ----------------------------------------------------------------------------- subprocesses
def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _kill_tree(pid: int) -> None:
    """SIGKILL a child and everything under it (vLLM engine cores outlive a killed parent)."""
    for p in reversed(_descendants(pid)):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_child(cmd: list[str], log: Path, timeout: float, env: dict[str, str]) -> tuple[dict[str, Any] | None, float, int]:
    """Run one side; (its JSON result or None, wall seconds, exit code). Output goes to `log`."""
    t0 = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=out, env=env, text=True)
        try:
            stdout, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(proc.pid)
            stdout, _ = proc.communicate()
            out.write(f"\n[bench-peer] killed after {timeout:.0f}s\n")
        out.write(stdout)
    wall = time.monotonic() - t0
    result = None
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
                break
            except json.JSONDecodeError:
                pass
    return result, wall, proc.returncode


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    env["HF_HUB_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def ours_cmd(spec: dict[str, Any], model: str, filters: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.peer", "--child-ours", json.dumps(spec), model, filters]


def peer_cmd(spec: dict[str, Any], model: str, args) -> list[str]:
    qs, ss = spec["question_sampling"], spec["solution_sampling"]
    return [
        str(PEER_PYTHON), str(PEER_JOB), "--model", model, "--questions", str(spec["questions"]),
        "--n-candidates", str(spec["n_candidates"]), "--mode", spec["mode"], "--solver-prompt", spec["solver_prompt"],
        "--question-temperature", str(qs["temperature"]), "--question-top-p", str(qs["top_p"]),
        "--question-max-tokens", str(qs["max_tokens"]), "--solution-temperature", str(ss["temperature"]),
        "--solution-top-p", str(ss["top_p"]), "--solution-max-tokens", str(ss["max_tokens"]),
        "--batch-size", str(args.peer_batch_size), "--load-groups", args.peer_load_groups, "--seed", str(spec["seed"]),
    ]  # fmt: skip


def rates(r: dict[str, Any] | None, total: float) -> dict[str, float | None]:
    """accepted/s, questions/s, tokens/s over the steady-state run and over the whole process."""
    if not r or not r.get("run_seconds"):
        return {}
    run = r["run_seconds"]
    return {
        "accepted_per_s": r["accepted"] / run,
        "accepted_per_s_total": r["accepted"] / total if total else None,
        "questions_per_s": r["questions_generated"] / run,
        "tokens_per_s": r["generated_tokens"] / run,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child-ours"]:
        return child_ours(argv[1:])
    p = base_parser(NAME, __doc__)
    p.add_argument("--questions", type=int, default=16, help="generation tasks per side and round (N)")
    p.add_argument("--n-candidates", type=int, default=4)
    p.add_argument("--mode", choices=["instructed", "scratch"], default=None,
                   help="question sampling mode (default: scalequest run's, instructed)")
    p.add_argument("--filters", choices=["job", "all"], default="job",
                   help="job: our dedup/near-dup off (the peer has none); all: every default filter of ours on")
    p.add_argument("--peer-batch-size", type=int, default=32, help="distilabel batch_size / input_batch_size")
    p.add_argument("--peer-load-groups", choices=["together", "sequential"], default="together",
                   help="distilabel: both vLLM steps loaded at once (default) or one after the other")
    p.add_argument("--seed", type=int, default=1234,
                   help="round i uses seed+i on both sides (ours: the run seed, per-task seeds derive from it; "
                        "distilabel: the engine seed), so rounds are different samples")
    p.add_argument("--model", default="default", help="model directory ('default' = packaged SmolLM2-135M-Instruct)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per side and round before it is killed")
    p.add_argument("--logs", type=Path, default=None, help="keep the children's logs here (default: a temp dir)")
    args = p.parse_args(argv)

    from libs.models.resolve import resolve_model

    subprocess.run(["bash", str(VENV_SCRIPT)], cwd=REPO, check=True)
    model = resolve_model(args.model)
    spec = job_spec(args)
    base_seed = spec["seed"]
    env = child_env()
    logs = args.logs or Path(tempfile.mkdtemp(prefix="sq-bench-peer-logs-"))
    logs.mkdir(parents=True, exist_ok=True)
    print(f"job: {json.dumps(spec)}\nmodel: {model}\nlogs: {logs}")

    rounds: list[dict[str, Any]] = []
    for i in range(args.repeats):
        order = ["ours", "peer"] if i % 2 == 0 else ["peer", "ours"]
        spec = {**spec, "seed": base_seed + i}
        rnd: dict[str, Any] = {"round": i, "order": order, "seed": spec["seed"]}
        for side in order:
            cmd = ours_cmd(spec, model, args.filters) if side == "ours" else peer_cmd(spec, model, args)
            log = logs / f"round{i}-{side}.log"
            result, wall, rc = run_child(cmd, log, args.timeout, env)
            if result is None or rc != 0:
                print(f"round {i}: {side} failed (exit {rc}); see {log}", file=sys.stderr)
            rnd[side] = {"result": result, "total_seconds": wall, "exit_code": rc, "log": str(log),
                         **rates(result, wall)}  # fmt: skip
            acc = (result or {}).get("accepted", "-")
            print(f"round {i} {side:4s}: accepted {acc}, run {(result or {}).get('run_seconds', float('nan')):.1f}s, "
                  f"total {wall:.1f}s")  # fmt: skip
        o, q = rnd["ours"], rnd["peer"]
        rnd["ratio"] = {
            "accepted_per_s": ratio(o.get("accepted_per_s"), q.get("accepted_per_s")),
            "accepted_per_s_total": ratio(o.get("accepted_per_s_total"), q.get("accepted_per_s_total")),
            "questions_per_s": ratio(o.get("questions_per_s"), q.get("questions_per_s")),
            "tokens_per_s": ratio(o.get("tokens_per_s"), q.get("tokens_per_s")),
        }
        rounds.append(rnd)

    def col(side: str, key: str) -> list[Any]:
        return [r[side].get(key) for r in rounds]

    def res(side: str, key: str) -> list[Any]:
        return [(r[side]["result"] or {}).get(key) for r in rounds]

    rows = []
    for r in rounds:
        for side, label in (("ours", "scalequest"), ("peer", "distilabel")):
            s, res_ = r[side], r[side]["result"] or {}
            rows.append([r["round"], label, res_.get("questions_generated", "-"), res_.get("accepted", "-"),
                         res_.get("generated_tokens", "-"), res_.get("load_seconds", float("nan")),
                         res_.get("run_seconds", float("nan")), s["total_seconds"],
                         s.get("accepted_per_s", float("nan")), s.get("accepted_per_s_total", float("nan")),
                         s.get("tokens_per_s", float("nan"))])  # fmt: skip
    print(table(["round", "side", "questions", "accepted", "tokens", "load s", "run s", "total s",
                 "accepted/s (run)", "accepted/s (total)", "tokens/s (run)"], rows,
                f"Per round ({args.questions} questions x {spec['n_candidates']} candidates)"))  # fmt: skip
    summary_rows = []
    for side, label in (("ours", "scalequest"), ("peer", "distilabel")):
        summary_rows.append([label, spread(res(side, "accepted")), spread(res(side, "load_seconds")),
                             spread(res(side, "run_seconds")), spread(col(side, "total_seconds")),
                             spread(col(side, "accepted_per_s")), spread(col(side, "accepted_per_s_total")),
                             spread(col(side, "questions_per_s")), spread(col(side, "tokens_per_s"))])  # fmt: skip
    print(table(["side", "accepted", "load s", "run s", "total s", "accepted/s (run)", "accepted/s (total)",
                 "questions/s (run)", "tokens/s (run)"], summary_rows, "Median (min-max) over rounds"))  # fmt: skip
    ratios = {k: [r["ratio"][k] for r in rounds] for k in rounds[0]["ratio"]} if rounds else {}
    print(table(["ours ÷ distilabel", "median (min-max)"],
                [[k.replace("_", " ").replace("per s", "/s"), spread(v)] for k, v in ratios.items()],
                "Ratios (per round, then the median; > 1 = ours ahead)"))  # fmt: skip
    headline = median(ratios.get("accepted_per_s", []))
    print(f"\naccepted pairs/s, ours ÷ distilabel: {headline:.2f} (steady state), "
          f"{median(ratios.get('accepted_per_s_total', [])):.2f} (total, incl. load)")
    write_result(args.out, NAME, args, {
        "job": {**spec, "seed": base_seed},
        "model": model,
        "filters": args.filters,
        "peer": {"batch_size": args.peer_batch_size, "load_groups": args.peer_load_groups},
        "rounds": rounds,
        "median": {
            side: {k: median(col(side, k)) for k in ("accepted_per_s", "accepted_per_s_total", "questions_per_s",
                                                     "tokens_per_s", "total_seconds")}
            | {k: median(res(side, k)) for k in ("accepted", "load_seconds", "run_seconds")}
            for side in ("ours", "peer")
        },
        "ratio_median": {k: median(v) for k, v in ratios.items()},
    })  # fmt: skip
    failed = any(r[s]["result"] is None for r in rounds for s in ("ours", "peer"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
