"""Orchestration overhead: items/s through each stage and end to end with a zero-cost engine,
next to raw nats-py JetStream rates measured in the same run.

Every repeat runs, on a fresh ``nats-server`` (file store, as deployed) each time:

1. **raw NATS**: nats-py on one connection, 300-byte messages with ``Nats-Msg-Id``:
   ``publish`` (acks awaited in windows of ``batch x concurrency``), ``consume_ack_sync`` and
   ``consume_ack`` (fetch a batch, then ``ack_sync`` or a plain ``ack`` each; the stage worker
   acks plainly), and ``hop`` (consume from one stream, publish to another, then ack: the least
   work a stage can do per item). These are the ceilings a Python stage process can reach on
   this machine.
2. **per stage**: the five services as separate processes (``libs.chaos.ProcessPipeline``, the
   scripted math world with ``SQ_ENGINE=fake``). Every stage process is paused (SIGSTOP), the
   coordinator admits ``--items`` tasks, then the stages are resumed one at a time, each draining
   the full queue the stage before it left; items/s = items it consumed / time to drain.
3. **end to end**: all stages running together, one run of ``--items`` admitted tasks
   (``max_outstanding`` = ``--outstanding``); items/s = items that ended (accepted or rejected
   anywhere) per second of run wall time. Per-process CPU seconds show who is busy.

4. **queue layer alone**: five pass-through stage processes (``benchmarks/relay.py``: the real
   StageWorker, envelopes, decoding and publishing, but no stage logic and no engine) in a chain,
   with envelopes (``--envelope-items``) and with one message per item: what orchestration
   itself costs per item, apart from what the stages compute.

With ``--profile`` (needs ``py-spy`` on PATH, see docs/benchmarks.md) one more end-to-end run is
sampled in every service process (its rate is not reported: sampling slows it) and the table shows where the main thread's
time goes (NATS client, asyncio, protobuf, stage logic, worker, engine, idle).

``--filter-variants`` adds end-to-end runs with other settings: near-duplicate removal off, and
one message per item (``no-envelopes``) for the before/after of envelopes.
"""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    base_parser,
    cpu_seconds,
    median,
    spread,
    table,
    write_result,
)
from libs.settings import CommonSettings
from services.coordinator.settings import CoordinatorSettings

NAME = "orchestration"
STAGES = ("questiongen", "filter", "solver", "reward", "coordinator")
STAGE_QUEUE = {"questiongen": "GENERATE", "filter": "FILTER", "solver": "SOLVE", "reward": "SCORE",
               "coordinator": "SINK"}  # fmt: skip
# Services whose shipped batch size differs from the common one keep it (the others get
# --batch-size): the coordinator's fetch window bounds the records one shard write collects
# (services/coordinator/settings.py).
SERVICE_BATCH = {"coordinator": {"SQ_BATCH_SIZE": str(CoordinatorSettings.model_fields["batch_size"].default)}}
VARIANTS = {
    "default": {},
    "no-envelopes": {"SQ_ENVELOPE_MAX_ITEMS": "1"},
    "no-neardup": {"SQ_NEARDUP_ENABLED": "false"},
    "no-dedup": {"SQ_NEARDUP_ENABLED": "false", "SQ_DEDUP_ENABLED": "false"},
}


