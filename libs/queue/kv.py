"""JSON helpers on a JetStream KV bucket (the runs bucket: configs, states, counters).

Values are compact UTF-8 JSON. ``kv_update_json`` is an optimistic compare-and-set loop on the
key's revision, so concurrent writers (replicas, the CLI) never lose each other's updates.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import random
from collections.abc import Callable
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

log = logging.getLogger("scalequest.queue")


class CasConflict(RuntimeError):
    """``kv_update_json`` lost the compare-and-set race too many times in a row."""


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def _loads(data: bytes | None) -> Any:
    if not data:
        return None
    return json.loads(data)


async def kv_put_json(kv: KeyValue, key: str, obj: Any) -> int:
    """Store ``obj`` as JSON under ``key`` unconditionally; returns the new revision."""
    return await kv.put(key, _dumps(obj))


async def kv_get_json(kv: KeyValue, key: str) -> Any | None:
    """The JSON value under ``key``; None when the key is absent or deleted."""
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:  # includes deleted / purged keys
        return None
    return _loads(entry.value)


async def kv_update_json(
    kv: KeyValue,
    key: str,
    fn: Callable[[Any | None], Any],
    *,
    max_attempts: int = 200,
) -> Any:
    """Read-modify-write ``key`` atomically: ``new = fn(old)``, stored only if nobody wrote in between.

    ``fn`` receives a private copy of the current value (None when the key is absent) and returns
    the new value; it may be called several times on conflicts, so it must be pure. Creates the
    key when absent. Returns the value that was stored.
    """
    for attempt in range(max_attempts):
        try:
            entry = await kv.get(key)
            old, revision = _loads(entry.value), entry.revision
        except KeyNotFoundError:
            old, revision = None, None
        new = fn(copy.deepcopy(old))
        try:
            if revision is None:
                await kv.create(key, _dumps(new))  # fails if someone created it meanwhile
            else:
                await kv.update(key, _dumps(new), last=revision)
            return new
        except KeyWrongLastSequenceError:
            # Lost the race: back off a little (jittered, growing) and retry on the fresh value.
            await asyncio.sleep(random.uniform(0, min(0.001 * (2**attempt), 0.05)))
    raise CasConflict(f"kv_update_json({key!r}): gave up after {max_attempts} conflicting attempts")


# A watch's consumer lives on the server until it has been idle this long; nats-py's default
# (5 minutes, also what ``KeyValue.keys()`` uses) left one consumer per call behind, so a status
# poll every 0.2 s reached the stream's consumer limit within minutes of a long run.
WATCH_IDLE_SECONDS = 5.0


async def kv_latest_json(kv: KeyValue, key_filter: str) -> dict[str, Any]:
    """The JSON value of every live key matching ``key_filter`` (NATS wildcards, e.g.
    ``run.r1.stage.>``), read by one short-lived watch: one consumer that the server drops
    within seconds, and no read per key."""
    watcher = await kv.watch(key_filter, ignore_deletes=True, inactive_threshold=WATCH_IDLE_SECONDS)
    out: dict[str, Any] = {}
    try:
        async for entry in watcher:
            if entry is None:  # the marker after the last current value
                break
            out[entry.key] = _loads(entry.value)
    finally:
        await watcher.stop()
    return out


async def kv_keys(kv: KeyValue, prefix: str = "") -> list[str]:
    """Sorted keys starting with ``prefix`` (a plain string prefix); [] when there are none.
    ``KeyValue.keys()`` with a consumer the server drops within seconds (see WATCH_IDLE_SECONDS)."""
    watcher = await kv.watch(">", ignore_deletes=True, meta_only=True, inactive_threshold=WATCH_IDLE_SECONDS)
    keys: list[str] = []
    try:
        async for entry in watcher:
            if entry is None:  # the marker after the last current key
                break
            if entry.key.startswith(prefix):
                keys.append(entry.key)
    finally:
        await watcher.stop()
    return sorted(keys)
