"""The outcome ledger: the terminal rejection of every rejected (or dead-lettered) item of a run.

Bucket ``sq-ledger``, two kinds of entries under ``<run_id>.``:

- ``<run_id>.<item_id>`` = ``{"s": stage, "r": reason}``: one item, written with a create that
  fails when the key exists (strict first-writer-wins: late outcomes of ended runs), or put
  (``replace``: a replayed dead letter that now ended otherwise), or deleted (``forget``: it was
  accepted after all).
- ``<run_id>._batch.<hash>`` = ``{"e": [[item_id, stage, reason], ...]}``: the rejections of one
  sink batch in one create (``record_batch``). A running run's coordinator writes these: one
  KV write per batch instead of one per rejected item, which was half of the nats-server's
  work per item and a fifth of the coordinator's (orchestration benchmark). The hash names the
  content, so a retry of the same batch stores nothing new.

The coordinator records a rejection *before* it acks the outcome message. While a run is
loaded, its ``seen`` set (rebuilt from the ledger and the shards on a restart) is what keeps a
redelivered outcome from being counted twice; ``entries`` folds the ledger in stream order,
where an item's first record wins over later batch entries naming it again (a redelivery
recorded in another batch) and per-item puts and deletes apply in order. Accepted items are
not in the ledger: the Parquet shards are their record. ``scalequest audit`` checks a run's
accounting against both.

An entry whose reason starts with ``dlq_`` (the item was dead-lettered) may later be replaced
by the item's real outcome when the dead letter is replayed (``scalequest dlq replay``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging

from nats.js.errors import (
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from libs.aio import TickBatcher
from libs.queue.topology import LEDGER_BUCKET, bucket

log = logging.getLogger("scalequest.ledger")


BATCH = "_batch"  # the key token of batch entries (item ids never are "_batch.<24 hex digits>")


def ledger_key(run_id: str, item_id: str) -> str:
    return f"{run_id}.{item_id}"


def _value(stage: str, reason: str) -> bytes:
    return json.dumps({"s": stage, "r": reason}, separators=(",", ":")).encode()


def _parse(data: bytes | None) -> tuple[str, str] | None:
    if not data:
        return None
    d = json.loads(data)
    return str(d.get("s", "")), str(d.get("r", ""))


def _parse_batch(data: bytes, key: str) -> list[tuple[str, str, str]]:
    try:
        return [(str(i), str(s), str(r)) for i, s, r in json.loads(data)["e"]]
    except (ValueError, KeyError, TypeError) as e:
        log.error("ledger: unreadable batch entry %s (%s); skipped", key, e)
        return []


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
        return await _get_key(kv, run_id, item_id) == (stage, reason)
    return True


async def record_batch(kv: KeyValue, run_id: str, rejections: list[tuple[str, str, str]]) -> None:
    """Store several items' terminal rejections, ``(item_id, stage, reason)`` each, in one entry.
    Idempotent: the same batch again (a retry after a lost reply) is recognised by its key."""
    if not rejections:
        return
    body = json.dumps({"e": [list(r) for r in rejections]}, separators=(",", ":")).encode()
    key = f"{run_id}.{BATCH}.{hashlib.blake2b(body, digest_size=12).hexdigest()}"
    try:
        await kv.create(key, body)
    except KeyWrongLastSequenceError:
        pass  # stored before, with exactly these rejections


class BatchRecorder:
    """Gathers the ``record`` calls made in one event-loop tick (a sink batch's outcomes run
    together) into one ``record_batch`` per run; each caller returns once its entry is stored,
    or gets the error."""

    def __init__(self, kv_of) -> None:
        self._kv_of = kv_of  # async () -> KeyValue
        self._batcher: TickBatcher[str, tuple[str, str, str], None] = TickBatcher(self._flush)
        self.entries_written = 0

    async def record(self, run_id: str, item_id: str, stage: str, reason: str) -> None:
        await self._batcher.submit(run_id, (item_id, stage, reason))

    async def record_many(self, run_id: str, rejections: list[tuple[str, str, str]]) -> None:
        """:meth:`record` of several ``(item_id, stage, reason)`` at once (one future for all)."""
        await self._batcher.submit_many(run_id, rejections)

    async def _flush(self, run_id: str, rejections: list[tuple[str, str, str]]) -> list[None]:
        await record_batch(await self._kv_of(), run_id, rejections)
        self.entries_written += 1
        return [None] * len(rejections)


async def get(kv: KeyValue, run_id: str, item_id: str) -> tuple[str, str] | None:
    """The item's entry (a per-item key, else a scan of the run's entries)."""
    return await _get_key(kv, run_id, item_id) or (await entries(kv, run_id)).get(item_id)


async def _get_key(kv: KeyValue, run_id: str, item_id: str) -> tuple[str, str] | None:
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
    """Every live entry of a run: item_id -> (stage, reason), folded in stream order (module doc)."""
    out: dict[str, tuple[str, str]] = {}
    prefix = f"{run_id}."
    batch_prefix = f"{BATCH}."
    # Deletes too: a forgotten item may also be named by a batch entry before it.
    watcher = await kv.watch(f"{run_id}.>")
    try:
        while True:
            try:
                e = await watcher.updates(timeout=timeout)
            except asyncio.TimeoutError:
                log.warning("ledger: no end-of-initial-values marker for run %s within %.0fs", run_id, timeout)
                break
            if e is None:  # all current values delivered
                break
            name = e.key[len(prefix):]
            if name.startswith(batch_prefix):
                if e.value and e.operation is None:
                    for item_id, stage, reason in _parse_batch(e.value, e.key):
                        out.setdefault(item_id, (stage, reason))
                continue
            if e.operation is not None or not e.value:  # delete / purge marker
                out.pop(name, None)
                continue
            parsed = _parse(e.value)
            if parsed is not None:
                out[name] = parsed
    finally:
        await watcher.stop()
    return out