# ------------------------------------------------------------------------------ raw NATS
async def raw_nats(workdir: Path, n: int, window: int, batch: int) -> dict[str, float]:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

    from libs.queue.fetch import fetch_ready
    from libs.queue.server import EmbeddedNats

    srv = EmbeddedNats(store_dir=workdir / "raw-nats").start()
    nc = await nats.connect(srv.url)
    try:
        js = nc.jetstream()
        for name in ("RA", "RB"):
            await js.add_stream(StreamConfig(name=name, subjects=[f"{name.lower()}.>"],
                                             retention=RetentionPolicy.WORK_QUEUE))  # fmt: skip
            await js.add_consumer(name, ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT,
                                                       max_ack_pending=100_000))  # fmt: skip
        payload = b"x" * 300

        async def publish(subject: str, ids: range, prefix: str) -> None:
            for i in range(ids.start, ids.stop, window):
                await asyncio.gather(*(js.publish(subject, payload, headers={"Nats-Msg-Id": f"{prefix}{j}"})
                                       for j in range(i, min(i + window, ids.stop))))  # fmt: skip

        t0 = time.perf_counter()
        await publish("ra.x", range(n), "a")
        pub = n / (time.perf_counter() - t0)

        sub_a = await js.pull_subscribe_bind(durable="c", stream="RA")
        third = n // 3

        async def consume(count: int, sync: bool) -> float:
            t0, got = time.perf_counter(), 0
            while got < count:
                msgs = await fetch_ready(sub_a, min(batch, count - got), 5.0)
                if sync:
                    await asyncio.gather(*(m.ack_sync() for m in msgs))
                else:
                    for m in msgs:
                        await m.ack()
                got += len(msgs)
            return got / (time.perf_counter() - t0)

        consume_sync = await consume(third, sync=True)
        consume_plain = await consume(third, sync=False)
        t0 = time.perf_counter()
        hopped, rest = 0, n - 2 * third
        while hopped < rest:
            msgs = await fetch_ready(sub_a, min(batch, rest - hopped), 5.0)
            await asyncio.gather(*(js.publish("rb.x", m.data, headers={"Nats-Msg-Id": f"b{hopped + k}"})
                                   for k, m in enumerate(msgs)))  # fmt: skip
            for m in msgs:
                await m.ack()
            hopped += len(msgs)
        hop = hopped / (time.perf_counter() - t0)
        return {"publish_per_s": pub, "consume_ack_sync_per_s": consume_sync, "consume_ack_per_s": consume_plain,
                "hop_per_s": hop}  # fmt: skip
    finally:
        await nc.close()
        srv.close()


# ------------------------------------------------------------------------------ helpers
async def backlog(js, queue) -> int:
    info = await js.consumer_info(queue.stream, queue.consumer)
    return int(info.num_pending) + int(info.num_ack_pending)


async def wait_backlog(js, queue, want: int, timeout: float, cmp=lambda have, want: have >= want) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if cmp(await backlog(js, queue), want):
            return time.perf_counter() - t0
        await asyncio.sleep(0.02)
    raise TimeoutError(f"{queue.stream}: backlog {await backlog(js, queue)} did not reach {want} in {timeout:.0f}s")


def pipeline_env(batch: int, concurrency: int, extra: dict[str, str]) -> dict[str, str]:
    # Quiet logs: per-item log lines are part of the product, but at WARNING they stay out of
    # the figures for everything but rejections.
    return {"SQ_LOG_LEVEL": "WARNING", "SQ_BATCH_SIZE": str(batch), **extra}


