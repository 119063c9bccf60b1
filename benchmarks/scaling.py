"""Replica scaling: 1, 2 and 4 solver processes against one NATS server.

The five services run as separate processes (``libs.chaos.ProcessPipeline``, scripted math
world). Only the solver's engine has a cost, so the solver is the stage that needs replicas;
two engines model the two cases that matter:

* ``cpu`` -- each generate call burns ``--cpu-ms`` of CPU on the solver's event loop, like an
  engine computing in-process (vLLM on CPU). Replicas help until the machine's cores are busy:
  on 2 cores the third and fourth replica only compete for the same CPU.
* ``latency`` -- each generate call waits ``--latency-ms`` without using CPU, like a remote
  or GPU engine. A replica keeps ``batch x concurrency`` calls in flight, so throughput grows
  with replicas until the orchestration itself (all stages' CPU) fills the cores.

For each engine and replica count, one run of ``--items`` tasks; items/s = items that ended per
second of run time. The table also shows how busy the machine's cores were (all processes) and
the solver processes' share, which is where the bound shows: when "CPU used" nears 100% of the
cores, more replicas cannot help. Near-duplicate removal is off so the filter (KV round trips,
see ``benchmarks.orchestration``) is not the bound instead.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from itertools import pairwise
from pathlib import Path
from typing import Any

from benchmarks.common import (
    base_parser,
    median,
    spread,
    table,
    write_result,
)
from benchmarks.orchestration import SERVICE_BATCH, timed_run
from libs.settings import CommonSettings

NAME = "scaling"


async def one_run(workdir: Path, replicas: int, engine: str, args) -> dict[str, Any]:
    from libs.chaos import ProcessPipeline

    solver_env = (
        {"SQ_FAKE_CPU_SECONDS": str(args.cpu_ms / 1000)}
        if engine == "cpu"
        else {"SQ_FAKE_DELAY_SECONDS": str(args.latency_ms / 1000)}
    )
    env = {"SQ_LOG_LEVEL": "WARNING", "SQ_NEARDUP_ENABLED": "false"}
    async with ProcessPipeline(workdir, batch_size=args.batch_size, concurrency=args.concurrency, ack_wait=120,
                               env=env, replicas={"solver": replicas},
                               env_per_service={"solver": solver_env, **SERVICE_BATCH}) as pipe:  # fmt: skip
        st, dt, cpu = await timed_run(pipe, args.items, args.outstanding)
    cores = os.cpu_count() or 1
    solver_cpu = sum(v for n, v in cpu.items() if n.startswith("solver"))
    finished = int(st.get("finished", 0))
    return {
        "replicas": replicas,
        "engine": engine,
        "seconds": dt,
        "finished": finished,
        "items_per_s": finished / dt,
        "cpu_used": sum(cpu.values()) / dt / cores,
        "solver_cpu_share": solver_cpu / dt / cores,
        "cpu_seconds": cpu,
    }


async def run(args) -> dict:
    base = Path(tempfile.mkdtemp(prefix="sq-bench-scaling-"))
    runs: list[dict] = []
    try:
        for r in range(args.repeats):
            for engine in args.engines:
                for n in args.replicas:
                    print(f"[repeat {r + 1}/{args.repeats}] {engine} engine, {n} solver(s) ...", flush=True)
                    res = await one_run(base / f"{r}-{engine}-{n}", n, engine, args)
                    print(f"    {res['items_per_s']:.0f} items/s, CPU used {res['cpu_used']:.0%}", flush=True)
                    runs.append(res)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    summary: dict[str, dict] = {}
    for engine in args.engines:
        one = median(x["items_per_s"] for x in runs if x["engine"] == engine and x["replicas"] == args.replicas[0])
        summary[engine] = {
            str(n): {
                "items_per_s": median(x["items_per_s"] for x in runs if x["engine"] == engine and x["replicas"] == n),
                "speedup": median(x["items_per_s"] for x in runs if x["engine"] == engine and x["replicas"] == n) / one,
                "cpu_used": median(x["cpu_used"] for x in runs if x["engine"] == engine and x["replicas"] == n),
            }
            for n in args.replicas
        }
    return {"runs": runs, "summary": summary, "bound": bounds(summary, args)}


def bounds(summary: dict, args) -> dict[str, str]:
    """Where each engine's scaling stops, in words (from the measured figures)."""
    out = {}
    for engine, by_n in summary.items():
        ns = [str(n) for n in args.replicas]
        best = max(ns, key=lambda n: by_n[n]["items_per_s"])
        gains = [by_n[b]["items_per_s"] / by_n[a]["items_per_s"] for a, b in pairwise(ns)]
        # The last replica count that still gained (>= 15%) over the one before it.
        flat = next(((a, b) for (a, b), g in zip(pairwise(ns), gains) if g < 1.15), None)
        if flat is None:
            out[engine] = f"still growing at {ns[-1]} replicas ({by_n[ns[-1]]['speedup']:.2f}x of {ns[0]})"
            continue
        last, more = flat
        cpu = by_n[last]["cpu_used"]
        head = f"stops growing after {last} replicas ({more} add nothing) at {by_n[best]['items_per_s']:.0f} items/s"
        if cpu >= 0.85:
            out[engine] = f"{head}: CPU bound, {cpu:.0%} of {os.cpu_count()} cores busy"
        else:
            out[engine] = f"{head} with {cpu:.0%} of the cores busy: not CPU; another stage or NATS round trips"
    return out


def report(res: dict, args) -> None:
    rows = []
    for engine in args.engines:
        for n in args.replicas:
            xs = [x for x in res["runs"] if x["engine"] == engine and x["replicas"] == n]
            s = res["summary"][engine][str(n)]
            rows.append([engine, n, spread([x["items_per_s"] for x in xs]), f"{s['speedup']:.2f}x",
                         f"{s['cpu_used']:.0%}", f"{median(x['solver_cpu_share'] for x in xs):.0%}"])  # fmt: skip
    cost = f"cpu {args.cpu_ms} ms, latency {args.latency_ms} ms per generate call; 4 calls per item"
    print(table(["engine", "solvers", "items/s median (min-max)", "speedup", "CPU used (all)", "solver CPU"],
                rows, f"Solver replicas, {args.items} items per run ({cost})"))  # fmt: skip
    for engine, text in res["bound"].items():
        print(f"{engine}: {text}")


def main() -> None:
    p = base_parser(NAME, __doc__)
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--engines", nargs="+", default=["cpu", "latency"], choices=["cpu", "latency"])
    p.add_argument("--cpu-ms", type=float, default=2.0, help="CPU per solver generate call (cpu engine)")
    p.add_argument("--latency-ms", type=float, default=250.0, help="wait per solver generate call (latency engine)")
    p.add_argument("--items", type=int, default=1500)
    p.add_argument("--outstanding", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=CommonSettings.model_fields["batch_size"].default,
                   help="SQ_BATCH_SIZE (default: the shipped one)")
    p.add_argument("--concurrency", type=int, default=2, help="SQ_WORKER_CONCURRENCY (the shipped default)")
    args = p.parse_args()
    args.replicas = sorted(set(args.replicas))
    res = asyncio.run(run(args))
    report(res, args)
    write_result(args.out, NAME, args, res)


if __name__ == "__main__":
    main()
