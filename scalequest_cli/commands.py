"""Implementations of the CLI commands (imported lazily: vLLM and gRPC load only when needed)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path

import grpc
from rich.console import Console
from scalequest.common.v1 import items_pb2 as pb
from scalequest.coordinator.v1 import coordinator_pb2 as capi
from scalequest.coordinator.v1 import coordinator_pb2_grpc as capi_grpc

from libs.errors import ConfigError, NotFound
from libs.grpc.channel import open_channel
from libs.settings import load_settings
from libs.storage.objectstore import open_store
from libs.storage.shards import (
    list_shards,
    read_manifest,
    read_shard,
    records_to_parquet,
)

log = logging.getLogger("scalequest.cli")


def run_overrides(args) -> dict[str, dict]:
    engine = {"engine": args.engine, "model": args.model}
    optimizer: dict = {}
    if getattr(args, "optimizer_base_url", ""):
        optimizer = {"optimizer_engine": "openai", "optimizer_model": args.optimizer_model,
                     "optimizer_base_url": args.optimizer_base_url}
    elif getattr(args, "optimizer_model", ""):
        optimizer = {"optimizer_engine": args.engine, "optimizer_model": args.optimizer_model}
    # Engine stages: one item per fetch, and as many fetch loops as the run may have tasks
    # outstanding. The queue worker finishes a whole fetched batch before it fetches again, so
    # with batches of 16 one long generation held up to 15 finished items and the items queued
    # behind them, and the shared engine ran half empty (benchmarks/efficiency.py). With one item
    # per loop an item's loop fetches the next the moment it is done; admission
    # (max_outstanding) stays the only bound on work in flight.
    # One message per item too (no envelopes): an envelope would put several items back in one
    # loop, which works through them batch_size at a time.
    stage = {"batch_size": 1, "worker_concurrency": max(1, min(256, getattr(args, "max_outstanding", 32))),
             "envelope_max_items": 1}
    return {
        "questiongen": {**engine, **optimizer, **stage},
        "filter": {**engine, "judge_max_tokens": args.judge_max_tokens, **stage},
        "solver": {**engine, "answer_fallback": args.answer_fallback, "solve_prompt": args.solver_prompt, **stage},
        "reward": {**engine, **stage},
        # The sink holds records un-acked until their shard is durable: give it room.
        "coordinator": {"worker_concurrency": 8, "batch_size": 32, "writer_id": "w0", "envelope_max_items": 1},
    }


def run_config(args, model_name: str) -> pb.RunConfig:
    return pb.RunConfig(
        target=args.target,
        seed=args.seed,
        generator_model=model_name,
        solver_model=model_name,
        judge_model=model_name,
        question_sampling=pb.Sampling(temperature=1.0, top_p=0.99, max_tokens=args.question_max_tokens),
        solution_sampling=pb.Sampling(temperature=0.7, top_p=0.95, max_tokens=args.solution_max_tokens),
        n_candidates=args.n_candidates,
        mode=pb.GENERATION_MODE_INSTRUCTED if args.mode == "instructed" else pb.GENERATION_MODE_SCRATCH,
        selection_rule=args.selection_rule,
        min_agreement=args.min_agreement,
        max_outstanding=args.max_outstanding,
        shard_max_records=args.shard_max_records,
        shard_max_seconds=args.shard_max_seconds,
        judge_enabled=not args.no_judge,
        difficulty_keep=getattr(args, "difficulty_keep", ""),
        run_type=pb.RUN_TYPE_QPO if getattr(args, "run_type", "synthesis") == "qpo" else pb.RUN_TYPE_SYNTHESIS,
        optimizer_model=getattr(args, "optimizer_model", "") or model_name,
        optimizer_sampling=pb.Sampling(temperature=0.0, top_p=1.0, max_tokens=getattr(args, "optimizer_max_tokens", 512)),
    )


#: Seconds the embedded pipeline's workers get, once the run has ended, to finish what they
#: hold before cancelling it at shutdown.
RUN_END_GRACE_SECONDS = 2.0


async def cmd_run(args) -> int:
    from scalequest_cli.embedded import start_pipeline
    from scalequest_cli.view import ProgressView, samples_table, summary_table

    console = Console()
    t0 = time.monotonic()
    async with AsyncExitStack() as stack:
        console.print("[bold]scalequest[/] starting embedded pipeline (NATS, object store, engine, 5 services)...")
        pipe = await start_pipeline(nats_url=args.nats_url, store_url=args.store, overrides=run_overrides(args), stack=stack)
        t_ready = time.monotonic()
        channel = open_channel(f"127.0.0.1:{pipe.port('coordinator')}")  # TLS when SQ_GRPC_TLS_CA is set
        stack.push_async_callback(channel.close)
        stub = capi_grpc.CoordinatorServiceStub(channel)
        name = args.model if args.model != "default" else "SmolLM2-135M-Instruct"
        resp = await stub.StartRun(capi.StartRunRequest(config=run_config(args, name), run_id=args.run_id))
        run_id = resp.run_id
        console.print(f"run id: [bold cyan]{run_id}[/]  (services up in {t_ready - t0:.1f}s, store {args.store})")
        t_run = time.monotonic()
        if args.quiet:
            async for st in stub.StreamProgress(capi.StreamProgressRequest(run_id=run_id, interval_seconds=1.0)):
                pass
        else:
            with ProgressView(console, args.target) as view:
                async for st in stub.StreamProgress(capi.StreamProgressRequest(run_id=run_id, interval_seconds=0.5)):
                    view.update(st)
        wall = time.monotonic() - t_run
        await pipe.flush_counters()
        final = (await stub.GetRun(capi.GetRunRequest(run_id=run_id))).status
        # A solver call still running for a task the run no longer needs used to hold the
        # shutdown for the full grace (20 s of a 3-minute CPU run).
        pipe.end_in_flight_work_after(RUN_END_GRACE_SECONDS)
    store = open_store(args.store)
    rows = []
    for key in list_shards(store, run_id)[:1]:
        rows = read_shard(store, key)
    console.print(summary_table(final, wall))
    if rows:
        console.print(samples_table(rows))
    console.print(f"manifest: {store.uri(f'runs/{run_id}/manifest.json')}")
    if args.json:
        from google.protobuf.json_format import MessageToDict

        print(json.dumps({"wall_seconds": wall, **MessageToDict(final, preserving_proto_field_name=True)}))
    console.print(f"run id: {run_id}")
    return 0 if final.state == "completed" else 1


#: How long `serve` under a restricted NATS user waits for the bootstrap to create its topology.
TOPOLOGY_WAIT_SECONDS = 300.0


async def cmd_serve(service: str) -> int:
    from libs.engines.registry import close_all
    from libs.logging import setup_logging
    from libs.queue.auth import (
        client_options,
        manages_topology,
        redact_url,
        verify_topology,
    )
    from libs.queue.subjects import RUNS_BUCKET
    from libs.queue.topology import connect, ensure_topology
    from libs.service import Infra
    from services.registry import service_module

    mod = service_module(service)
    settings = load_settings(mod.Settings)
    setup_logging(settings.log_level, json=settings.log_json, service=service)
    nats_opts = client_options(settings)  # credentials + TLS (docs/security.md)
    try:
        nc, js = await asyncio.wait_for(connect(settings.nats_url, name=f"scalequest-{service}", **nats_opts), 60)
    except Exception as e:
        raise ConfigError(f"cannot connect to NATS at SQ_NATS_URL={redact_url(settings.nats_url)}: {e}") from None
    if manages_topology(settings):
        # Same replicas as bootstrap: ensure_topology updates in place, so a smaller value here
        # would shrink the streams bootstrap created.
        await ensure_topology(js, ack_wait=settings.ack_wait_seconds, max_deliver=settings.max_deliver,
                              replicas=settings.nats_replicas)
    else:  # a restricted NATS user may not create anything: bootstrap (admin) does, maybe right now
        await verify_topology(js, service, wait_seconds=TOPOLOGY_WAIT_SECONDS)
    kv = await js.key_value(RUNS_BUCKET)
    store = open_store(settings.store_url) if service == "coordinator" else None
    svc = await mod.build(settings, Infra(nc=nc, js=js, kv=kv, store=store))
    svc.runtime.register_closer(close_all, "engines")
    svc.runtime.install_signal_handlers()
    return await svc.runtime.run_until_shutdown()


async def load_status(run_id: str, store_url: str, nats_url: str | None) -> dict | None:
    """A run's status dict: live from the KV bucket when NATS is given and knows the run, else
    ``runs/<id>/status.json`` (written when a run closes), else None."""
    if nats_url:
        from nats.js.errors import BucketNotFoundError

        from libs.queue.auth import client_options_from_env
        from libs.queue.subjects import RUNS_BUCKET
        from libs.queue.topology import connect
        from services.coordinator.runs import RunManager
        from services.coordinator.settings import CoordinatorSettings

        nc, js = await asyncio.wait_for(connect(nats_url, name="scalequest-status", **client_options_from_env()), 10)
        try:
            kv = await js.key_value(RUNS_BUCKET)
            return await RunManager(CoordinatorSettings(), js, kv, None).status(run_id)
        except (NotFound, BucketNotFoundError):  # unknown run, or a NATS without the topology
            pass
        finally:
            await nc.close()
    store = open_store(store_url)
    try:
        return json.loads(store.get_bytes(f"runs/{run_id}/status.json"))
    except Exception:
        return None


def start_config(args) -> pb.RunConfig:
    """RunConfig from `scalequest start` flags: flags left out stay unset, so the coordinator's
    own defaults (SQ_RUN_*, the paper's settings) apply."""
    cfg = pb.RunConfig(target=args.target, difficulty_keep=args.difficulty_keep)
    if args.run_type:
        cfg.run_type = pb.RUN_TYPE_QPO if args.run_type == "qpo" else pb.RUN_TYPE_SYNTHESIS
    if args.seed:
        cfg.seed = args.seed
    if args.n_candidates:
        cfg.n_candidates = args.n_candidates
    if args.mode:
        cfg.mode = pb.GENERATION_MODE_INSTRUCTED if args.mode == "instructed" else pb.GENERATION_MODE_SCRATCH
    if args.selection_rule:
        cfg.selection_rule = args.selection_rule
    if args.min_agreement:
        cfg.min_agreement = args.min_agreement
    if args.no_judge:
        cfg.judge_enabled = False
    return cfg


async def cmd_start(args) -> int:
    """Start a run through a coordinator's gRPC API and follow its progress until it ends."""
    from scalequest_cli.view import ProgressView, summary_table

    console = Console(stderr=args.json)
    t0 = time.monotonic()
    async with open_channel(args.coordinator) as channel:  # TLS when SQ_GRPC_TLS_CA is set
        try:
            await asyncio.wait_for(channel.channel_ready(), args.connect_timeout)
        except asyncio.TimeoutError:
            raise ConfigError(f"no coordinator answers at --coordinator {args.coordinator}") from None
        stub = capi_grpc.CoordinatorServiceStub(channel)
        try:
            resp = await stub.StartRun(capi.StartRunRequest(config=start_config(args), run_id=args.run_id))
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise ConfigError(f"the coordinator refused the run: {e.details()}") from None
            raise
        run_id = resp.run_id
        console.print(f"run id: [bold cyan]{run_id}[/] on {args.coordinator}")
        if args.detach:
            if args.json:
                print(json.dumps({"run_id": run_id}))
            return 0
        request = capi.StreamProgressRequest(run_id=run_id, interval_seconds=1.0)
        if args.quiet or args.json:
            async for _ in stub.StreamProgress(request):
                pass
        else:
            with ProgressView(console, args.target) as view:
                async for st in stub.StreamProgress(request):
                    view.update(st)
        final = (await stub.GetRun(capi.GetRunRequest(run_id=run_id))).status
    wall = time.monotonic() - t0
    console.print(summary_table(final, wall))
    if args.json:
        from google.protobuf.json_format import MessageToDict

        print(json.dumps({"wall_seconds": wall, **MessageToDict(final, preserving_proto_field_name=True)}))
    return 0 if final.state == "completed" else 1


async def cmd_bootstrap(args) -> int:
    """Create or update every stream, work-queue consumer and KV bucket; safe to run any number
    of times (the Helm chart runs it as a post-install/post-upgrade hook Job). Exit 0 once the topology exists."""
    from libs.queue.auth import client_options, redact_url
    from libs.queue.topology import connect, ensure_topology
    from libs.settings import CommonSettings, load_settings

    settings = load_settings(CommonSettings)
    replicas = args.replicas or settings.nats_replicas
    nats_opts = client_options(settings)  # the admin user when NATS has authorization (docs/security.md)
    try:
        # NATS may come up after this Job starts (same Helm release): retry until the timeout.
        nc, js = await asyncio.wait_for(connect(settings.nats_url, name="scalequest-bootstrap", **nats_opts),
                                        args.connect_timeout)
    except (asyncio.TimeoutError, OSError) as e:
        raise ConfigError(
            f"cannot connect to NATS at SQ_NATS_URL={redact_url(settings.nats_url)} within {args.connect_timeout:.0f}s {e}".rstrip()
        ) from None
    try:
        await ensure_topology(
            js, ack_wait=settings.ack_wait_seconds, max_deliver=settings.max_deliver, replicas=replicas
        )
        streams = [s.config.name for s in await js.streams_info()]
    finally:
        await nc.drain()
    print(f"JetStream topology ready on {redact_url(settings.nats_url)}: streams {', '.join(sorted(streams))}")
    if args.check_store:
        store = open_store(settings.store_url)
        key = "health/bootstrap-check"
        store.put_bytes(key, b"ok", "text/plain")
        store.delete(key)
        print(f"object store ready: {store.url}")
    return 0


async def cmd_status(args) -> int:
    st = await load_status(args.run_id, args.store, args.nats_url)
    if st is None:
        store = open_store(args.store)
        m = read_manifest(store, args.run_id)
        if m is None:
            raise NotFound(f"run {args.run_id} not found (store {args.store}, NATS {args.nats_url or 'not given'})")
        st = {"run_id": m.run_id, "state": m.state, "accepted": m.accepted, "shards": len(m.shards),
              "target": m.config.get("target", 0)}
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    from scalequest_cli.view import summary_table
    from services.coordinator.runs import status_to_proto

    st.setdefault("rejections", {})
    msg = status_to_proto(st)
    wall = (msg.ended_at or time.time()) - msg.started_at if msg.started_at else 0.0
    Console().print(summary_table(msg, wall))
    return 0


def cmd_export(args) -> int:
    store = open_store(args.store)
    keys = list_shards(store, args.run_id)
    if not keys:
        raise NotFound(f"run {args.run_id} has no shards in {args.store}")
    rows = [r for k in keys for r in read_shard(store, k)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.format == "jsonl":
        with out.open("w") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    else:
        out.write_bytes(records_to_parquet(rows))
    print(f"exported {len(rows)} records from {len(keys)} shards to {out}", file=sys.stderr)
    return 0


def default_report_png(run_id: str) -> Path:
    """Where `scalequest report` writes its PNG without --png: the current directory (the store
    may be S3, and a report is a view of the run, not part of its data)."""
    return Path(f"runs_{run_id}_report.png")


async def cmd_report(args) -> int:
    from libs.errors import InvalidArgument
    from libs.storage.shards import manifest_key
    from scalequest_cli.report import build_report, render_png, report_tables

    try:
        manifest_key(args.run_id)
    except ValueError as e:
        raise InvalidArgument(str(e)) from None
    st = await load_status(args.run_id, args.store, args.nats_url)
    store = open_store(args.store)
    m = read_manifest(store, args.run_id)
    keys = list_shards(store, args.run_id)
    if st is None and m is None and not keys:
        raise NotFound(f"run {args.run_id} not found (store {args.store}, NATS {args.nats_url or 'not given'})")
    manifest = json.loads(m.to_json()) if m else None
    rows = (r for k in keys for r in read_shard(store, k))  # one shard in memory at a time
    rep = build_report(st or {"run_id": args.run_id}, manifest, rows)
    png = None
    if not args.no_png:
        png = Path(args.png) if args.png else default_report_png(args.run_id)
        try:
            render_png(rep, str(png))
        except OSError as e:
            raise InvalidArgument(f"cannot write the report PNG to {png}: {e.strerror or e}") from None
    if args.json:
        print(json.dumps({**rep.to_dict(), "png": str(png) if png else None}, indent=2))
    else:
        console = Console()
        for table in report_tables(rep):
            console.print(table)
    if png:
        print(f"report PNG: {png}", file=sys.stderr)
    return 0


def cmd_nats_config(args) -> int:
    """Print (or write) the nats-server ``authorization`` block for the pipeline's users."""
    import os

    from libs.queue import auth

    users = [u.strip() for u in args.users.split(",") if u.strip()] or list(auth.USERS)
    passwords = auth.passwords_from_env(users)
    if args.passwords_dir:
        if not os.path.isdir(args.passwords_dir):
            raise ConfigError(f"--passwords-dir {args.passwords_dir}: not a directory")
        passwords.update(auth.passwords_from_dir(args.passwords_dir, users))
    text = auth.render_config(passwords, hash_passwords=not args.plain, users=users, fmt=args.fmt)
    if not args.out:
        sys.stdout.write(text)
        return 0
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    print(f"wrote NATS authorization for {', '.join(users)} to {args.out}", file=sys.stderr)
    return 0
