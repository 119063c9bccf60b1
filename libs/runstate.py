"""Run state shared through the JetStream KV bucket ``sq-runs``.

Keys: ``run.<id>.config`` (RunConfig as JSON), ``run.<id>.state`` (lifecycle + sink
counters, written by the coordinator) and ``run.<id>.stage.<stage>.<replica>`` (per-replica
stage counters; readers sum them, so replicas never contend on one key).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import defaultdict

from libs.queue.kv import kv_get_json, kv_put_json

log = logging.getLogger("scalequest.runstate")

CLOSED_STATES = ("completed", "cancelled", "exhausted", "failed")


def config_key(run_id: str) -> str:
    return f"run.{run_id}.config"


def state_key(run_id: str) -> str:
    return f"run.{run_id}.state"


def stage_key(run_id: str, stage: str, replica: str) -> str:
    return f"run.{run_id}.stage.{stage}.{replica}"


def replica_id() -> str:
    raw = os.environ.get("HOSTNAME") or socket.gethostname()
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in raw)
    return f"{safe}-{os.getpid()}"


class RunStates:
    """Cached view of whether a run is closed, so stages skip leftover work of finished runs."""

    def __init__(self, kv, ttl: float = 1.0) -> None:
        self.kv = kv
        self.ttl = ttl
        self._cache: dict[str, tuple[float, bool]] = {}
        self._pending: dict[str, asyncio.Future[bool]] = {}

    async def is_closed(self, run_id: str) -> bool:
        if self.kv is None:
            return False
        now = time.monotonic()
        hit = self._cache.get(run_id)
        if hit and (hit[1] or now - hit[0] < self.ttl):
            return hit[1]
        # One KV read per run and expiry, however many items of a batch ask at once.
        pending = self._pending.get(run_id)
        if pending is None:
            pending = asyncio.ensure_future(self._load(run_id))
            self._pending[run_id] = pending
            pending.add_done_callback(lambda _f: self._pending.pop(run_id, None))
        return await asyncio.shield(pending)

    async def _load(self, run_id: str) -> bool:
        state = await kv_get_json(self.kv, state_key(run_id))
        closed = bool(state and state.get("state") in CLOSED_STATES)
        self._cache[run_id] = (time.monotonic(), closed)
        return closed


class StageCounters:
    """Per-run counters of one stage replica (processed items, generated tokens, rejections)."""

    def __init__(self, kv, stage: str, replica: str | None = None) -> None:
        self.kv = kv
        self.stage = stage
        self.replica = replica or replica_id()
        self._data: dict[str, dict] = {}
        self._dirty: set[str] = set()
        self._task: asyncio.Task | None = None

    def add(self, run_id: str, processed: int = 0, tokens: int = 0, reason: str | None = None) -> None:
        d = self._data.setdefault(run_id, {"processed": 0, "tokens": 0, "rejected": defaultdict(int)})
        d["processed"] += processed
        d["tokens"] += tokens
        if reason:
            d["rejected"][reason] += 1
        self._dirty.add(run_id)

    def snapshot(self, run_id: str) -> dict:
        d = self._data.get(run_id, {"processed": 0, "tokens": 0, "rejected": {}})
        return {"processed": d["processed"], "tokens": d["tokens"], "rejected": dict(d["rejected"])}

    async def flush(self) -> None:
        if self.kv is None:
            return
        dirty, self._dirty = self._dirty, set()
        for run_id in dirty:
            try:
                await kv_put_json(self.kv, stage_key(run_id, self.stage, self.replica), self.snapshot(run_id))
            except Exception as e:  # KV briefly unavailable: keep dirty, retry next tick
                self._dirty.add(run_id)
                log.warning("counter flush failed for run %s: %s", run_id, e)

    def start(self, interval: float = 1.0) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(interval)
                await self.flush()

        if self._task is None:
            self._task = asyncio.create_task(loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            self._task = None
        await self.flush()