# ------------------------------------------------------------------------------ per stage
async def per_stage(workdir: Path, items: int, batch: int, concurrency: int, extra: dict[str, str]) -> dict:
    """Each stage alone, draining a full queue (module doc, step 2)."""
    from libs.chaos import ProcessPipeline
    from libs.queue import subjects

    out: dict[str, Any] = {}
    async with ProcessPipeline(workdir, batch_size=batch, concurrency=concurrency, ack_wait=120,
                               env=pipeline_env(batch, concurrency, extra), env_per_service=SERVICE_BATCH) as pipe:  # fmt: skip
        for name in STAGES[:-1]:
            os.kill(pipe.procs[name].pid, signal.SIGSTOP)
        try:
            run_id = await pipe.start_run(items, max_outstanding=items, max_tasks=items)
            t0 = time.monotonic()
            while int((await pipe.state(run_id)).get("admitted", 0)) < items:  # every task stored
                if time.monotonic() - t0 > 120:
                    raise TimeoutError(f"{items} tasks not admitted in 120s")
                await asyncio.sleep(0.05)
            os.kill(pipe.procs["coordinator"].pid, signal.SIGSTOP)
            for name in STAGES:
                q = getattr(subjects, STAGE_QUEUE[name])
                n = await backlog(pipe.js, q)
                cpu0 = cpu_seconds(pipe.procs[name].pid)
                t0 = time.perf_counter()
                os.kill(pipe.procs[name].pid, signal.SIGCONT)
                await wait_backlog(pipe.js, q, 0, 600, cmp=lambda have, want: have <= want)
                dt = time.perf_counter() - t0
                cpu = cpu_seconds(pipe.procs[name].pid) - cpu0
                out[name] = {"messages": n, "seconds": dt, "cpu_seconds": cpu}
            st = await pipe.wait_run(run_id, 120)
            out["_run"] = {"accepted": st.get("accepted"), "finished": st.get("finished")}
            # A message may be an envelope of many items: count items by what each stage processed.
            done = await processed_items(pipe, run_id, items)
            done["coordinator"] = int(st.get("finished", 0))
            for name in STAGES:
                d, n = out[name], done.get(name, 0)
                d |= {"items": n, "items_per_s": n / d["seconds"] if d["seconds"] else 0.0,
                      "cpu_ms_per_item": 1000 * d.pop("cpu_seconds") / n if n else 0.0}  # fmt: skip
        finally:
            for p in pipe.procs.values():
                if p.alive:
                    os.kill(p.pid, signal.SIGCONT)
    return out


async def processed_items(pipe, run_id: str, tasks: int, timeout: float = 15.0) -> dict[str, int]:
    """Items each stage processed in a run (the stages' counters, flushed to KV every second):
    read until questiongen has all ``tasks`` and no counter changed for 1.5 s, so a stage whose
    last flush is still due is not read as 0."""
    from libs.queue.kv import kv_get_json, kv_keys

    t0, done, last, since = time.monotonic(), {}, None, time.monotonic()
    while time.monotonic() - t0 < timeout:
        done = collections.Counter()
        for key in await kv_keys(pipe.kv, f"run.{run_id}.stage."):
            done[key.split(".")[3]] += int((await kv_get_json(pipe.kv, key) or {}).get("processed", 0))
        if done != last:
            last, since = done, time.monotonic()
        elif done.get("questiongen", 0) >= tasks and time.monotonic() - since >= 1.5:
            break
        await asyncio.sleep(0.3)
    return dict(done)


# ------------------------------------------------------------------------------ end to end
async def timed_run(pipe, items: int, outstanding: int, on_start=None) -> tuple[dict, float, dict[str, float]]:
    """One run of ``items`` admitted tasks on a started ProcessPipeline: (final run state,
    seconds, CPU seconds per process incl. nats-server). ``on_start(pids)`` runs once admitted."""
    pids = {n: p.pid for n, p in pipe.procs.items()} | {"nats-server": pipe.nats.pid}
    cpu0 = {n: cpu_seconds(pid) for n, pid in pids.items()}
    t0 = time.perf_counter()
    # target = items: the run ends when every admitted task ended or the target is reached.
    run_id = await pipe.start_run(items, max_outstanding=outstanding, max_tasks=items)
    if on_start is not None:
        on_start(pids)
    st = await pipe.wait_run(run_id, 900)
    dt = time.perf_counter() - t0
    cpu = {n: cpu_seconds(pid) - cpu0[n] for n, pid in pids.items()}
    # The coordinator's own start and end (the end is after the last shard is durable): the
    # client sees the end only at its next 0.5 s poll of a state saved every second, which
    # quantized a 5 s run's rate by ~10%.
    if float(st.get("ended_at") or 0) > float(st.get("started_at") or 0) > 0:
        dt = float(st["ended_at"]) - float(st["started_at"])
    return st, dt, cpu


