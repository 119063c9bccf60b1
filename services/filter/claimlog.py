"""Duplicate claims as an append-only log that every filter replica folds in the same order.

The KV protocols (``dedup.KVDedupIndex``, ``neardup.KVNearDupIndex``) decide each claim with
KV round trips: one create for an exact claim, and about 45 operations for a near-duplicate
claim (its record, 21 band buckets read, 21 compare-and-set appends, the final record). At a few
thousand questions a second those round trips are the filter's whole cost (docs/benchmarks.md).

Here a claim is one entry in a log, and the log is a set of keys in the same dedup bucket
(``sq-dedup``), created and never rewritten::

    xlog.<scope>.<hash>          exact claims     [["x", item_id, key], ...]
    nlog.<scope>.<tag>.<hash>    near claims      [["n", item_id, signature], ["r", item_id, ""], ...]

A bucket is a stream, so every entry has a sequence number, and a replica that watches a
scope's keys (an ordered consumer) sees the entries in that order. The verdict of a claim is a
pure function of the entries before it:

* exact: the first item that claimed a key owns it; a later claimant is a ``duplicate``;
* near: a claim is a near duplicate of the most similar *kept* claim before it (MinHash
  estimate at or above the threshold, candidates from the LSH band tables); otherwise it is kept
  and joins the band tables. A release entry (``r``; the judge rejected the question) turns a
  kept claim released, so later claims are no longer compared with it.

So every replica reaches the same verdict for every claim without any locking: of two similar
questions claimed at the same time by two replicas, the one whose entry comes first is kept and
the other is a near duplicate of it. A claimant learns its verdict by folding the log up to its
own entry.

Cost: claims made in the same event-loop tick (a batch's items, gathered) travel in one entry
per kind, so a batch costs one create per kind, not dozens of round trips per item; the fold
is in memory. An entry's key hashes its claims: a batch that is redelivered and claims the same
items again finds its entry already there (create fails) and uses its sequence number; items
claimed again in another batch get the verdict of their first claim. Each replica keeps the
folded state of the scopes it serves (``max_scopes``, least recently used first out): about 600
bytes per near claim, so a run of a million questions needs about 600 MB per filter replica.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from nats.js.api import DeliverPolicy
from nats.js.errors import KeyWrongLastSequenceError

from libs.aio import TickBatcher
from services.filter.neardup import (
    MinHashConfig,
    NearDupMatch,
    _decode_sig,
    _encode_sig,
)

log = logging.getLogger("scalequest.filter.claimlog")

EXACT, NEAR, RELEASE = "x", "n", "r"


@lru_cache(maxsize=1024)
def _safe(scope: str) -> str:
    """A scope as one KV key token (run ids already are; anything else is hashed)."""
    ok = scope and all(c.isalnum() or c in "-_" for c in scope) and len(scope) <= 128
    return scope if ok else "h" + hashlib.blake2b(scope.encode(), digest_size=12).hexdigest()


@dataclass
class _Claim:
    kind: str
    item_id: str
    data: str


@dataclass
class _Fold:
    """The folded state of one log (one scope and kind); see the module doc for the rules."""

    config: MinHashConfig | None
    max_bucket: int
    seq: int = 0  # last folded stream sequence
    owners: dict[str, str] = field(default_factory=dict)  # exact: key -> first claimant
    exact: dict[tuple[str, str], bool] = field(default_factory=dict)  # (item, key) -> owns it
    status: dict[str, str] = field(default_factory=dict)  # near: item -> kept | dup | released
    matches: dict[str, NearDupMatch] = field(default_factory=dict)  # near: dup item -> its match
    # Kept claims' signatures, one row each in claim order (released ones stay, marked dead);
    # the band tables list rows, so a claim's candidates are compared in one numpy operation.
    mat: np.ndarray | None = None
    alive: np.ndarray | None = None
    rows: int = 0
    row_of: dict[str, int] = field(default_factory=dict)
    items: list[str] = field(default_factory=list)
    bands: dict[int, list[int]] = field(default_factory=dict)
    waiters: list[tuple[int, asyncio.Future]] = field(default_factory=list)

    def apply(self, seq: int, entry: list) -> None:
        near = iter(self._signatures([data for kind, _, data in entry if kind == NEAR]))
        run: list[tuple[str, np.ndarray, list[int]]] = []  # consecutive near claims, folded together
        for kind, item, data in entry:
            if kind == NEAR:
                run.append((item, *next(near)))
                continue
            if run:
                self._near_run(run)
                run = []
            if kind == EXACT:
                owner = self.owners.setdefault(data, item)
                self.exact.setdefault((item, data), owner == item)
            elif kind == RELEASE and self.status.get(item) == "kept":
                self.status[item] = "released"
                row = self.row_of.get(item)
                if row is not None and self.alive is not None:
                    self.alive[row] = False
        if run:
            self._near_run(run)
        self.seq = seq
        still = []
        for want, fut in self.waiters:
            if want <= seq:
                if not fut.done():
                    fut.set_result(None)
            else:
                still.append((want, fut))
        self.waiters = still

    def _signatures(self, datas: list[str]) -> list[tuple[np.ndarray, list[int]]]:
        """(signature, band keys) of an entry's near claims, decoded and banded all at once."""
        if not datas or self.config is None:
            return []
        raw = [binascii.a2b_base64(d) for d in datas]
        if len(set(map(len, raw))) == 1:  # one signature space: decoded as one matrix
            sigs = np.frombuffer(b"".join(raw), dtype="<u4").reshape(len(raw), -1)
            return list(zip(sigs, self.config.band_ids(sigs)))
        return [(s, self.config.band_keys(s)) for s in map(_decode_sig, datas)]  # see _near_run

    def _near_run(self, run: list[tuple[str, np.ndarray, list[int]]]) -> None:
        """Fold consecutive near claims ``(item, signature, band keys)`` in order.

        The same verdicts as one claim at a time, with the comparisons against the claims kept
        before the run done in one numpy step: every live kept claimant sharing a band is a
        candidate, and the most similar one is the match (the earliest of equally similar
        ones). Claims kept earlier in the same run are candidates too, checked as the run goes."""
        assert self.config is not None
        width = len(run[0][1])
        if any(len(sig) != width for _, sig, _ in run):  # signatures of several spaces: one at a time
            if len(run) > 1:
                for claim in run:
                    self._near_run([claim])
                return
        if self.mat is None:
            self.mat = np.empty((1024, width), dtype=run[0][1].dtype)
            self.alive = np.zeros(1024, dtype=bool)
        if width != self.mat.shape[1]:  # not of this signature space (the tag names it): no match
            for item, _, _ in run:
                if item not in self.status:
                    log.error("claim log: signature of %s has %d values, expected %d; kept unindexed", item,
                              width, self.mat.shape[1])  # fmt: skip
                    self.status[item] = "kept"
            return
        bands, status = self.bands, self.status
        sigs = run[0][1][None, :] if len(run) == 1 else np.stack([sig for _, sig, _ in run])
        # Candidates among the claims kept before this run: (claim, row) pairs, rows ascending per claim.
        owners: list[int] = []
        rows: list[int] = []
        for j, (item, _, keys) in enumerate(run):
            if item in status:
                continue
            members = [m for m in map(bands.get, keys) if m]
            if members:
                found = members[0] if len(members) == 1 else sorted(set().union(*members))
                rows.extend(found)
                owners.extend([j] * len(found))
        best: dict[int, tuple[int, int]] = {}  # claim -> (row, equal values) of its best earlier match
        if rows:
            r = np.asarray(rows, dtype=np.intp)
            o = np.asarray(owners, dtype=np.intp)
            live = self.alive[r]  # type: ignore[index]
            r, o = r[live], o[live]
            if r.size:
                hits = np.count_nonzero(self.mat[r] == sigs[o], axis=1)
                order = np.lexsort((r, -hits, o))  # per claim: most equal values first, then the earliest row
                o, r, hits = o[order], r[order], hits[order]
                first = np.ones(len(o), dtype=bool)
                first[1:] = o[1:] != o[:-1]
                best = dict(zip(o[first].tolist(), zip(r[first].tolist(), hits[first].tolist())))
        start = self.rows  # rows from here on are claims kept in this run
        touched: set[int] = set()  # their band keys
        threshold, max_bucket = self.config.threshold, self.max_bucket
        for j, (item, sig, keys) in enumerate(run):
            if item in status:  # claimed before: its first verdict stands
                continue
            match = best.get(j)
            if not touched.isdisjoint(keys):  # shares a band with a claim kept in this run
                found = sorted({m for k in keys if k in touched for m in bands[k] if m >= start})
                if found:
                    hits = np.count_nonzero(self.mat[found] == sig, axis=1)
                    top = int(hits.argmax())
                    if match is None or hits[top] > match[1]:  # a tie goes to the earlier row
                        match = (found[top], int(hits[top]))
            if match is not None and match[1] / width >= threshold:
                status[item] = "dup"
                self.matches[item] = NearDupMatch(self.items[match[0]], match[1] / width)
                continue
            status[item] = "kept"
            row = self.rows
            if row == len(self.mat):
                self.mat = np.concatenate([self.mat, np.empty_like(self.mat)])
                self.alive = np.concatenate([self.alive, np.zeros(len(self.alive), dtype=bool)])  # type: ignore[list-item]
            self.mat[row] = sig
            self.alive[row] = True  # type: ignore[index]
            self.rows += 1
            self.row_of[item] = row
            self.items.append(item)
            for k in keys:
                members = bands.get(k)
                if members is None:
                    bands[k] = [row]
                elif len(members) < max_bucket:
                    members.append(row)
            touched.update(keys)

    def verdict(self, claim: _Claim) -> object:
        if claim.kind == EXACT:
            return self.exact.get((claim.item_id, claim.data), True)
        if claim.kind == NEAR:
            return self.matches.get(claim.item_id) if self.status.get(claim.item_id) == "dup" else None
        return None


