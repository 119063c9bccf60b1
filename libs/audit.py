"""Exactly-once audit of a run (``scalequest audit RUN_ID``; the fault-injection tests and the
soak command use it).

It reads what is durable and checks it item by item:

* the shards: every accepted item once (``duplicates`` lists ids found more than once);
* the coordinator's counters (KV ``run.<id>.state``): accepted = shard rows, finished =
  accepted + rejected, the per-reason counts = the ledger's;
* the ledger (``sq-ledger``): a terminal rejection, with its reason, per rejected item;
* the dead-letter stream: every dead-lettered item of the run has ended as a ``dlq_*``
  rejection or (after a replay) otherwise;
* every admitted item (``<run>-0000000`` .. ``admitted-1``) has exactly one terminal outcome:
  accepted, rejected or dead-lettered; nothing outside them has one.

Call it once the run has ended and the work queues are drained (:func:`wait_drained`), or
items still in flight show up as missing.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

from libs.queue import ledger, subjects
from libs.queue.dlq import list_dead_letters
from libs.queue.kv import kv_get_json
from libs.runstate import state_key
from libs.storage.objectstore import ObjectStore
from libs.storage.shards import list_shards, read_manifest, shard_item_ids

_SHOW = 5  # ids shown per problem


@dataclass
class AuditReport:
    run_id: str
    state: str = ""
    admitted: int = 0
    rows: int = 0
    unique_rows: int = 0
    rejected: int = 0
    dead_lettered: int = 0
    counters: dict = field(default_factory=dict)
    rejections: dict = field(default_factory=dict)  # "stage/reason" -> n, from the ledger
    duplicates: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def lost(self) -> int:
        return len(self.missing)

    def as_dict(self) -> dict:
        return {
            "run_id": self.run_id, "state": self.state, "ok": self.ok, "admitted": self.admitted,
            "rows": self.rows, "unique_rows": self.unique_rows, "rejected": self.rejected,
            "dead_lettered": self.dead_lettered, "lost": self.lost, "duplicates": len(self.duplicates),
            "counters": self.counters, "rejections": self.rejections, "problems": self.problems,
        }  # fmt: skip


def _show(ids) -> str:
    ids = sorted(ids)
    more = f" (+{len(ids) - _SHOW} more)" if len(ids) > _SHOW else ""
    return ", ".join(ids[:_SHOW]) + more


async def audit_run(js, kv, store: ObjectStore, run_id: str) -> AuditReport:
    rep = AuditReport(run_id)
    st = await kv_get_json(kv, state_key(run_id))
    if st is None:
        rep.problems.append(f"run {run_id} has no state in KV (unknown run)")
        return rep
    rep.state = st.get("state", "")
    rep.admitted = int(st.get("admitted", 0))
    rep.counters = {k: st.get(k) for k in ("admitted", "finished", "accepted", "shards")}

    # shards, by item id
    keys = await asyncio.to_thread(list_shards, store, run_id)
    ids: list[str] = []
    for key in keys:
        ids.extend(await asyncio.to_thread(shard_item_ids, store, key))
    counts = Counter(ids)
    rep.rows, rep.unique_rows = len(ids), len(counts)
    rep.duplicates = sorted(i for i, n in counts.items() if n > 1)
    accepted = set(counts)
    manifest = await asyncio.to_thread(read_manifest, store, run_id)
    if manifest is not None:
        listed = {s.key for s in manifest.shards}
        if listed - set(keys):
            rep.problems.append(f"manifest lists shards that do not exist: {_show(listed - set(keys))}")
        if st.get("state") in ("completed", "cancelled", "exhausted") and set(keys) - listed:
            rep.problems.append(f"shards not in the final manifest: {_show(set(keys) - listed)}")

    # ledger and dead letters
    entries = await ledger.entries(await ledger.ledger_kv(js), run_id)
    rep.rejected = len(entries)
    rep.rejections = dict(sorted(Counter(f"{s}/{r}" for s, r in entries.values()).items()))
    letters = await list_dead_letters(js, run_id=run_id)
    dead_ids = {d.item_id for d in letters if d.item_id}
    rep.dead_lettered = sum(1 for s, r in entries.values() if r.startswith("dlq_"))

    if rep.duplicates:
        rep.problems.append(f"{len(rep.duplicates)} item(s) in more than one shard row: {_show(rep.duplicates)}")
    if int(st.get("accepted", -1)) != rep.unique_rows:
        rep.problems.append(f"coordinator counts {st.get('accepted')} accepted, shards hold {rep.unique_rows}")
    counted = {k: v for k, v in (st.get("rejections") or {}).items() if v}
    if counted != rep.rejections:
        rep.problems.append(f"coordinator's rejection counts {counted} differ from the ledger's {rep.rejections}")
    if int(st.get("finished", -1)) != rep.unique_rows + rep.rejected:
        rep.problems.append(
            f"coordinator counts {st.get('finished')} finished, shards + ledger hold {rep.unique_rows + rep.rejected}"
        )
    both = accepted & entries.keys()
    if both:
        rep.problems.append(f"{len(both)} item(s) both accepted and rejected: {_show(both)}")
    admitted = {f"{run_id}-{i:07d}" for i in range(rep.admitted)}
    ended = accepted | entries.keys()
    rep.missing = sorted(admitted - ended)
    rep.unexpected = sorted(ended - admitted)
    if rep.missing:
        rep.problems.append(f"{len(rep.missing)} admitted item(s) without an outcome (lost): {_show(rep.missing)}")
    if rep.unexpected:
        rep.problems.append(f"{len(rep.unexpected)} outcome(s) for items never admitted: {_show(rep.unexpected)}")
    unaccounted = dead_ids - ended
    if unaccounted:
        rep.problems.append(f"{len(unaccounted)} dead-lettered item(s) without an outcome: {_show(unaccounted)}")
    return rep


async def queue_backlog(js) -> dict[str, int]:
    """Messages not yet done per work-queue consumer (pending + delivered but not acked)."""
    out = {}
    for q in subjects.WORK_QUEUES:
        info = await js.consumer_info(q.stream, q.consumer)
        out[q.consumer] = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
    return out


async def wait_drained(js, timeout: float = 120.0, settle: float = 1.0) -> dict[str, int]:
    """Wait until every work queue is empty (twice, ``settle`` seconds apart); returns the last
    backlog (non-empty when ``timeout`` ran out)."""
    deadline = time.monotonic() + timeout
    backlog: dict[str, int] = {}
    quiet_since = None
    while time.monotonic() < deadline:
        try:
            backlog = await queue_backlog(js)
        except Exception:  # noqa: BLE001 -- NATS restarting: ask again
            backlog = {"?": -1}
        if not any(backlog.values()):
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= settle:
                return backlog
        else:
            quiet_since = None
        await asyncio.sleep(0.25)
    return backlog