async def end_to_end(
    workdir: Path, items: int, outstanding: int, batch: int, concurrency: int, extra: dict[str, str],
    profile_dir: Path | None = None,
) -> dict:
    from libs.chaos import ProcessPipeline

    async with ProcessPipeline(workdir, batch_size=batch, concurrency=concurrency, ack_wait=120,
                               env=pipeline_env(batch, concurrency, extra), env_per_service=SERVICE_BATCH) as pipe:  # fmt: skip
        spies: dict[str, subprocess.Popen] = {}
        st, dt, cpu = await timed_run(pipe, items, outstanding,
                                      lambda pids: spies.update(start_profilers(pids, profile_dir) if profile_dir else {}))  # fmt: skip
        for s in spies.values():
            s.send_signal(signal.SIGINT)
        for s in spies.values():
            try:
                s.wait(30)
            except subprocess.TimeoutExpired:
                s.kill()
        finished = int(st.get("finished", 0))
        return {
            "seconds": dt,
            "finished": finished,
            "accepted": int(st.get("accepted", 0)),
            "items_per_s": finished / dt,
            "accepted_per_s": int(st.get("accepted", 0)) / dt,
            "cpu_seconds": cpu,
            "cpu_utilization": sum(cpu.values()) / dt / (os.cpu_count() or 1),
            "rejections": st.get("rejections", {}),
        }


# ------------------------------------------------------------------------------ queue layer alone
async def relay_chain(workdir: Path, n: int, batch: int, concurrency: int, envelope_items: int) -> dict:
    """Five pass-through stage processes (``benchmarks/relay.py``) in a chain on a fresh
    nats-server: ``n`` tasks admitted the way the coordinator does (envelopes, awaited in
    windows), forwarded unchanged by the real StageWorker at every hop (module doc, step 4)."""
    import json
    import sys

    from scalequest.common.v1 import items_pb2 as pb

    from benchmarks.relay import ORDER
    from libs.queue import envelope, subjects
    from libs.queue.server import EmbeddedNats
    from libs.queue.topology import connect, ensure_topology

    srv = EmbeddedNats(store_dir=workdir / "relay-nats").start()
    procs: dict[str, subprocess.Popen] = {}
    nc = None
    try:
        nc, js = await connect(srv.url, "relay-bench")
        await ensure_topology(js)
        for name in ORDER:
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.relay", "--nats", srv.url, "--queue", name, "--expect", str(n),
                 "--batch", str(batch), "--concurrency", str(concurrency), "--envelope", str(envelope_items)],
                stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1],
            )  # fmt: skip
        for p in procs.values():
            await asyncio.to_thread(p.stdout.readline)  # {"ready": ...}
        cfg = pb.RunConfig(target=n, seed=1, generator_model="default", solver_model="default", judge_model="default",
                           n_candidates=4, max_outstanding=n, max_tasks=n, selection_rule="reward")  # fmt: skip
        payloads = [pb.GenerateTask(schema_version=pb.SCHEMA_VERSION_1, run_id="relay", item_id=f"relay-{i:07d}",
                                    index=i, seed=i, config=cfg).SerializeToString() for i in range(n)]  # fmt: skip
        ids = [f"relay-{i:07d}.task" for i in range(n)]
        nats_cpu0 = cpu_seconds(srv.pid)
        t0 = time.time()
        window = 2048  # tasks per admission round, like max_outstanding
        for i in range(0, n, window):
            packs = envelope.messages(payloads[i : i + window], ids[i : i + window], max_items=envelope_items,
                                      max_bytes=512 * 1024)  # fmt: skip
            await asyncio.gather(*(js.publish(subjects.GENERATE.subject, pk.payload, headers=pk.headers) for pk in packs))
        published = time.time()
        results = {}
        for name, p in procs.items():
            out, _ = await asyncio.to_thread(p.communicate, timeout=600)
            results[name] = json.loads(out.strip().splitlines()[-1])
        nats_cpu = cpu_seconds(srv.pid) - nats_cpu0
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        if nc is not None:
            await nc.close()
        srv.close()
    dt = results[ORDER[-1]]["last"] - t0
    stage = {q.stream.removeprefix("SQ_"): q.consumer for q in subjects.WORK_QUEUES}
    cpu = {stage[k]: v["cpu_seconds"] for k, v in results.items()} | {"nats-server": nats_cpu}
    return {"items": n, "seconds": dt, "items_per_s": n / dt, "admitted_per_s": n / (published - t0),
            "cpu_seconds": cpu, "cpu_ms_per_item": {k: 1000 * v / n for k, v in cpu.items()},
            "cpu_utilization": sum(cpu.values()) / dt / (os.cpu_count() or 1),
            "messages": {stage[k]: v["messages"] for k, v in results.items()}}  # fmt: skip


