"""The stage worker: pull batches from a work queue, run a batch handler, publish, then ack.

One ``StageWorker`` per stage process. A message is one item, or an envelope of several
(``libs/queue/envelope.py``, header ``Sq-Envelope``) whose items are worked on one by one and
which is settled when all of them are. Per fetched batch (about ``batch_size`` items):

* each message is decoded; a message that does not decode is dead-lettered (``malformed``, or
  the reason of a ``PoisonMessage`` the decoder raised) and terminated; one delivered more than ``max_deliver`` times (its worker died on the last try) is
  dead-lettered (``max_deliver_exceeded``) without running the handler;
* the remaining items go to ONE handler call, which owns them (they were decoded for it, so
  a stage may change an item and send it on rather than copy it) and returns one entry per item:
  a list of ``Publish`` -> all are published with ``Nats-Msg-Id`` (awaiting the stream's acks),
  THEN the input is acked (a plain ack: a lost one means a deduplicated redelivery);
  a ``PoisonMessage`` (or ``InvalidArgument``) -> dead letter + term;
  a ``TransientError`` or any other exception -> ``nak(delay)``, or dead letter on the
  ``max_deliver``-th delivery. A handler that raises counts as that exception for every item;
* while the handler runs, ``in_progress()`` is sent every ``ack_wait / 3`` so slow model calls
  are not redelivered to another replica;
* with ``envelope_max_items > 1`` the outputs of the batch are packed per subject into envelopes;
* an envelope is acked when all its items are stored or dead-lettered (each item on its own in
  the DLQ). Items that failed go on in a *retry envelope* (their deliveries so far and a
  not-before time for the back-off) and the envelope is acked; when all of them failed it is
  nak'ed instead, and when a dead letter or the retry envelope could not be stored all of it is
  nak'ed (its stored outputs are deduplicated when they come again).

Outputs are only ever acked after they are stored, and are deduplicated by message id, so a
crash anywhere means redelivery and never loss or duplication downstream (within the stream's
duplicate window).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import Header
from nats.js.errors import NotFoundError

from libs.errors import InvalidArgument, NotReady, PoisonMessage, TransientError
from libs.queue import envelope, subjects
from libs.queue.fetch import DEFAULT_LINGER, fetch_ready
from libs.queue.subjects import WorkQueue

log = logging.getLogger("scalequest.queue")

T = TypeVar("T")

MSG_ID = Header.MSG_ID.value  # "Nats-Msg-Id"
DETAIL_LIMIT = 1024
DEFAULT_NAK_DELAY = 2.0
DEFAULT_ENVELOPE_BYTES = 512 * 1024  # under NATS' default max_payload (1 MiB), with room to spare

REASON_MALFORMED = "malformed"
REASON_MAX_DELIVER = "max_deliver_exceeded"
REASON_INVALID = "invalid_argument"
REASON_OVERSIZED = "oversized"


def envelope_bytes(max_message_bytes: int) -> int:
    """Envelope size that the next stage accepts under the same ``queue_max_message_bytes``."""
    return max(1024, min(DEFAULT_ENVELOPE_BYTES, max_message_bytes - 4096))


@dataclass
class Publish:
    """One output message; ``msg_id`` (stable, derived from the item id) deduplicates retries."""

    subject: str
    payload: bytes
    msg_id: str
    headers: dict[str, str] | None = None


@dataclass
class WorkerStats:
    fetched: int = 0  # messages received from the consumer
    acked: int = 0  # items acked after their outputs were stored
    naked: int = 0  # items handed back for redelivery (or put in a retry envelope)
    dead_lettered: int = 0  # items sent to the DLQ
    published: int = 0  # outputs newly stored
    duplicates: int = 0  # outputs the stream already had (same Nats-Msg-Id): a retry
    batches: int = 0  # handler calls
    items: int = 0  # work items handed to the handler (an envelope carries several)
    envelopes: int = 0  # envelopes published


@dataclass
class _Held:
    """One fetched message: a single item (``env`` None) or an envelope of ``total`` items."""

    msg: Msg
    deliveries: int
    seq: int
    env: Any  # scalequest.common.v1.Envelope | None
    dead: int = 0  # items dead-lettered
    done: list = field(default_factory=list)  # (work, outputs) whose outputs are stored
    retry: list = field(default_factory=list)  # works to run again
    retry_delay: float = 0.0
    retry_why: str = ""
    failed: str | None = None  # set when something could not be stored: nak the whole envelope
    finished: bool = False

    @property
    def total(self) -> int:
        return 1 if self.env is None else len(self.env.items)


class _Work(Generic[T]):
    """One item being worked on: its message (``held``), decoded item and deliveries. The item
    id, for logs, events and dead letters, is worked out on first use: most items never need
    it."""

    __slots__ = ("held", "item", "deliveries", "index", "raw", "settled", "_item_id", "_id_fn")

    def __init__(self, held: _Held, item: T, deliveries: int, item_id: str | None = None, index: int = -1,
                 raw: bytes = b"", id_fn: Callable[[T], str] | None = None) -> None:  # fmt: skip
        self.held = held
        self.item = item
        self.deliveries = deliveries
        self.index = index  # position in its envelope; -1 for a message of its own
        self.raw = raw
        self.settled = False
        self._item_id = item_id
        self._id_fn = id_fn

    @property
    def item_id(self) -> str:
        if self._item_id is None:
            where = f"seq={self.held.seq}" if self.index < 0 else f"seq={self.held.seq}#{self.index}"
            self._item_id = where
            if self._id_fn is not None and self.item is not None:
                try:
                    self._item_id = str(self._id_fn(self.item))
                except Exception:  # noqa: BLE001 -- ids are for logs only
                    pass
        return self._item_id


_UNSET = object()
# A retry envelope that arrives this close to its not_before is processed rather than nak'ed.
NOT_BEFORE_SLACK = 0.05


# Domain errors the worker maps to nak / dead letter without logging a traceback.
_EXPECTED = (TransientError, NotReady, PoisonMessage, InvalidArgument)


def _header_value(text: str, limit: int = DETAIL_LIMIT) -> str:
    """A header-safe (single line, ASCII) value of at most ``limit`` characters."""
    text = " ".join(str(text).split())  # no CR/LF, collapse whitespace
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def _items_in(msg: Msg) -> int:
    """Items a fetched message carries by its envelope header (1 for a plain message)."""
    if not envelope.is_envelope(msg.headers):
        return 1
    try:
        return max(1, int(msg.headers[envelope.H_ENVELOPE]))
    except (TypeError, ValueError):
        return 1


def _describe(err: BaseException) -> str:
    msg = str(err)
    return f"{type(err).__name__}: {msg}" if msg else type(err).__name__


class StageWorker(Generic[T]):
    """Consume ``queue`` with its durable pull consumer and run ``handler`` on batches.

    ``stage`` names the dead-letter subject (``subjects.dlq_subject(stage)``) and log fields.
    ``max_deliver`` must match ``ensure_topology(max_deliver=...)`` (the consumer allows one more
    delivery so the worker itself dead-letters). ``ack_wait`` sets the heartbeat period
    (``ack_wait / 3``; the consumer's own ack_wait is used if shorter). ``concurrency`` fetch loops
    run in parallel, each with its own pull subscription and at most one batch in flight.
    ``on_event(name, fields)`` is called for "batch", "ack", "nak" and "dead_letter" (metrics).
    ``max_message_bytes`` dead-letters larger messages (``oversized``) before decoding them.
    ``fetch_linger``: how long a batch that is not full waits for more (:func:`fetch_ready`).
    ``on_dead_letter(item, reason, detail)`` returns outputs to publish when a decoded item is
    dead-lettered (a stage's terminal rejection for the coordinator, so nothing goes unaccounted).
    """

    def __init__(
        self,
        js: JetStreamContext,
        *,
        queue: WorkQueue,
        stage: str,
        decode: Callable[[bytes], T],
        handler: Callable[[list[T]], Awaitable[list[list[Publish] | BaseException]]],
        batch_size: int = 16,
        fetch_timeout: float = 1.0,
        max_deliver: int = 5,
        ack_wait: float = 60.0,
        concurrency: int = 1,
        item_id: Callable[[T], str] | None = None,
        on_event: Callable[[str, dict], None] | None = None,
        on_dead_letter: Callable[[T, str, str], Awaitable[list[Publish]]] | None = None,
        max_message_bytes: int = 0,
        fetch_linger: float = DEFAULT_LINGER,
        envelope_max_items: int = 1,
        envelope_max_bytes: int = DEFAULT_ENVELOPE_BYTES,
    ) -> None:
        if batch_size < 1 or concurrency < 1 or max_deliver < 1:
            raise ValueError("batch_size, concurrency and max_deliver must be >= 1")
        if envelope_max_items < 1 or envelope_max_bytes < 1024:
            raise ValueError("envelope_max_items must be >= 1 and envelope_max_bytes >= 1024")
        if fetch_timeout <= 0 or ack_wait <= 0 or fetch_linger < 0:
            raise ValueError("fetch_timeout and ack_wait must be > 0, fetch_linger >= 0")
        self._js = js
        self.queue = queue
        self.stage = stage
        self._decode = decode
        self._handler = handler
        self.batch_size = batch_size
        self.fetch_timeout = fetch_timeout
        self.fetch_linger = fetch_linger
        self.max_deliver = max_deliver
        self.ack_wait = ack_wait
        self.concurrency = concurrency
        self._item_id = item_id
        self._on_event = on_event
        self._on_dead_letter = on_dead_letter
        self.max_message_bytes = max_message_bytes  # 0 = no limit beyond the server's max_payload
        self.envelope_max_items = envelope_max_items
        self.envelope_max_bytes = envelope_max_bytes
        # Moving average of items per fetched message (envelopes carry several). Until the first
        # message is seen it is batch_size, so the first fetch takes one message and sizes the
        # rest (_calibrate): assuming 1 made the first fetch take batch_size envelopes, a batch of
        # up to batch_size x 64 items that held everything behind it (measured: one 1,024-item
        # batch took 1.7 s of a 1.1 s drain).
        self._items_per_msg = float(batch_size)
        self._calibrated = False
        self.dlq_subject = subjects.dlq_subject(stage)
        self.publish_timeout = 10.0
        self.publish_retry_delay = DEFAULT_NAK_DELAY  # nak delay when outputs could not be stored
        self.retry_delay = DEFAULT_NAK_DELAY  # nak delay for exceptions other than TransientError

        self._stats = WorkerStats()
        self._subs: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._started = False
        self._stopped = False
        self._inflight = 0
        self._heartbeat_every = ack_wait / 3.0
        self._log_extra = {"stage": stage}

    # ------------------------------------------------------------------ public API
    @property
    def ready(self) -> bool:
        """Started, not stopping, and the NATS connection is up."""
        nc = getattr(self._js, "_nc", None)
        connected = True if nc is None else bool(nc.is_connected)
        return self._started and not self._stopping.is_set() and connected

    @property
    def stats(self) -> WorkerStats:
        return self._stats

    @property
    def inflight(self) -> int:
        """Batches being processed right now."""
        return self._inflight

    async def start(self) -> None:
        """Bind to the durable consumer and start ``concurrency`` fetch loops."""
        if self._started:
            return
        if self._stopped:
            raise RuntimeError("a stopped StageWorker cannot be restarted; create a new one")
        q = self.queue
        try:
            info = await self._js.consumer_info(q.stream, q.consumer)
        except NotFoundError as e:
            raise RuntimeError(
                f"consumer {q.consumer!r} on stream {q.stream!r} does not exist; run ensure_topology() first"
            ) from e
        consumer_ack_wait = info.config.ack_wait or self.ack_wait
        self._heartbeat_every = max(0.05, min(self.ack_wait, consumer_ack_wait) / 3.0)
        server_max = info.config.max_deliver
        if server_max is not None and 0 < server_max <= self.max_deliver:
            log.warning(
                "consumer %s allows %d deliveries but the worker's max_deliver is %d: a crash on the last "
                "delivery would drop the item without a dead letter (ensure_topology sets max_deliver + 1)",
                q.consumer, server_max, self.max_deliver, extra=self._log_extra,
            )  # fmt: skip
        for i in range(self.concurrency):
            sub = await self._js.pull_subscribe_bind(durable=q.consumer, stream=q.stream)
            self._subs.append(sub)
            self._tasks.append(asyncio.create_task(self._loop(sub, i), name=f"sq-worker-{self.stage}-{i}"))
        self._started = True
        log.info(
            "worker %s: consuming %s/%s (batch %d, concurrency %d, max_deliver %d, heartbeat %.1fs)",
            self.stage, q.stream, q.consumer, self.batch_size, self.concurrency, self.max_deliver,
            self._heartbeat_every, extra=self._log_extra,
        )  # fmt: skip

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop fetching, let in-flight batches finish (publish + ack), then unsubscribe.

        Batches still running after ``timeout`` are cancelled; their messages are not acked and
        come back after ack_wait.
        """
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        if self._tasks:
            log.info("worker %s: stopping (%d batch(es) in flight)", self.stage, self._inflight, extra=self._log_extra)
            _, pending = await asyncio.wait(self._tasks, timeout=timeout)
            if pending:
                log.warning(
                    "worker %s: %d fetch loop(s) still busy after %.1fs; cancelling (their messages will be "
                    "redelivered after ack_wait)", self.stage, len(pending), timeout, extra=self._log_extra,
                )  # fmt: skip
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        for sub in self._subs:
            await self._release_buffered(sub)
            try:
                await sub.unsubscribe()
            except Exception as e:  # noqa: BLE001 -- connection already closed: nothing to clean up
                log.debug("worker %s: unsubscribe: %s", self.stage, _describe(e))
        self._subs.clear()
        log.info("worker %s: stopped %s", self.stage, self._stats, extra=self._log_extra)

    async def _release_buffered(self, sub: Any) -> None:
        """Nak messages a pull request delivered after the last fetch returned (a race at the
        request's expiry) so they go to another replica now instead of after ack_wait."""
        queue = getattr(getattr(sub, "_sub", None), "_pending_queue", None)  # nats-py internals
        released = 0
        while queue is not None and not queue.empty():
            try:
                msg = queue.get_nowait()
                if msg.reply and not (msg.headers and msg.headers.get("Status")):
                    await msg.nak()
                    released += 1
            except Exception:  # noqa: BLE001 -- best effort; they come back after ack_wait anyway
                break
        if released:
            log.info("worker %s: released %d buffered message(s) on stop", self.stage, released, extra=self._log_extra)

    # ------------------------------------------------------------------ fetch loop
    async def _loop(self, sub: Any, index: int) -> None:
        errors_in_row = 0
        while not self._stopping.is_set():
            try:
                msgs = await fetch_ready(sub, self._fetch_size(), self.fetch_timeout, self.fetch_linger)
            except asyncio.TimeoutError:  # nats.errors.TimeoutError included: nothing to do
                errors_in_row = 0
                continue
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 -- never let the loop die (reconnects, API errors)
                if self._stopping.is_set():
                    break
                errors_in_row += 1
                level = logging.WARNING if errors_in_row == 1 or errors_in_row % 30 == 0 else logging.DEBUG
                log.log(level, "worker %s: fetch failed (%d in a row): %s", self.stage, errors_in_row,
                        _describe(e), extra=self._log_extra)  # fmt: skip
                await self._sleep_unless_stopping(min(0.2 * errors_in_row, 2.0))
                continue
            errors_in_row = 0
            if not msgs:
                continue
            if not self._calibrated:
                msgs += await self._calibrate(sub, msgs)
            self._inflight += 1
            try:
                await self._process_batch(msgs)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not kill the loop; the messages come back later
                log.exception("worker %s: unexpected error processing a batch", self.stage, extra=self._log_extra)
            finally:
                self._inflight -= 1

    async def _calibrate(self, sub: Any, first: list[Msg]) -> list[Msg]:
        """Size fetches from the items of the first messages, topping the first batch up to about
        ``batch_size`` items in growing steps (1, 2, 4, ... messages). Trusting the first message
        alone misjudged a queue whose first message is a single item and the rest envelopes:
        one loop took the whole backlog, up to batch_size x 64 items, as one batch, and worked
        through it batch_size at a time while the other loops found nothing to fetch."""
        self._calibrated = True
        msgs, items = len(first), sum(_items_in(m) for m in first)
        extra: list[Msg] = []
        step = 1
        while items < self.batch_size:
            per = items / msgs
            step *= 2
            want = min(step, max(1, math.ceil((self.batch_size - items) / per)))
            try:
                got = await fetch_ready(sub, want, min(self.fetch_timeout, 0.05), self.fetch_linger)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 -- nothing more ready (timeout) or a hiccup: go with what we have
                got = []
            if not got:
                break
            extra += got
            msgs += len(got)
            items += sum(_items_in(m) for m in got)
        self._items_per_msg = max(1.0, items / msgs)
        return extra

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass

    # ------------------------------------------------------------------ one batch
    def _fetch_size(self) -> int:
        """Messages to ask for so that a batch holds about ``batch_size`` items (envelopes carry many)."""
        return max(1, min(self.batch_size, round(self.batch_size / max(1.0, self._items_per_msg))))

    async def _process_batch(self, msgs: list[Msg]) -> None:
        started = time.monotonic()
        works: list[_Work[T]] = []
        held: list[_Held] = []
        for msg in msgs:
            self._stats.fetched += 1
            try:
                md = msg.metadata
                deliveries, seq = int(md.num_delivered), int(md.sequence.stream)
            except Exception as e:  # noqa: BLE001 -- not a JetStream message
                log.error("worker %s: message on %s without JetStream metadata (%s); ignored", self.stage,
                          msg.subject, _describe(e), extra=self._log_extra)  # fmt: skip
                continue
            if self.max_message_bytes and len(msg.data) > self.max_message_bytes:
                await self._dead_letter(msg, deliveries, seq, f"seq={seq}", REASON_OVERSIZED,
                                        f"{len(msg.data)} bytes > limit {self.max_message_bytes}")  # fmt: skip
                continue
            if not envelope.is_envelope(msg.headers):
                h = _Held(msg, deliveries, seq, None)
                w = await self._unpack(h, msg.data, -1, deliveries)
                if w is not None:
                    works.append(w)
                continue
            try:
                env = envelope.decode(msg.data)
            except ValueError as e:
                await self._dead_letter(msg, deliveries, seq, f"seq={seq}", REASON_MALFORMED, str(e))
                continue
            wait = env.not_before - time.time()
            if wait > NOT_BEFORE_SLACK:  # a retry envelope whose back-off has not passed yet
                try:
                    await msg.nak(delay=wait)
                except Exception as e:  # noqa: BLE001 -- it comes back after ack_wait anyway
                    log.debug("worker %s: nak of an early retry envelope failed: %s", self.stage, _describe(e))
                continue
            h = _Held(msg, deliveries, seq, env)
            held.append(h)
            # A retry envelope's first delivery usually comes before its back-off ends and is
            # nak'ed above without an attempt: that delivery is not one of the items'.
            item_deliveries = max(1, env.prior_deliveries + deliveries - (1 if env.not_before else 0))
            if item_deliveries > self.max_deliver:
                for i, raw in enumerate(env.items):
                    w = await self._unpack(h, raw, i, item_deliveries)  # dead letters
                    if w is not None:
                        works.append(w)
                continue
            decode, id_fn = self._decode, self._item_id
            for i, raw in enumerate(env.items):
                try:  # the common case inline: an envelope carries up to batch_size items
                    works.append(_Work(h, decode(raw), item_deliveries, None, i, raw, id_fn))
                except Exception:  # noqa: BLE001 -- _unpack decodes again and dead-letters it
                    w = await self._unpack(h, raw, i, item_deliveries)
                    if w is not None:
                        works.append(w)
        self._stats.items += len(works)
        if msgs:
            items = len(works) + sum(h.dead for h in held)
            self._items_per_msg += 0.5 * (max(1, items) / len(msgs) - self._items_per_msg)
        if works:
            heartbeat = asyncio.create_task(self._heartbeat(works))
            try:
                # At most batch_size items per handler call: an envelope can carry more than a
                # stage takes at once (engine concurrency is batch_size x concurrency).
                for i in range(0, len(works), self.batch_size):
                    await self._handle(works[i : i + self.batch_size])
            finally:
                heartbeat.cancel()
                try:
                    await heartbeat
                except asyncio.CancelledError:
                    pass
        for h in held:
            await self._finish_envelope(h)
        self._emit("batch", size=len(msgs), handled=len(works), seconds=round(time.monotonic() - started, 4))

    async def _handle(self, works: list[_Work[T]]) -> None:
        """One handler call, then its outputs stored and its items settled."""
        results: list[Any]
        batch_error: BaseException | None = None
        try:
            results = await self._handler([w.item for w in works])
            if not isinstance(results, (list, tuple)) or len(results) != len(works):
                n = len(results) if isinstance(results, (list, tuple)) else type(results).__name__
                raise TypeError(f"handler returned {n} results for {len(works)} items")
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if not isinstance(e, _EXPECTED):
                log.error("worker %s: handler failed on a batch of %d: %s", self.stage, len(works),
                          _describe(e), exc_info=e, extra=self._log_extra)  # fmt: skip
            results, batch_error = [e] * len(works), e
        self._stats.batches += 1
        stored = await self._store_outputs(works, results)
        # Items whose outputs are stored settle in order (an ack is a buffered write; an
        # envelope's item only records itself): a task each cost more than the settling.
        # Failures settle concurrently, since dead letters wait for the DLQ stream's ack.
        rest = []
        for k, (w, r) in enumerate(zip(works, results)):
            st = stored.get(k, _UNSET)
            if st is None and w.held.env is not None:  # stored, of an envelope: _done, inline
                w.held.done.append((w, len(r)))
                w.settled = True
            elif st is None:
                await self._settle(w, r, batch_error, None)
            else:
                rest.append(self._settle(w, r, batch_error, st))
        if rest:
            await asyncio.gather(*rest)

    async def _unpack(self, h: _Held, raw: bytes, index: int, deliveries: int) -> _Work[T] | None:
        """Decode one item (of a message or an envelope); dead-letter what cannot be worked on."""
        seq = h.seq
        where = f"seq={seq}" if index < 0 else f"seq={seq}#{index}"
        try:
            item = self._decode(raw)
        except PoisonMessage as e:  # the decoder knows better (e.g. unknown_schema_version)
            name = self._id_of(e.item, where) if e.item is not None else where
            await self._dead(_Work(h, None, deliveries, name, index, raw), e.reason, e.detail, item=e.item)
            return None
        except Exception as e:  # noqa: BLE001 -- any other decode failure means malformed
            await self._dead(_Work(h, None, deliveries, where, index, raw), REASON_MALFORMED, _describe(e))
            return None
        w = _Work(h, item, deliveries, None, index, raw, self._item_id)
        if deliveries > self.max_deliver:
            await self._dead(
                w, REASON_MAX_DELIVER,
                f"delivered {deliveries} times (max_deliver={self.max_deliver}); earlier deliveries were "
                "not completed (worker crash, timeout or outputs not stored)", item=item,
            )  # fmt: skip
            return None
        return w

    async def _heartbeat(self, works: list[_Work[T]]) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_every)
            beaten: set[int] = set()
            for w in works:
                h = w.held
                if w.settled or h.finished or id(h) in beaten:
                    continue
                beaten.add(id(h))
                try:
                    await h.msg.in_progress()
                except Exception as e:  # noqa: BLE001 -- connection trouble: the next beat may get through
                    log.debug("worker %s: in_progress failed: %s", self.stage, _describe(e), extra=self._log_extra)

    async def _store_outputs(self, works: list[_Work[T]], results: list[Any]) -> dict[int, BaseException | None]:
        """Publish every output of the batch; per work index, None (all stored) or the first error.

        Outputs without headers of their own go out per subject as :func:`envelope.messages`
        (envelopes when ``envelope_max_items > 1``); the others are published one by one."""
        single: list[tuple[int, Publish]] = []
        groups: dict[str, list[tuple[int, Publish]]] = {}
        stored: dict[int, BaseException | None] = {}
        for k, r in enumerate(results):
            if not isinstance(r, (list, tuple)):
                continue
            for p in r:
                if not isinstance(p, Publish):
                    break
            else:
                stored[k] = None
                for p in r:
                    if p.headers:  # headers of its own: published as it is
                        single.append((k, p))
                    else:
                        group = groups.get(p.subject)
                        if group is None:
                            groups[p.subject] = [(k, p)]
                        else:
                            group.append((k, p))
        jobs: list[tuple[list[int], Awaitable[Any]]] = [([k], self._publish(p)) for k, p in single]
        for subject, outs in groups.items():
            packs = envelope.messages([p.payload for _, p in outs], [p.msg_id for _, p in outs],
                                      max_items=self.envelope_max_items, max_bytes=self.envelope_max_bytes)  # fmt: skip
            for pk in packs:
                jobs.append(([outs[i][0] for i in pk.members], self._publish_packed(subject, pk)))
        results_ = await asyncio.gather(*(j for _, j in jobs), return_exceptions=True)
        for (members, _), r in zip(jobs, results_):
            if isinstance(r, BaseException):
                for k in members:
                    if stored.get(k) is None:
                        stored[k] = r
            elif r:
                self._stats.duplicates += len(members)
            else:
                self._stats.published += len(members)
        return stored

    async def _publish_packed(self, subject: str, pk: envelope.Packed) -> bool:
        """Publish one message of :func:`envelope.messages`; True when the stream already had it."""
        ack = await self._js.publish(subject, pk.payload, timeout=self.publish_timeout, headers=pk.headers)
        self._stats.envelopes += pk.envelope
        return bool(getattr(ack, "duplicate", False))

    async def _settle(self, w: _Work[T], result: Any, batch_error: BaseException | None, stored: Any) -> None:
        try:
            if isinstance(result, (list, tuple)) and all(isinstance(p, Publish) for p in result):
                if stored is None:
                    await self._done(w, len(result))
                else:
                    log.warning("worker %s: output(s) of %s not stored (%s); nak", self.stage, w.item_id,
                                _describe(stored), extra={**self._log_extra, "item_id": w.item_id})  # fmt: skip
                    if w.held.env is None:
                        await self._nak(w, self.publish_retry_delay, f"publish failed: {_describe(stored)}")
                    else:  # retried on its own; the envelope's other items are done
                        await self._fail(w, TransientError(f"publish failed: {_describe(stored)}",
                                                           self.publish_retry_delay))  # fmt: skip
            elif isinstance(result, PoisonMessage):
                await self._dead(w, result.reason, result.detail, item=w.item)
            elif isinstance(result, InvalidArgument):
                await self._dead(w, REASON_INVALID, str(result), item=w.item)
            elif isinstance(result, BaseException):
                if result is not batch_error and not isinstance(result, _EXPECTED):  # unknown: log the traceback
                    log.error("worker %s: handler failed on item %s: %s", self.stage, w.item_id, _describe(result),
                              exc_info=result, extra={**self._log_extra, "item_id": w.item_id})  # fmt: skip
                await self._fail(w, result)
            else:
                await self._fail(w, TypeError(f"handler result for an item must be list[Publish] or an "
                                              f"exception, got {type(result).__name__}"))  # fmt: skip
        finally:
            w.settled = True

    async def _fail(self, w: _Work[T], err: BaseException) -> None:
        if w.deliveries >= self.max_deliver:
            await self._dead(w, REASON_MAX_DELIVER,
                             f"delivery {w.deliveries} of {self.max_deliver} failed: {_describe(err)}", item=w.item)
            return
        delay = err.delay if isinstance(err, TransientError) else self.retry_delay
        log.warning("worker %s: item %s failed on delivery %d/%d, retry in %.1fs: %s", self.stage, w.item_id,
                    w.deliveries, self.max_deliver, delay, _describe(err),
                    extra={**self._log_extra, "item_id": w.item_id})  # fmt: skip
        if w.held.env is None:
            await self._nak(w, delay, _describe(err))
        else:  # retried with the envelope's other failures (_finish_envelope)
            w.held.retry.append(w)
            w.held.retry_delay = max(w.held.retry_delay, delay)
            w.held.retry_why = _describe(err)

    async def _nak(self, w: _Work[T], delay: float, why: str) -> None:
        try:
            await w.held.msg.nak(delay=delay)
            self._stats.naked += 1
            self._emit("nak", item_id=w.item_id, deliveries=w.deliveries, delay=delay, error=why)
        except Exception as e:  # noqa: BLE001 -- it comes back after ack_wait anyway
            log.warning("worker %s: nak of %s failed: %s", self.stage, w.item_id, _describe(e), extra=self._log_extra)

    async def _done(self, w: _Work[T], outputs: int) -> None:
        """The item's outputs are stored: ack its message (an envelope's item waits for the others)."""
        if w.held.env is not None:
            w.held.done.append((w, outputs))
            return
        try:
            # A plain ack, not ack_sync: waiting for the server's confirmation halved the rate a
            # stage can consume at (docs/benchmarks.md) and bought nothing, because an ack that is
            # lost only means a redelivery whose outputs are deduplicated by their msg ids.
            await w.held.msg.ack()
        except Exception as e:  # noqa: BLE001 -- see above
            log.warning("worker %s: ack of %s not sent: %s", self.stage, w.item_id, _describe(e),
                        extra={**self._log_extra, "item_id": w.item_id})  # fmt: skip
            return
        self._stats.acked += 1
        self._emit("ack", item_id=w.item_id, outputs=outputs, deliveries=w.deliveries)

    async def _finish_envelope(self, h: _Held) -> None:
        """Settle an envelope once all its items are: ack it, after its failed items were put in
        a retry envelope; nak all of it when something could not be stored (its items run again,
        and what they had stored is deduplicated downstream)."""
        if h.finished:
            return
        h.finished = True
        env = h.env
        assert env is not None
        why = h.failed
        if why is None and h.retry and (h.done or h.dead):
            retry_ids = [env.item_msg_ids[w.index] if env.item_msg_ids else w.item_id for w in h.retry]
            payload = envelope.encode([w.raw for w in h.retry], retry_ids, prior_deliveries=h.retry[0].deliveries,
                                      not_before=time.time() + h.retry_delay)  # fmt: skip
            headers = {envelope.H_ENVELOPE: str(len(h.retry)), MSG_ID: f"retry.{self.stage}.{h.seq}.{h.deliveries}"}
            try:
                await self._js.publish(h.msg.subject, payload, timeout=self.publish_timeout, headers=headers)
            except Exception as e:  # noqa: BLE001 -- keep everything: nak the envelope
                why = f"retry envelope not stored: {_describe(e)}"
            else:
                self._stats.naked += len(h.retry)
                for w in h.retry:
                    self._emit("nak", item_id=w.item_id, deliveries=w.deliveries, delay=h.retry_delay,
                               error=h.retry_why)  # fmt: skip
        elif why is None and h.retry:  # every item failed: the envelope itself is retried
            try:
                await h.msg.nak(delay=h.retry_delay)
            except Exception as e:  # noqa: BLE001 -- it comes back after ack_wait anyway
                log.warning("worker %s: nak of envelope seq=%d failed: %s", self.stage, h.seq, _describe(e),
                            extra=self._log_extra)  # fmt: skip
                return
            self._stats.naked += len(h.retry)
            for w in h.retry:
                self._emit("nak", item_id=w.item_id, deliveries=w.deliveries, delay=h.retry_delay, error=h.retry_why)
            return
        if why is not None:
            log.warning("worker %s: envelope seq=%d (%d items) nak: %s", self.stage, h.seq, h.total, why,
                        extra=self._log_extra)  # fmt: skip
            try:
                await h.msg.nak(delay=self.publish_retry_delay)
                self._stats.naked += h.total - h.dead
            except Exception as e:  # noqa: BLE001 -- it comes back after ack_wait anyway
                log.debug("worker %s: nak of envelope seq=%d failed: %s", self.stage, h.seq, _describe(e))
            return
        try:
            await h.msg.ack()
        except Exception as e:  # noqa: BLE001 -- a redelivery; its outputs are deduplicated
            log.warning("worker %s: ack of envelope seq=%d not sent: %s", self.stage, h.seq, _describe(e),
                        extra=self._log_extra)  # fmt: skip
            return
        self._stats.acked += len(h.done)
        if self._on_event is not None:
            for w, outputs in h.done:
                self._emit("ack", item_id=w.item_id, outputs=outputs, deliveries=w.deliveries)

    async def _dead(self, w: _Work[T], reason: str, detail: str, item: Any = None) -> None:
        """Dead-letter one item: a whole message, or one item of an envelope (on its own)."""
        h = w.held
        if h.env is None:
            await self._dead_letter(h.msg, w.deliveries, h.seq, w.item_id, reason, detail, item=item)
            return
        ok = await self._store_dead_letter(
            h.msg, w.raw, f"dlq.{self.stage}.{h.seq}.{w.index}", w.deliveries, w.item_id, reason, detail, item
        )
        if not ok:
            h.failed = f"dead letter of {w.item_id} not stored"
            return
        h.dead += 1
        self._stats.dead_lettered += 1
        self._emit("dead_letter", item_id=w.item_id, reason=reason, detail=detail, deliveries=w.deliveries)

    async def _publish(self, p: Publish) -> bool:
        """Publish one output; True when the stream already had it (duplicate)."""
        headers = dict(p.headers or {})
        headers[MSG_ID] = p.msg_id
        ack = await self._js.publish(p.subject, p.payload, timeout=self.publish_timeout, headers=headers)
        return bool(getattr(ack, "duplicate", False))

    async def _store_dead_letter(
        self, msg: Msg, data: bytes, msg_id: str, deliveries: int, item_id: str, reason: str, detail: str,
        item: Any = None,
    ) -> bool:
        """Publish ``data`` to the stage's DLQ subject (the reason in headers), then the
        ``on_dead_letter`` hook's outputs for a decoded ``item``; False when something was not stored."""
        headers: dict[str, str] = {}
        whole = data is msg.data  # the whole message (an envelope keeps its header, for replay)
        for k, v in (msg.headers or {}).items():
            if not k.lower().startswith("nats-") and (whole or k != envelope.H_ENVELOPE):
                headers[k] = v
        headers.update(
            {
                subjects.H_REASON: _header_value(reason, 128) or "unknown",
                subjects.H_DETAIL: _header_value(detail),
                subjects.H_STAGE: self.stage,
                subjects.H_SUBJECT: msg.subject,
                subjects.H_DELIVERIES: str(deliveries),
                MSG_ID: msg_id,
            }
        )
        try:
            await self._js.publish(self.dlq_subject, data, timeout=self.publish_timeout, headers=headers)
            if item is not None and self._on_dead_letter is not None:
                for p in await self._on_dead_letter(item, reason, detail):
                    await self._publish(p)
        except Exception as e:  # noqa: BLE001 -- keep the message: the caller naks instead of term
            log.error("worker %s: could not dead-letter %s (%s): %s; nak", self.stage, item_id, reason,
                      _describe(e), extra={**self._log_extra, "item_id": item_id})  # fmt: skip
            return False
        log.warning("worker %s: dead-lettered %s (%s) after %d deliveries: %s", self.stage, item_id, reason,
                    deliveries, _header_value(detail, 200), extra={**self._log_extra, "item_id": item_id})  # fmt: skip
        return True

    async def _dead_letter(
        self, msg: Msg, deliveries: int, seq: int, item_id: str, reason: str, detail: str, item: Any = None
    ) -> bool:
        """Publish the original payload to the stage's DLQ subject, then ``term()`` the message.

        For a decoded ``item`` the ``on_dead_letter`` hook runs between the two (it reports the
        item's end to the coordinator, so the run's accounting includes it); its outputs are
        published like a handler's. If the dead letter or those outputs cannot be stored the
        message is nak'ed instead (never dropped; the dead letter's msg id makes the retry a no-op).
        """
        extra = {**self._log_extra, "item_id": item_id}
        if not await self._store_dead_letter(msg, msg.data, f"dlq.{self.stage}.{seq}", deliveries, item_id, reason,
                                             detail, item):  # fmt: skip
            try:
                await msg.nak(delay=self.publish_retry_delay)
                self._stats.naked += 1
            except Exception as e:  # noqa: BLE001 -- it comes back after ack_wait anyway
                log.debug("worker %s: nak of %s failed: %s", self.stage, item_id, _describe(e), extra=extra)
            return False
        try:
            await msg.term()
        except Exception as e:  # noqa: BLE001 -- redelivered later, dead-lettered again under the same id
            log.warning("worker %s: term of %s failed: %s", self.stage, item_id, _describe(e), extra=extra)
        self._stats.dead_lettered += 1
        self._emit("dead_letter", item_id=item_id, reason=reason, detail=detail, deliveries=deliveries)
        return True

    # ------------------------------------------------------------------ helpers
    def _id_of(self, item: T, fallback: str) -> str:
        if self._item_id is None:
            return fallback
        try:
            return str(self._item_id(item))
        except Exception:  # noqa: BLE001 -- ids are for logs only
            return fallback

    def _emit(self, event: str, **fields: Any) -> None:
        if self._on_event is None:
            return
        fields.setdefault("stage", self.stage)
        try:
            self._on_event(event, fields)
        except Exception:
            log.exception("worker %s: on_event(%r) failed", self.stage, event, extra=self._log_extra)
