"""Follow a run's shards as they are written: a restartable, exactly-once record stream.

:class:`RunShardStream` reads a run's events (``scalequest.events.<run_id>.shard`` carrying
``ShardAnnouncement``, ``scalequest.events.<run_id>.end`` carrying ``RunEnd``; stream
``SQ_EVENTS``, limits retention, so a consumer that starts late still sees every event) with a
durable JetStream pull consumer, downloads each announced shard from the object store and yields
its records in order. Iteration ends once the run's end has been announced and every shard of
the run has been yielded.

Progress (which shards are done, how far into the current shard a stopped reader got, whether
the end was reached) is kept per consumer in the JetStream KV bucket ``sq-trainer``, so
a restarted process with the same consumer name continues where the last one stopped:

* a shard is committed (KV ``done`` + ack of its announcement) only after all of its records
  were handed out and the reader came back for more;
* :meth:`RunShardStream.close` records the offset reached inside the current shard and naks its
  announcement, so the next incarnation gets it at once and skips what was already consumed;
* a redelivered announcement of a shard already done is acked and skipped;
* at the end, shards in the run's manifest that were never announced (an announcement publish
  may fail after the shard is durable) are read from the store too;
* the end may overtake the run's last shards (the coordinator counts a record as accepted before
  its shard is written): the stream ends only once the records the end announces have all
  arrived, or ``end_grace_seconds`` after the end, with a warning.

So the union of the records yielded across clean stops and restarts is every record of the run
exactly once. After a crash (no ``close``), the shard in progress is read again from its start
once its ack wait expires: at-least-once, for at most one shard.

A new iteration always starts from the committed position, not from where an abandoned earlier
iterator was (libraries peek at the first example of a dataset before training; that must not
move the stream). :meth:`RunShardStream.peek` returns the first pending record without
iterating at all.

The NATS client runs on an event loop in a private thread; the iterator is synchronous, as
PyTorch / Hugging Face data loaders expect.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.js import api
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError
from scalequest.common.v1 import items_pb2 as pb

from libs.queue import subjects
from libs.queue.auth import client_options_from_env, redact_url
from libs.queue.topology import connect, stream_configs
from libs.storage.objectstore import ObjectStore, open_store
from libs.storage.shards import read_manifest, read_shard

log = logging.getLogger("scalequest.streaming")

#: KV bucket with one progress entry per stream consumer.
PROGRESS_BUCKET = "sq-trainer"
TERMINAL_STATES = frozenset({"completed", "cancelled", "exhausted", "failed"})
_NAME_RE = re.compile(r"[^A-Za-z0-9_-]+")


def consumer_name(job: str) -> str:
    """Durable consumer name for a training job: ``trainer-<job>`` with characters NATS does not
    allow in names replaced by ``-``."""
    base = _NAME_RE.sub("-", job).strip("-") or "job"
    return f"trainer-{base}"[:128]


def run_events_subject(run_id: str) -> str:
    """Every event of one run (shard announcements and the end)."""
    return subjects.shard_subject(run_id).rsplit(".", 1)[0] + ".>"


class StreamError(RuntimeError):
    """The stream cannot be followed (NATS unreachable, consumer bound to another run...)."""


# --------------------------------------------------------------------------------------------
# progress record


@dataclass
class Progress:
    """What a consumer has committed: done shard keys, a partial offset, the end."""

    run_id: str
    done: set[str] = field(default_factory=set)
    partial_key: str = ""
    partial_offset: int = 0
    ended: bool = False
    records: int = 0  # records in committed shards

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "run_id": self.run_id,
                "done": _compress(self.done),
                "partial": {"key": self.partial_key, "offset": self.partial_offset} if self.partial_key else None,
                "ended": self.ended,
                "records": self.records,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes, run_id: str) -> Progress:
        d = json.loads(data)
        partial = d.get("partial") or {}
        return cls(
            run_id=d.get("run_id", run_id),
            done=_expand(d.get("done") or {}),
            partial_key=partial.get("key", ""),
            partial_offset=int(partial.get("offset", 0)),
            ended=bool(d.get("ended")),
            records=int(d.get("records", 0)),
        )


_SHARD_KEY_RE = re.compile(r"(?P<dir>.*/)(?P<writer>[A-Za-z0-9][A-Za-z0-9._-]*)-(?P<seq>\d{6,})\.parquet")


def _compress(keys: set[str]) -> dict[str, Any]:
    """Shard keys as seq ranges per (dir, writer): a run of thousands of shards stays small."""
    groups: dict[str, list[int]] = {}
    other: list[str] = []
    for k in keys:
        m = _SHARD_KEY_RE.fullmatch(k)
        if m and len(m.group("seq")) == 6:
            groups.setdefault(m.group("dir") + m.group("writer"), []).append(int(m.group("seq")))
        else:
            other.append(k)
    ranges: dict[str, list[list[int]]] = {}
    for g, seqs in groups.items():
        seqs.sort()
        out: list[list[int]] = []
        for s in seqs:
            if out and s == out[-1][1] + 1:
                out[-1][1] = s
            else:
                out.append([s, s])
        ranges[g] = out
    return {"ranges": ranges, "keys": sorted(other)}


def _expand(d: dict[str, Any]) -> set[str]:
    keys = set(d.get("keys") or [])
    for g, rs in (d.get("ranges") or {}).items():
        for a, b in rs:
            keys.update(f"{g}-{s:06d}.parquet" for s in range(a, b + 1))
    return keys


# --------------------------------------------------------------------------------------------
# the event loop thread


class _LoopThread:
    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


@dataclass
class _Shard:
    key: str
    records: list[dict[str, Any]]
    msg: Any = None  # the announcement to ack; None for shards found through the manifest
    last_heartbeat: float = 0.0


# --------------------------------------------------------------------------------------------
# the stream


class RunShardStream:
    """Records of one run, following its shard announcements until the run ends.

    Args:
        nats_url: NATS server URL(s).
        run_id: the run to follow.
        consumer: durable consumer name (see :func:`consumer_name`); the same name continues
            the same position.
        store: the object store the run writes to (an :class:`ObjectStore` or URL); None = the
            store URL each announcement carries.
        fetch_timeout: seconds one fetch waits for an event.
        idle_check_seconds: while no event arrives, how often the run's manifest is read to
            notice an end that was never announced.
        ack_wait: the consumer's ack wait; announcements being consumed are kept alive with
            in-progress acks well within it.
    """

    def __init__(
        self,
        nats_url: str,
        run_id: str,
        consumer: str,
        store: ObjectStore | str | None = None,
        *,
        fetch_timeout: float = 2.0,
        idle_check_seconds: float = 10.0,
        ack_wait: float = 600.0,
        connect_timeout: float = 30.0,
        end_grace_seconds: float = 120.0,
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        self.nats_url = nats_url
        #: nats.connect keywords (credentials, TLS); None = from the SQ_* environment (the
        #: read-only ``trainer`` NATS user in a secured deployment, docs/security.md).
        self.connect_options = connect_options
        self.run_id = run_id
        self.consumer = consumer
        self._store = open_store(store) if isinstance(store, str) else store
        self.fetch_timeout = fetch_timeout
        self.idle_check_seconds = idle_check_seconds
        self.ack_wait = ack_wait
        self.connect_timeout = connect_timeout
        self.end_grace_seconds = end_grace_seconds
        self._loop: _LoopThread | None = None
        self._nc = None
        self._js = None
        self._kv = None
        self._psub = None
        self._progress = Progress(run_id)
        self._pending: list[_Shard] = []
        self._end_msg: Any = None
        self._end_seen = False
        self._end_accepted = 0  # records the run says it accepted
        self._end_deadline = 0.0
        self._gen = 0
        self._cursor: tuple[str, int] | None = None  # (shard key, records handed out) of the newest reader
        self._lock = threading.RLock()
        self._last_manifest_check = 0.0
        self._closed = False
        self._closing = False  # set without the lock: a reader blocked waiting for events sees it
        #: (monotonic time, shard key) of every shard the first time it was downloaded here.
        self.received: list[tuple[float, str]] = []

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        """Whether every record of the run has been committed (the stream has nothing more)."""
        return self._progress.ended

    @property
    def progress(self) -> Progress:
        return self._progress

    def start(self) -> RunShardStream:
        """Connect, create the consumer if missing, load the committed progress. Idempotent."""
        with self._lock:
            if self._loop is not None:
                return self
            if self._closed:
                raise StreamError("the stream is closed")
            self._loop = _LoopThread(f"sq-stream-{self.consumer}")
            try:
                self._loop.call(self._astart(), timeout=self.connect_timeout + 30)
            except BaseException:
                self._loop.call(self._aclose(nak=False), timeout=30)
                self._loop.stop()
                self._loop = None
                raise
            return self

    async def _astart(self) -> None:
        opts = client_options_from_env() if self.connect_options is None else self.connect_options
        try:
            self._nc, self._js = await asyncio.wait_for(
                connect(self.nats_url, name=f"scalequest-{self.consumer}", max_reconnect_attempts=60, **opts),
                self.connect_timeout,
            )
        except (asyncio.TimeoutError, OSError, nats.errors.Error) as e:
            raise StreamError(f"cannot connect to NATS at {redact_url(self.nats_url)}: {e}") from None
        js = self._js
        try:
            await js.stream_info(subjects.EVENTS_STREAM)
        except NotFoundError:
            cfg = next(c for c in stream_configs() if c.name == subjects.EVENTS_STREAM)
            await js.add_stream(cfg)
        try:
            self._kv = await js.key_value(PROGRESS_BUCKET)
        except BucketNotFoundError:
            self._kv = await js.create_key_value(
                api.KeyValueConfig(bucket=PROGRESS_BUCKET, history=1, storage=api.StorageType.FILE)
            )
        try:
            entry = await self._kv.get(self.consumer)
            self._progress = Progress.from_json(entry.value, self.run_id)
        except KeyNotFoundError:
            self._progress = Progress(self.run_id)
        if self._progress.run_id != self.run_id:
            raise StreamError(
                f"consumer {self.consumer!r} already follows run {self._progress.run_id!r}, not {self.run_id!r}; "
                "use another job name"
            )
        want = run_events_subject(self.run_id)
        try:
            info = await js.consumer_info(subjects.EVENTS_STREAM, self.consumer)
            if info.config.filter_subject != want:
                raise StreamError(
                    f"consumer {self.consumer!r} follows {info.config.filter_subject!r}, not {want!r}; use another job name"
                )
        except NotFoundError:
            pass
        cfg = api.ConsumerConfig(
            description=f"scalequest trainer stream of run {self.run_id}",
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_deliver=-1,
            max_ack_pending=64,
            replay_policy=api.ReplayPolicy.INSTANT,
        )
        self._psub = await js.pull_subscribe(want, durable=self.consumer, stream=subjects.EVENTS_STREAM, config=cfg)

    def close(self) -> None:
        """Record the position inside the current shard, hand unfinished announcements back
        (nak) and disconnect. Idempotent; iteration is impossible afterwards. Safe to call from
        another thread while a reader waits for events (it gives up within ``fetch_timeout``)."""
        self._closing = True
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._gen += 1  # stops any live iterator
            if self._loop is None:
                return
            try:
                if self._cursor and self._pending and self._pending[0].key == self._cursor[0]:
                    key, offset = self._cursor
                    if offset >= len(self._pending[0].records):  # all handed out: consumed
                        self._commit(self._pending[0])
                    elif offset > 0:
                        self._progress.partial_key, self._progress.partial_offset = key, offset
                        self._loop.call(self._save(), timeout=30)
                self._loop.call(self._aclose(nak=True), timeout=30)
            finally:
                self._loop.stop()
                self._loop = None

    async def _aclose(self, nak: bool) -> None:
        if nak:
            for shard in self._pending:
                if shard.msg is not None:
                    try:
                        await shard.msg.nak()
                    except Exception as e:  # the next incarnation gets it after ack_wait instead
                        log.debug("nak failed: %s", e)
            if self._end_msg is not None:
                try:
                    await self._end_msg.nak()
                except Exception as e:
                    log.debug("nak failed: %s", e)
        if self._psub is not None:
            try:
                await self._psub.unsubscribe()
            except Exception as e:  # the connection is closed next anyway
                log.debug("unsubscribe failed: %s", e)
        if self._nc is not None and not self._nc.is_closed:
            try:
                await self._nc.drain()
            except Exception:
                await self._nc.close()

    def __enter__(self) -> RunShardStream:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- KV ---------------------------------------------------------------------------------------

    async def _save(self) -> None:
        await self._kv.put(self.consumer, self._progress.to_json())

    # -- events -----------------------------------------------------------------------------------

    async def _fetch_one(self):
        try:
            msgs = await self._psub.fetch(1, timeout=self.fetch_timeout)
        except nats.errors.TimeoutError:
            return None
        return msgs[0] if msgs else None

    def _read_shard(self, key: str, store_url: str) -> list[dict[str, Any]]:
        store = self._store
        if store is None:
            if not store_url:
                raise StreamError(f"announcement of {key} names no store and no store was configured")
            store = self._store = open_store(store_url)
        return read_shard(store, key)

    def _head(self, gen: int) -> _Shard | None:
        """The first uncommitted shard, fetching and downloading as needed; None at the end."""
        assert self._loop is not None
        while not self._pending:
            if gen != self._gen or self._closing or self._progress.ended:
                return None
            if self._end_seen:
                if self._reconcile():
                    continue
                if self._progress.records >= self._end_accepted or time.monotonic() > self._end_deadline:
                    if self._progress.records < self._end_accepted:
                        log.warning("run %s announced %d records but only %d arrived within %.0fs; ending",
                                    self.run_id, self._end_accepted, self._progress.records, self.end_grace_seconds)
                    self._commit_end()
                    return None
                # The end can overtake the last shards (the run counts a record as accepted
                # before its shard is written): keep reading until they are all here.
            msg = self._loop.call(self._fetch_one(), timeout=self.fetch_timeout + 30)
            if msg is None:
                if not self._end_seen:
                    self._check_manifest_end()
                continue
            self._on_event(msg)
        return self._pending[0]

    def _on_event(self, msg) -> None:
        assert self._loop is not None
        kind = msg.subject.rsplit(".", 1)[-1]
        if kind == "shard":
            ann = pb.ShardAnnouncement.FromString(msg.data)
            if ann.key in self._progress.done:
                self._loop.call(msg.ack_sync(), timeout=30)  # redelivery of a committed shard
                return
            for shard in self._pending:
                if shard.key == ann.key:
                    shard.msg = msg  # a redelivery: ack the newest delivery
                    return
            records = self._read_shard(ann.key, ann.store)
            self.received.append((time.monotonic(), ann.key))
            log.info("shard received", extra={"run_id": self.run_id, "key": ann.key, "records": len(records)})
            self._pending.append(_Shard(ann.key, records, msg, time.monotonic()))
        elif kind == "end":
            end = pb.RunEnd.FromString(msg.data)
            log.info("run end announced", extra={"run_id": self.run_id, "state": end.state, "shards": end.shards})
            if self._end_msg is None:
                self._saw_end(end.accepted)
            self._end_msg = msg
        else:  # an event type this reader does not know: not ours to keep
            self._loop.call(msg.ack_sync(), timeout=30)

    def _check_manifest_end(self) -> None:
        """No events for a while: an ended run whose events are gone still ends the stream."""
        now = time.monotonic()
        if now - self._last_manifest_check < self.idle_check_seconds or self._store is None:
            return
        self._last_manifest_check = now
        manifest = read_manifest(self._store, self.run_id)
        if manifest is not None and manifest.state in TERMINAL_STATES:
            log.info("run %s is %s in its manifest; no end event received", self.run_id, manifest.state)
            self._saw_end(manifest.accepted)

    def _saw_end(self, accepted: int) -> None:
        self._end_seen = True
        self._end_accepted = max(self._end_accepted, int(accepted))
        self._end_deadline = time.monotonic() + self.end_grace_seconds

    def _reconcile(self) -> bool:
        """After the end: queue the manifest's shards that were never announced. True if any."""
        if self._store is None:
            return False
        manifest = read_manifest(self._store, self.run_id)
        if manifest is None:
            return False
        queued = {s.key for s in self._pending}
        added = False
        for info in manifest.shards:
            if info.key not in self._progress.done and info.key not in queued:
                log.info("shard %s is in the manifest but was not announced; reading it", info.key)
                records = read_shard(self._store, info.key)
                self.received.append((time.monotonic(), info.key))
                self._pending.append(_Shard(info.key, records, None, time.monotonic()))
                added = True
        return added

    def _commit(self, shard: _Shard) -> None:
        assert self._loop is not None
        self._progress.done.add(shard.key)
        self._progress.records += len(shard.records)
        self._progress.partial_key, self._progress.partial_offset = "", 0
        self._loop.call(self._save(), timeout=30)
        if shard.msg is not None:
            try:
                self._loop.call(shard.msg.ack_sync(), timeout=30)
            except Exception as e:  # committed in KV; a redelivery is skipped as done
                log.warning("ack of %s failed: %s", shard.key, e)
        self._pending.pop(0)

    def _commit_end(self) -> None:
        assert self._loop is not None
        self._progress.ended = True
        self._loop.call(self._save(), timeout=30)
        if self._end_msg is not None:
            try:
                self._loop.call(self._end_msg.ack_sync(), timeout=30)
            except Exception as e:
                log.warning("ack of the run end failed: %s", e)
            self._end_msg = None
        log.info("stream of run %s finished: %d records", self.run_id, self._progress.records)

    def _heartbeat(self, shard: _Shard) -> None:
        now = time.monotonic()
        if shard.msg is not None and now - shard.last_heartbeat > self.ack_wait / 4:
            shard.last_heartbeat = now
            assert self._loop is not None
            try:
                self._loop.call(shard.msg.in_progress(), timeout=30)
            except Exception as e:
                log.debug("in-progress ack failed: %s", e)

    # -- reading ----------------------------------------------------------------------------------

    def peek(self) -> dict[str, Any] | None:
        """The next record a new iteration would yield (waits for the first shard), without
        moving the stream; None when nothing is left."""
        self.start()
        with self._lock:
            gen = self._gen
            shard = self._head(gen)
            if shard is None:
                return None
            offset = self._progress.partial_offset if self._progress.partial_key == shard.key else 0
            return shard.records[offset] if offset < len(shard.records) else None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.start()
        with self._lock:
            self._gen += 1
            gen = self._gen
        return self._iterate(gen)

    def _iterate(self, gen: int) -> Iterator[dict[str, Any]]:
        while True:
            with self._lock:
                if gen != self._gen:
                    return
                shard = self._head(gen)
                if shard is None:
                    return
                key = shard.key
                if self._cursor is None or self._cursor[0] != key or self._cursor_gen != gen:
                    start = self._progress.partial_offset if self._progress.partial_key == key else 0
                    self._cursor, self._cursor_gen = (key, start), gen
                offset = self._cursor[1]
                if offset < len(shard.records):
                    record = shard.records[offset]
                    self._cursor = (key, offset + 1)
                    self._heartbeat(shard)
                else:
                    self._commit(shard)
                    self._cursor = None
                    continue
            yield record

    _cursor_gen = 0