# ------------------------------------------------------------------------------ profile
def start_profilers(pids: dict[str, int], out_dir: Path) -> dict[str, subprocess.Popen]:
    spy = shutil.which("py-spy")
    if spy is None:
        print("--profile: py-spy not on PATH (pip install py-spy); no profile")
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    spies = {}
    for name, pid in pids.items():
        if name in STAGES:
            cmd = [spy, "record", "--rate", "200", "--format", "raw", "--idle",
                   "--output", str(out_dir / f"{name}.txt"), "--pid", str(pid)]  # fmt: skip
            spies[name] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return spies


CATEGORIES = (  # first match wins, tested against the innermost frames first
    ("idle (waiting in select)", ("selectors.py", "EpollSelector")),
    ("engine (zero-cost fake)", ("libs/engines/",)),
    ("protobuf", ("google/protobuf", "message.py")),
    ("NATS client", ("nats/",)),
    ("stage worker", ("libs/queue/",)),
    ("stage logic", ("services/", "libs/answers", "libs/runstate", "libs/difficulty")),
    ("asyncio", ("asyncio/",)),
)


def summarize_profile(path: Path) -> dict[str, float]:
    """Share of the main thread's samples per category (module doc)."""
    shares: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        if not frames or not frames[0].startswith("_run_module_as_main"):
            continue  # other threads (executor workers) are idle almost all the time
        total += int(n)
        cat = "other"
        for frame in reversed(frames):
            hit = next((c for c, keys in CATEGORIES if any(k in frame for k in keys)), None)
            if hit:
                cat = hit
                break
        shares[cat] += int(n)
    return {c: v / total for c, v in shares.most_common()} if total else {}


