"""Peak memory (RSS) of the pipeline: the embedded run and each service as its own process.

Three set-ups, each a small run, each followed from start to exit by a sampler that reads
/proc every 0.25 s (``benchmarks.proctree.TreeSampler``):

* embedded: ``scalequest run --target N`` (one process with all five services and one vLLM
  engine, plus the children it starts: vLLM's engine core and worker, nats-server);
* processes (vLLM): ``libs.chaos.ProcessPipeline`` with ``SQ_ENGINE=vllm SQ_MODEL=default``:
  each service is ``scalequest serve <svc>``, and each of questiongen, filter, solver and reward
  loads its own engine (engine-core children counted in that service's figure);
* processes (zero-cost engine): the same with ``SQ_ENGINE=fake SQ_MODEL=scripted-math``, i.e.
  the orchestration alone (gRPC, NATS client, protobuf, stage code).

Per process the figure is VmHWM, the kernel's own peak resident set; a group's "sum of
peaks" adds them (an upper bound: processes need not peak together, and RSS counts shared
pages, e.g. torch's libraries, once per process); "peak of summed PSS" is the highest total
proportional set size seen at one sample (shared pages split between their users), closer
to what the machine actually had to provide. The vLLM figures depend on the KV-cache size:
``VLLM_CPU_KVCACHE_SPACE`` GiB if set, else the project's CPU default (1 GiB,
``libs.engines.vllm_engine.DEFAULT_CPU_KV_CACHE_GIB``); it is recorded in the JSON.

    python -m benchmarks.memory                       # target 2 (vLLM), 200 (zero-cost)
    python -m benchmarks.memory --only fake --fake-target 500
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/memory.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import base_parser, median, table, write_result
from benchmarks.proctree import TreeSampler

NAME = "memory"
REPO = Path(__file__).resolve().parent.parent
SCENARIOS = ("embedded", "processes", "fake")
SERVICES = ("questiongen", "filter", "solver", "reward", "coordinator")


def embedded(args, workdir: Path) -> dict[str, Any]:
    """`scalequest run` in a child process; its whole process tree."""
    cmd = [sys.executable, "-m", "scalequest_cli.main", "run", "--target", str(args.target),
           "--store", str(workdir / "store"), "--seed", str(args.seed), "-q", "--json"]  # fmt: skip
    env = {**os.environ, "SQ_LOG_LEVEL": "WARNING", "PYTHONPATH": str(REPO)}
    log = workdir / "embedded.log"
    t0 = time.monotonic()
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        with TreeSampler({"embedded": proc.pid}, interval=args.interval) as sampler:
            out, _ = proc.communicate(timeout=args.timeout)
    if proc.returncode not in (0, 1):  # 1: the run ended, but not "completed"
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"scalequest run exited {proc.returncode}:\n{tail}")
    status = {}
    for line in reversed(out.decode(errors="replace").splitlines()):
        if line.startswith("{"):
            status = json.loads(line)
            break
    res = sampler.group("embedded")
    res.update(wall_s=time.monotonic() - t0, accepted=int(status.get("accepted", 0)), state=status.get("state", "?"),
               samples=sampler.samples)  # fmt: skip
    return {"groups": {"embedded": res}, "wall_s": res["wall_s"], "accepted": res["accepted"], "state": res["state"]}


async def processes(args, workdir: Path, real: bool) -> dict[str, Any]:
    """Five `scalequest serve` processes (+ nats-server) through a small run."""
    import grpc
    from scalequest.coordinator.v1 import coordinator_pb2 as capi
    from scalequest.coordinator.v1 import coordinator_pb2_grpc as capi_grpc

    from libs.chaos import ProcessPipeline
    from scalequest_cli.commands import run_config
    from scalequest_cli.main import build_parser

    target = args.target if real else args.fake_target
    rargs = build_parser().parse_args(["run", "--target", str(target), "--seed", str(args.seed)])
    env = {"SQ_LOG_LEVEL": "WARNING", "SQ_SOLVE_PROMPT": rargs.solver_prompt, "SQ_JUDGE_MAX_TOKENS": str(rargs.judge_max_tokens)}
    if real:
        env.update(SQ_ENGINE="vllm", SQ_MODEL="default", VLLM_LOGGING_LEVEL="WARNING")
    # Service defaults for batching (the shipped batch x 2 loops) and JetStream ack wait (60 s:
    # vLLM batches are slow).
    from libs.settings import CommonSettings

    pipe = ProcessPipeline(workdir, env=env, ack_wait=60.0, batch_size=CommonSettings.model_fields["batch_size"].default,
                           concurrency=2)  # fmt: skip

    def roots() -> dict[str, int]:
        out = {name: p.pid for name, p in pipe.procs.items() if p.pid}
        if pipe.nats is not None and pipe.nats.pid:
            out["nats-server"] = pipe.nats.pid
        return out

    t0 = time.monotonic()
    with TreeSampler(roots, interval=args.interval) as sampler:
        try:
            await pipe.start(timeout=args.timeout)
            ready = time.monotonic() - t0
            async with grpc.aio.insecure_channel(f"127.0.0.1:{pipe.procs['coordinator'].port}") as ch:
                name = "SmolLM2-135M-Instruct" if real else "fake-math"
                resp = await capi_grpc.CoordinatorServiceStub(ch).StartRun(
                    capi.StartRunRequest(config=run_config(rargs, name)), timeout=60
                )
            st = await pipe.wait_run(resp.run_id, args.timeout)
            sampler.sample()  # the last reading before the processes go
        finally:
            await pipe.close()
    groups = {g: sampler.group(g) for g in (*SERVICES, "nats-server")}
    return {"groups": groups, "wall_s": time.monotonic() - t0, "startup_s": ready, "accepted": int(st.get("accepted", 0)),
            "state": st.get("state", "?")}  # fmt: skip


def run_scenario(args, scenario: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"sq-mem-{scenario}-") as tmp:
        if scenario == "embedded":
            return embedded(args, Path(tmp))
        return asyncio.run(processes(args, Path(tmp), real=scenario == "processes"))


def report(reps: list[dict[str, Any]], scenarios: list[str]) -> dict[str, Any]:
    label = {"embedded": "embedded (vLLM)", "processes": "processes (vLLM)", "fake": "processes (zero-cost engine)"}
    proc_rows, total_rows, summary = [], [], {}
    for sc in scenarios:
        runs = [r[sc] for r in reps]
        summary[sc] = {}
        for group in runs[0]["groups"]:
            gs = [r["groups"][group] for r in runs]
            # Per process (by name within the group; a name can occur more than once).
            names: dict[str, list[float]] = {}
            for p in gs[0]["processes"]:
                names.setdefault(p["name"], [])
            for name in names:
                per_run = [sum(p["peak_rss_mib"] for p in g["processes"] if p["name"] == name) for g in gs]
                count = sum(1 for p in gs[0]["processes"] if p["name"] == name)
                proc_rows.append((label[sc], group, name + (f" (x{count})" if count > 1 else ""), median(per_run)))
            fig = {
                "sum_of_peaks_mib": median(g["sum_of_peaks_mib"] for g in gs),
                "peak_sum_rss_mib": median(g["peak_sum_rss_mib"] for g in gs),
                "peak_sum_pss_mib": median(g["peak_sum_pss_mib"] for g in gs),
            }
            summary[sc][group] = fig
            total_rows.append((label[sc], group, fig["sum_of_peaks_mib"], fig["peak_sum_rss_mib"], fig["peak_sum_pss_mib"]))
        if len(runs[0]["groups"]) > 1:
            all_peaks = median(sum(g["sum_of_peaks_mib"] for g in r["groups"].values()) for r in runs)
            all_pss = median(sum(g["peak_sum_pss_mib"] for g in r["groups"].values()) for r in runs)
            total_rows.append((label[sc], "all processes", all_peaks, "-", all_pss))
            summary[sc]["all"] = {"sum_of_peaks_mib": all_peaks, "sum_of_group_pss_peaks_mib": all_pss}
        summary[sc]["wall_s"] = median(r["wall_s"] for r in runs)
        summary[sc]["accepted"] = median(r["accepted"] for r in runs)
    print(table(("set-up", "service", "process", "peak RSS MiB (VmHWM)"), proc_rows, "Peak RSS per process (median)"))
    print(table(("set-up", "service", "sum of peaks MiB", "peak of summed RSS MiB", "peak of summed PSS MiB"), total_rows,
                "Per service / set-up (process plus its children)"))  # fmt: skip
    run_rows = [(label[sc], summary[sc]["wall_s"], summary[sc]["accepted"]) for sc in scenarios]
    print(table(("set-up", "wall s (incl. start-up)", "accepted"), run_rows, "Runs"))
    return {"summary": summary, "repeats": reps}


def main(argv: list[str] | None = None) -> int:
    p = base_parser(NAME, __doc__)
    p.set_defaults(repeats=1)  # peak RSS varies little between runs; each repeat costs ~8 min here
    p.add_argument("--target", type=int, default=2, help="accepted pairs of the vLLM runs")
    p.add_argument("--fake-target", type=int, default=200, help="accepted pairs of the zero-cost-engine run")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--only", default=",".join(SCENARIOS), help=f"comma list of {', '.join(SCENARIOS)}")
    p.add_argument("--interval", type=float, default=0.25, help="seconds between /proc samples")
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds a start-up or a run may take")
    args = p.parse_args(argv)
    scenarios = [s for s in args.only.split(",") if s]
    bad = set(scenarios) - set(SCENARIOS)
    if bad:
        p.error(f"--only: unknown {sorted(bad)}")
    reps = []
    for i in range(args.repeats):
        rep = {}
        for sc in scenarios:
            print(f"repeat {i + 1}/{args.repeats}: {sc} ...", flush=True)
            rep[sc] = run_scenario(args, sc)
            print(f"  {rep[sc]['wall_s']:.0f}s, {rep[sc]['accepted']} accepted ({rep[sc]['state']})", flush=True)
        reps.append(rep)
    results = report(reps, scenarios)
    results["kv_cache_gib"] = float(os.environ.get("VLLM_CPU_KVCACHE_SPACE") or 1.0)
    results["kv_cache_source"] = "VLLM_CPU_KVCACHE_SPACE" if os.environ.get("VLLM_CPU_KVCACHE_SPACE") else "default"
    write_result(args.out, NAME, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
