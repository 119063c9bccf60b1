"""Connecting to NATS and declaring the JetStream topology (streams, consumers, KV bucket).

``ensure_topology`` is idempotent and safe to run concurrently from several processes: every
service calls it at start-up, so no separate "init job" has to run first. Creation is
create-or-update: a stream that exists with another configuration is updated in place (a change
the server cannot apply, such as the retention policy, raises); consumers are created with the
server's create-or-update semantics.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api
from nats.js.errors import (
    APIError,
    BadRequestError,
    BucketNotFoundError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue

from libs.queue import subjects

log = logging.getLogger("scalequest.queue")

# Dedup claims of the filter stage (exact hashes, near-duplicate signatures and LSH buckets, all
# keyed by run): many keys per question, so they live apart from the runs bucket that the
# coordinator lists. ``ensure_topology`` (bootstrap) creates it; the filter also creates it
# when missing (``dedup_kv``), so a filter started against an older topology still works.
DEDUP_BUCKET = "sq-dedup"

# Terminal rejections per item (the coordinator's exactly-once accounting; libs/queue/ledger.py).
LEDGER_BUCKET = "sq-ledger"

# JetStream API error codes (nats-server errors.json).
ERR_STREAM_NAME_IN_USE = 10058  # "stream name already in use with a different configuration"


async def connect(url: str | list[str], name: str, **kw: Any) -> tuple[NATS, JetStreamContext]:
    """Connect with reconnect-forever and callbacks that log (one line, no tracebacks).

    Note that with ``max_reconnect_attempts=-1`` nats-py also retries the *initial* connection
    forever (useful in Kubernetes, where NATS may come up after the service); wrap the call in
    ``asyncio.wait_for`` or pass ``max_reconnect_attempts=N`` to bound it. Any nats.connect keyword
    in ``kw`` overrides the defaults here; credentials and TLS come in ``kw`` from
    :func:`libs.queue.auth.client_options` (``**client_options(settings)``).
    """

    async def error_cb(e: Exception) -> None:
        log.warning("nats[%s]: %s: %s", name, type(e).__name__, e)

    async def disconnected_cb() -> None:
        if nc.is_closed:  # an orderly close() also reports a disconnect first
            log.debug("nats[%s]: disconnected (closing)", name)
        else:
            log.warning("nats[%s]: disconnected", name)

    async def reconnected_cb() -> None:
        url = nc.connected_url  # host:port only: the netloc may carry user:password (docs/security.md)
        log.info("nats[%s]: reconnected to %s", name, f"{url.hostname}:{url.port}" if url else "?")

    async def closed_cb() -> None:
        log.info("nats[%s]: connection closed", name)

    opts: dict[str, Any] = {
        "servers": url,
        "name": name,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 5,
        "ping_interval": 20,
        "max_outstanding_pings": 3,
        "error_cb": error_cb,
        "disconnected_cb": disconnected_cb,
        "reconnected_cb": reconnected_cb,
        "closed_cb": closed_cb,
    }
    opts.update(kw)
    nc = await nats.connect(**opts)
    js = nc.jetstream()
    return nc, js


def stream_configs(*, duplicate_window: float = 600.0, replicas: int = 1) -> list[api.StreamConfig]:
    """The stream configurations ``ensure_topology`` declares (work queues, events, DLQ)."""
    out = [
        api.StreamConfig(
            name=q.stream,
            description=f"scalequest work queue consumed by {q.consumer}",
            subjects=[q.subject],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=duplicate_window,
        )
        for q in subjects.WORK_QUEUES
    ]
    out.append(
        api.StreamConfig(
            name=subjects.EVENTS_STREAM,
            description="scalequest events: shard announcements and run ends",
            subjects=[subjects.EVENTS_SUBJECTS],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=duplicate_window,
        )
    )
    out.append(
        api.StreamConfig(
            name=subjects.DLQ_STREAM,
            description="scalequest dead letters, one subject per stage",
            subjects=[subjects.DLQ_SUBJECTS],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=duplicate_window,
        )
    )
    return out


def consumer_config(q: subjects.WorkQueue, *, ack_wait: float = 60.0, max_deliver: int = 5) -> api.ConsumerConfig:
    """Durable pull consumer of one work queue.

    The server's ``max_deliver`` is one more than the worker's: the worker dead-letters an item on
    its ``max_deliver``-th failed delivery, and if it crashes during that delivery the extra one
    lets the next worker dead-letter it instead of the server silently giving up.
    """
    return api.ConsumerConfig(
        name=q.consumer,
        durable_name=q.consumer,
        description=f"scalequest stage {q.consumer}",
        filter_subject=q.subject,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=max_deliver + 1,
        replay_policy=api.ReplayPolicy.INSTANT,
    )


async def _retry(what: str, fn, attempts: int = 10):
    """Retry JetStream API calls the server answers with 503 / timeouts (start-up, elections)."""
    delay = 0.1
    for i in range(attempts):
        try:
            return await fn()
        except (ServiceUnavailableError, nats.errors.TimeoutError, asyncio.TimeoutError) as e:
            if i == attempts - 1:
                raise
            log.info("topology: %s: %s, retrying in %.1fs", what, type(e).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def _ensure_stream(js: JetStreamContext, cfg: api.StreamConfig) -> api.StreamInfo:
    async def go() -> api.StreamInfo:
        try:
            return await js.add_stream(cfg)
        except BadRequestError as e:
            if e.err_code != ERR_STREAM_NAME_IN_USE:
                raise
        # Exists with a different configuration: update it in place.
        try:
            info = await js.update_stream(cfg)
        except APIError as e:
            log.error("topology: cannot update stream %s to the wanted configuration: %s", cfg.name, e)
            raise
        log.info("topology: updated stream %s", cfg.name)
        return info

    return await _retry(f"stream {cfg.name}", go)


async def _ensure_consumer(js: JetStreamContext, stream: str, cfg: api.ConsumerConfig) -> api.ConsumerInfo:
    async def go() -> api.ConsumerInfo:
        try:
            return await js.add_consumer(stream, cfg)
        except APIError as e:
            log.error("topology: cannot create/update consumer %s on %s: %s", cfg.durable_name, stream, e)
            raise

    return await _retry(f"consumer {stream}/{cfg.durable_name}", go)


async def _ensure_kv(js: JetStreamContext, bucket: str, replicas: int) -> KeyValue:
    async def go() -> KeyValue:
        try:
            return await js.create_key_value(
                api.KeyValueConfig(bucket=bucket, history=1, storage=api.StorageType.FILE, replicas=replicas)
            )
        except BadRequestError as e:
            if e.err_code != ERR_STREAM_NAME_IN_USE:
                raise
            # Created by someone else with slightly different settings (e.g. another client version):
            # use it as it is.
            log.info("topology: KV bucket %s exists with another configuration; using it as is", bucket)
            return await js.key_value(bucket)

    return await _retry(f"kv {bucket}", go)


async def ensure_topology(
    js: JetStreamContext,
    *,
    ack_wait: float = 60.0,
    max_deliver: int = 5,
    duplicate_window: float = 600.0,
    replicas: int = 1,
) -> KeyValue:
    """Create or update every stream, work-queue consumer and the KV buckets (runs, dedup, ledger).

    Returns the runs bucket (``subjects.RUNS_BUCKET``).
    """
    for cfg in stream_configs(duplicate_window=duplicate_window, replicas=replicas):
        await _ensure_stream(js, cfg)
    for q in subjects.WORK_QUEUES:
        await _ensure_consumer(js, q.stream, consumer_config(q, ack_wait=ack_wait, max_deliver=max_deliver))
    kv = await _ensure_kv(js, subjects.RUNS_BUCKET, replicas)
    await _ensure_kv(js, DEDUP_BUCKET, replicas)
    await _ensure_kv(js, LEDGER_BUCKET, replicas)
    log.debug("topology: ensured %d streams, %d consumers, buckets %s, %s, %s",
              len(subjects.WORK_QUEUES) + 2, len(subjects.WORK_QUEUES), subjects.RUNS_BUCKET, DEDUP_BUCKET,
              LEDGER_BUCKET)  # fmt: skip
    return kv


async def bucket(js: JetStreamContext, name: str, replicas: int = 1) -> KeyValue:
    """KV bucket ``name``, created when missing (idempotent, race-safe): lets a service started
    against an older topology create the buckets it added."""
    try:
        return await js.key_value(name)
    except BucketNotFoundError:
        return await _ensure_kv(js, name, replicas)


async def dedup_kv(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    """The filter's dedup bucket (``DEDUP_BUCKET``)."""
    return await bucket(js, DEDUP_BUCKET, replicas)