class ClaimLog:
    """Exact and near-duplicate claims of one filter replica (module doc).

    ``exact`` and ``near`` are the two indexes the filter stage uses (same methods as the KV
    ones)."""

    def __init__(self, js, kv, bucket: str, config: MinHashConfig, *, max_bucket: int = 2000,
                 max_scopes: int = 8) -> None:  # fmt: skip
        self.js = js
        self.kv = kv
        self.stream = f"KV_{bucket}"
        self.bucket = bucket
        self.config = config
        self.max_bucket = max_bucket
        self.max_scopes = max_scopes
        self._folds: OrderedDict[str, tuple[_Fold, object]] = OrderedDict()
        self._opening: dict[str, asyncio.Future] = {}
        self._batcher: TickBatcher[str, _Claim, object] = TickBatcher(self._flush)
        self.entries_written = 0
        self.exact = _ExactView(self)
        self.near = _NearView(self)

    def _log_prefix(self, kind: str, scope: str) -> str:
        return f"xlog.{_safe(scope)}" if kind == EXACT else f"nlog.{_safe(scope)}.{self.config.tag}"

    # ------------------------------------------------------------------ claims
    async def _claim_many(self, kind: str, scope: str, claims: list[tuple[str, str]]) -> list[object]:
        """Verdicts of ``(item_id, data)`` claims of one kind and scope (one future for all)."""
        return await self._batcher.submit_many(self._log_prefix(kind, scope), [_Claim(kind, i, d) for i, d in claims])

    async def _flush(self, prefix: str, claims: list[_Claim]) -> list[object]:
        """One log entry for a gathered batch of claims; their verdicts once it is folded."""
        fold = await self._fold_of(prefix)
        entry = [[c.kind, c.item_id, c.data] for c in claims]
        body = json.dumps(entry, separators=(",", ":")).encode()
        key = f"{prefix}.{hashlib.blake2b(body, digest_size=12).hexdigest()}"
        try:
            seq = await self.kv.create(key, body)
            self.entries_written += 1
        except KeyWrongLastSequenceError:  # the same claims were logged before (a retry)
            seq = (await self.kv.get(key)).revision
        if fold.seq < seq:
            waiter = asyncio.get_running_loop().create_future()
            fold.waiters.append((seq, waiter))
            await asyncio.wait_for(waiter, 30.0)
        return [fold.verdict(c) for c in claims]

    async def _fold_of(self, prefix: str) -> _Fold:
        """The folded log under ``prefix``, watched from its first entry (opened once)."""
        got = self._folds.get(prefix)
        if got is not None:
            self._folds.move_to_end(prefix)
            return got[0]
        opening = self._opening.get(prefix)
        if opening is not None:
            return await asyncio.shield(opening)
        opening = self._opening[prefix] = asyncio.get_running_loop().create_future()
        try:
            fold = _Fold(self.config if prefix.startswith("nlog.") else None, self.max_bucket)

            async def on_msg(msg) -> None:
                if not msg.data:  # a deleted or purged key: nothing to fold
                    return
                try:
                    entry = json.loads(msg.data)
                except ValueError:
                    log.error("claim log %s: unreadable entry at seq %s; skipped", prefix, msg.metadata.sequence.stream)
                    return
                fold.apply(int(msg.metadata.sequence.stream), entry)

            sub = await self.js.subscribe(f"$KV.{self.bucket}.{prefix}.>", stream=self.stream, cb=on_msg,
                                          ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)  # fmt: skip
            self._folds[prefix] = (fold, sub)
            while len(self._folds) > self.max_scopes:
                _, (_, old) = self._folds.popitem(last=False)
                try:
                    await old.unsubscribe()
                except Exception as e:  # noqa: BLE001 -- the connection is closing: nothing to free
                    log.debug("claim log: unsubscribe: %s", e)
            opening.set_result(fold)
            return fold
        except BaseException as e:
            opening.set_exception(e)
            opening.exception()  # retrieved: waiters re-raise it themselves
            raise
        finally:
            self._opening.pop(prefix, None)

    async def close(self) -> None:
        for _, sub in self._folds.values():
            try:
                await sub.unsubscribe()
            except Exception as e:  # noqa: BLE001
                log.debug("claim log: unsubscribe: %s", e)
        self._folds.clear()