# ------------------------------------------------------------------------------ main
async def run(args) -> dict:
    base = Path(tempfile.mkdtemp(prefix="sq-bench-orch-"))
    variants = ["default", *[v for v in args.filter_variants if v != "default"]]
    reps: list[dict] = []
    profile: dict[str, dict[str, float]] = {}
    envelopes = {"SQ_ENVELOPE_MAX_ITEMS": str(args.envelope_items)}
    try:
        for r in range(args.repeats):
            rep: dict[str, Any] = {}
            steps = set(args.steps)
            if "raw" in steps:
                print(f"[repeat {r + 1}/{args.repeats}] raw NATS ...", flush=True)
                rep["raw"] = await raw_nats(base / f"r{r}", args.raw_messages, args.batch_size * args.concurrency,
                                            args.batch_size)  # fmt: skip
            if "relay" in steps:
                rep["relay"] = {}
                for mode, n, env in (("envelopes", args.relay_items, args.envelope_items),
                                     ("single messages", max(1, args.relay_items // 3), 1)):  # fmt: skip
                    print(f"[repeat {r + 1}/{args.repeats}] queue layer alone, {mode} ({n} items) ...", flush=True)
                    rep["relay"][mode] = await relay_chain(base / f"r{r}-relay-{env}", n, args.batch_size,
                                                           args.concurrency, env)  # fmt: skip
                    print(f"    {rep['relay'][mode]['items_per_s']:.0f} items/s", flush=True)
            if "stages" in steps:
                print(f"[repeat {r + 1}/{args.repeats}] per stage ({args.stage_items} items) ...", flush=True)
                rep["stages"] = await per_stage(base / f"r{r}-stages", args.stage_items, args.batch_size,
                                                args.concurrency, envelopes)  # fmt: skip
            rep["e2e"] = {}
            for v in variants:
                print(f"[repeat {r + 1}/{args.repeats}] end to end, {v} ({args.items} items) ...", flush=True)
                rep["e2e"][v] = await end_to_end(base / f"r{r}-e2e-{v}", args.items, args.outstanding,
                                                 args.batch_size, args.concurrency, envelopes | VARIANTS[v])  # fmt: skip
                print(f"    {rep['e2e'][v]['items_per_s']:.0f} items/s", flush=True)
            reps.append(rep)
        if args.profile:
            # A run of its own: sampling slows the processes, so its rate is not reported.
            print("[profile] end to end, default, sampled by py-spy ...", flush=True)
            prof = base / "profile"
            await end_to_end(base / "profiled", args.items, args.outstanding, args.batch_size, args.concurrency,
                             envelopes, prof)  # fmt: skip
            for name in STAGES:
                f = prof / f"{name}.txt"
                if f.exists():
                    profile[name] = summarize_profile(f)
                    if args.profile_out is not None:  # the raw stacks, for flame graphs or a closer look
                        args.profile_out.mkdir(parents=True, exist_ok=True)
                        shutil.copy(f, args.profile_out / f.name)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {"repeats": reps, "profile": profile, "summary": summarize(reps, variants)}


def summarize(reps: list[dict], variants: list[str]) -> dict:
    s: dict[str, Any] = {}
    if "raw" in reps[0]:
        s["raw"] = {k: median(r["raw"][k] for r in reps) for k in reps[0]["raw"]}
    if "stages" in reps[0]:
        s["stages"] = {n: {"items_per_s": median(r["stages"][n]["items_per_s"] for r in reps),
                           "cpu_ms_per_item": median(r["stages"][n]["cpu_ms_per_item"] for r in reps)}
                       for n in STAGES}  # fmt: skip
    s["e2e"] = {v: {"items_per_s": median(r["e2e"][v]["items_per_s"] for r in reps),
                    "accepted_per_s": median(r["e2e"][v]["accepted_per_s"] for r in reps),
                    "cpu_utilization": median(r["e2e"][v]["cpu_utilization"] for r in reps)}
                for v in variants}  # fmt: skip
    if "raw" in reps[0]:
        s["hop_ratio"] = median(r["e2e"]["default"]["items_per_s"] / r["raw"]["hop_per_s"] for r in reps)
    s["relay"] = {m: {"items_per_s": median(r["relay"][m]["items_per_s"] for r in reps),
                      "cpu_ms_per_item": median(sum(r["relay"][m]["cpu_ms_per_item"].values()) for r in reps),
                      "cpu_utilization": median(r["relay"][m]["cpu_utilization"] for r in reps)}
                  for m in reps[0].get("relay", {})}  # fmt: skip
    return s


def report(res: dict, args) -> None:
    reps = res["repeats"]
    variants = list(res["summary"]["e2e"])
    if reps[0].get("raw"):
        print(table(["raw nats-py (1 connection, 300 B)", "msgs/s median (min-max)"],
                    [[k.replace("_per_s", ""), spread([r["raw"][k] for r in reps])] for k in reps[0]["raw"]],
                    "Raw JetStream rates on this machine"))  # fmt: skip
    if reps[0].get("relay"):
        modes = list(reps[0]["relay"])
        print(table(["five pass-through stages", "items/s median (min-max)", "CPU ms/item (all processes)",
                     "CPU used (of all cores)"],
                    [[m, spread([r["relay"][m]["items_per_s"] for r in reps]),
                      median(sum(r["relay"][m]["cpu_ms_per_item"].values()) for r in reps),
                      f"{median(r['relay'][m]['cpu_utilization'] for r in reps):.0%}"] for m in modes],
                    "Queue layer alone: StageWorker + NATS, no stage logic, no engine"))  # fmt: skip
    if reps[0].get("stages"):
        print(table(["stage (alone, draining a full queue)", "items", "items/s median (min-max)", "CPU ms/item"],
                    [[n, reps[0]["stages"][n]["items"], spread([r["stages"][n]["items_per_s"] for r in reps]),
                      median(r["stages"][n]["cpu_ms_per_item"] for r in reps)] for n in STAGES],
                    "Per stage, zero-cost engine"))  # fmt: skip
    rows = []
    for v in variants:
        e = [r["e2e"][v] for r in reps]
        rows.append([v, spread([x["items_per_s"] for x in e]), spread([x["accepted_per_s"] for x in e]),
                     f"{median(x['cpu_utilization'] for x in e):.0%}"])  # fmt: skip
    print(table(["filter settings", "items/s end to end", "accepted/s", "CPU used (of all cores)"], rows,
                f"End to end, {args.items} items, max_outstanding {args.outstanding}"))  # fmt: skip
    names = list(reps[0]["e2e"]["default"]["cpu_seconds"])
    print(table(["process", "CPU s (default run, median)"],
                [[n, median(r["e2e"]["default"]["cpu_seconds"][n] for r in reps)] for n in names],
                "Who is busy end to end"))  # fmt: skip
    if res["profile"]:
        profiles = res["profile"].values()
        cats = sorted({c for p in profiles for c in p}, key=lambda c: -sum(p.get(c, 0) for p in profiles))
        print(table(["main thread time", *res["profile"]],
                    [[c, *(f"{p.get(c, 0):.0%}" for p in res["profile"].values())] for c in cats],
                    "Profile (py-spy, end-to-end run, share of samples)"))  # fmt: skip
    if "hop_ratio" in res["summary"]:
        print(f"\nend to end / raw hop rate: {res['summary']['hop_ratio']:.1%} (default filter settings)")


def main() -> None:
    p = base_parser(NAME, __doc__)
    p.add_argument("--items", type=int, default=20_000, help="tasks admitted in each end-to-end run")
    p.add_argument("--stage-items", type=int, default=4_000, help="tasks queued for the per-stage drains")
    p.add_argument("--outstanding", type=int, default=2_048, help="the run's max_outstanding")
    p.add_argument("--batch-size", type=int, default=CommonSettings.model_fields["batch_size"].default,
                   help="SQ_BATCH_SIZE of every stage but the coordinator (default: the shipped one)")
    p.add_argument("--concurrency", type=int, default=2, help="SQ_WORKER_CONCURRENCY of every service")
    p.add_argument("--raw-messages", type=int, default=20_000)
    p.add_argument("--relay-items", type=int, default=30_000, help="items through the pass-through chain")
    p.add_argument("--envelope-items", type=int, default=64, help="SQ_ENVELOPE_MAX_ITEMS (64 is the shipped default)")
    p.add_argument("--filter-variants", nargs="*", default=["no-neardup", "no-envelopes"], choices=list(VARIANTS),
                   help="end-to-end runs with other settings besides the default")
    p.add_argument("--profile", action="store_true", help="py-spy profile of the first end-to-end run")
    p.add_argument("--profile-out", type=Path, default=None,
                   help="with --profile: keep each service's raw py-spy stacks (<service>.txt) in this folder")
    p.add_argument("--steps", nargs="+", default=["raw", "relay", "stages", "e2e"],
                   choices=["raw", "relay", "stages", "e2e"],
                   help="what to run (end to end always runs); e.g. --steps e2e for a quick A/B of two checkouts")
    args = p.parse_args()
    res = asyncio.run(run(args))
    report(res, args)
    write_result(args.out, NAME, args, res)


if __name__ == "__main__":
    main()
