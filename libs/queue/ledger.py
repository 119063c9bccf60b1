"""The outcome ledger: one KV entry per rejected (or dead-lettered) item of a run.

Bucket ``sq-ledger``, key ``<run_id>.<item_id>``, value ``{"s": stage, "r": reason}``. The
coordinator records a rejection here *before* it acks the outcome message, with a create that
fails when the key exists, so a redelivered outcome (coordinator killed between the two) is
recognised and counted once. Accepted items are not in the ledger: the Parquet shards are their
record. On a restart the coordinator rebuilds its counters from both, and ``scalequest audit``
checks a run's accounting against them.

An entry whose reason starts with ``dlq_`` (the item was dead-lettered) may later be replaced
by the item's real outcome when the dead letter is replayed (``scalequest dlq replay``).
"""

from __future__ import annotations

import asyncio
import json
import logging

from nats.js.errors import (
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from libs.queue.topology import LEDGER_BUCKET, bucket

log = logging.getLogger("scalequest.ledger")


def ledger_key(run_id: str, item_id: str) -> str:
    return f"{run_id}.{item_id}"


def _value(stage: str, reason: str) -> bytes:
    return json.dumps({"s": stage, "r": reason}, separators=(",", ":")).encode()


def _parse(data: bytes | None) -> tuple[str, str] | None:
    if not data:
        return None
    d = json.loads(data)
    return str(d.get("s", "")), str(d.get("r", ""))


async def ledger_kv(js, replicas: int = 1) -> KeyValue:
    """The ledger bucket, created when missing (idempotent)."""
    return await bucket(js, LEDGER_BUCKET, replicas)


async def record(
    kv: KeyValue, run_id: str, item_id: str, stage: str, reason: str, *, replace: bool = False, same_ok: bool = True
) -> bool:
    """Store the item's terminal rejection; False when the ledger already had the item (a
    redelivery). ``replace`` overwrites (a replayed dead letter that now ended otherwise).

    A create whose reply was lost (a timeout while the server did store it) looks like an
    existing entry on the retry: with ``same_ok`` an existing entry with the same stage and
    reason counts as this write. Callers that know which items they already counted (the
    coordinator's ``seen`` set) use that; ``same_ok=False`` is strict first-writer-wins.
    """
    key = ledger_key(run_id, item_id)
    if replace:
        await kv.put(key, _value(stage, reason))
        return True
    try:
        await kv.create(key, _value(stage, reason))
    except KeyWrongLastSequenceError:
        if not same_ok:
            return False
        return await get(kv, run_id, item_id) == (stage, reason)
    return True


async def get(kv: KeyValue, run_id: str, item_id: str) -> tuple[str, str] | None:
    try:
        entry = await kv.get(ledger_key(run_id, item_id))
    except KeyNotFoundError:
        return None
    return _parse(entry.value)


async def forget(kv: KeyValue, run_id: str, item_id: str) -> None:
    """Drop an item's entry (it was accepted after all: its shard is now its record)."""
    try:
        await kv.delete(ledger_key(run_id, item_id))
    except KeyNotFoundError:
        pass


async def entries(kv: KeyValue, run_id: str, timeout: float = 30.0) -> dict[str, tuple[str, str]]:
    """Every live entry of a run: item_id -> (stage, reason)."""
    out: dict[str, tuple[str, str]] = {}
    prefix = f"{run_id}."
    watcher = await kv.watch(f"{run_id}.>", ignore_deletes=True)
    try:
        while True:
            try:
                e = await watcher.updates(timeout=timeout)
            except asyncio.TimeoutError:
                log.warning("ledger: no end-of-initial-values marker for run %s within %.0fs", run_id, timeout)
                break
            if e is None:  # all current values delivered
                break
            if e.operation is not None or not e.value:  # delete / purge marker
                out.pop(e.key[len(prefix):], None)
                continue
            parsed = _parse(e.value)
            if parsed is not None:
                out[e.key[len(prefix):]] = parsed
    finally:
        await watcher.stop()
    return out