class _ExactView:
    def __init__(self, log_: ClaimLog) -> None:
        self._log = log_

    async def claim(self, scope: str, key: str, item_id: str) -> bool:
        """True when ``item_id`` owns ``key`` in ``scope`` (first claimant), False for a duplicate."""
        return (await self.claim_many(scope, [(key, item_id)]))[0]

    async def claim_many(self, scope: str, claims: list[tuple[str, str]]) -> list[bool]:
        """:meth:`claim` of ``(key, item_id)`` pairs, in one log entry with whatever else this tick claims."""
        return [bool(v) for v in await self._log._claim_many(EXACT, scope, [(i, k) for k, i in claims])]


class _NearView:
    def __init__(self, log_: ClaimLog) -> None:
        self._log = log_

    async def claim(self, scope: str, item_id: str, text: str) -> NearDupMatch | None:
        """None when ``text`` is no near duplicate of a kept claim before it, else the best match."""
        return (await self.claim_many(scope, [(item_id, text)]))[0]

    async def release(self, scope: str, item_id: str) -> None:
        """Give the item's claim up (a later check rejected it)."""
        await self.release_many(scope, [(item_id,)])

    async def claim_many(self, scope: str, claims: list[tuple[str, str]]) -> list[NearDupMatch | None]:
        """:meth:`claim` of ``(item_id, text)`` pairs, in one log entry with whatever else this tick claims."""
        sigs = self._log.config.signatures([t for _, t in claims])
        return await self._log._claim_many(NEAR, scope, [(i, _encode_sig(s)) for (i, _), s in zip(claims, sigs)])  # type: ignore[return-value]

    async def release_many(self, scope: str, claims: list[tuple[str]]) -> list[None]:
        """:meth:`release` of ``(item_id,)`` tuples."""
        await self._log._claim_many(RELEASE, scope, [(i, "") for (i,) in claims])
        return [None] * len(claims)
