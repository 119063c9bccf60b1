"""Prometheus metrics shared by every service process.

All metric names carry the ``scalequest_`` prefix and follow
``scalequest_<subsystem>_<name>_<unit>``. Labels are bounded (service slug, stage, method,
status code, reason): never an item, run or request id.

:func:`counter`, :func:`histogram` and :func:`gauge` create a metric family once and return
the same object on every later call, so several services hosted in one process (embedded
mode) and repeated imports never trip prometheus_client's duplicate-registration error.
:class:`StageMetrics` is what queue workers record into; :func:`start_metrics_server`
exposes the process registry over HTTP (once per address).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server

from libs.errors import ConfigError

log = logging.getLogger(__name__)

PREFIX = "scalequest_"

#: Latency buckets (seconds) for RPCs and batches: from sub-millisecond bookkeeping up to
#: multi-minute generation batches on CPU.
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: Batch-size buckets (messages).
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

_lock = threading.Lock()
_families: dict[str, tuple[type, tuple[str, ...], object]] = {}
_servers: dict[tuple[str, int], int] = {}


def metric_name(name: str) -> str:
    """``items_total`` -> ``scalequest_items_total``; an already-prefixed name is kept."""
    return name if name.startswith(PREFIX) else PREFIX + name


def _get_or_create(kind: type, name: str, doc: str, labels: Sequence[str], **kwargs: object):
    full = metric_name(name)
    labels = tuple(labels)
    with _lock:
        found = _families.get(full)
        if found is not None:
            found_kind, found_labels, metric = found
            if found_kind is not kind or found_labels != labels:
                raise ValueError(
                    f"metric {full} already exists as {found_kind.__name__}{list(found_labels)}, "
                    f"requested {kind.__name__}{list(labels)}"
                )
            return metric
        metric = kind(full, doc, labelnames=labels, registry=REGISTRY, **kwargs)
        _families[full] = (kind, labels, metric)
        return metric


def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
    """The process-wide counter ``scalequest_<name>`` (created on first call)."""
    return _get_or_create(Counter, name, doc, labels)


def histogram(
    name: str, doc: str, labels: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
) -> Histogram:
    """The process-wide histogram ``scalequest_<name>``; buckets are fixed by the first call."""
    return _get_or_create(Histogram, name, doc, labels, buckets=tuple(buckets))


def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
    """The process-wide gauge ``scalequest_<name>`` (created on first call)."""
    return _get_or_create(Gauge, name, doc, labels)


def registry() -> CollectorRegistry:
    """The registry every helper here registers into (prometheus_client's default one,
    so process and platform collectors are exported alongside)."""
    return REGISTRY


# --- gRPC server (recorded by libs.grpc.interceptors.ErrorMappingInterceptor) ------------


def grpc_handled() -> Counter:
    return counter(
        "grpc_server_handled_total",
        "RPCs completed by the server, by final status code.",
        ("service", "method", "code"),
    )


def grpc_handling_seconds() -> Histogram:
    return histogram(
        "grpc_server_handling_seconds",
        "Time from handler start to final status (whole stream for server-streaming RPCs).",
        ("service", "method"),
    )


def grpc_in_flight() -> Gauge:
    return gauge("grpc_server_in_flight_rpcs", "RPCs currently being handled.", ("service", "method"))


# --- queue workers ------------------------------------------------------------------------


@dataclass(frozen=True)
class StageMetrics:
    """The standard metrics of one stage's queue worker, with the stage label bound.

    ``processed``: items completed and acked; ``failed``: items that failed and will be
    retried (nak), by bounded ``reason``; ``dead_lettered``: items given up on, by reason;
    ``batch_seconds`` / ``batch_size``: one observation per fetched batch;
    ``in_flight``: items currently being processed.
    """

    stage: str

    @property
    def processed(self):
        return counter(
            "worker_items_processed_total", "Items processed and acked, per stage.", ("stage",)
        ).labels(self.stage)

    def failed(self, reason: str = "error"):
        return counter(
            "worker_items_failed_total",
            "Items that failed and were handed back for redelivery, per stage and reason.",
            ("stage", "reason"),
        ).labels(self.stage, reason)

    def dead_lettered(self, reason: str):
        return counter(
            "worker_items_dead_lettered_total",
            "Items terminated and published to the stage's dead-letter subject, per reason.",
            ("stage", "reason"),
        ).labels(self.stage, reason)

    @property
    def batch_seconds(self):
        return histogram(
            "worker_batch_seconds", "Wall time to process one fetched batch.", ("stage",)
        ).labels(self.stage)

    @property
    def batch_size(self):
        return histogram(
            "worker_batch_size_messages",
            "Messages per fetched batch.",
            ("stage",),
            buckets=SIZE_BUCKETS,
        ).labels(self.stage)

    @property
    def in_flight(self):
        return gauge("worker_in_flight_items", "Items being processed now.", ("stage",)).labels(self.stage)


def stage_metrics(stage: str) -> StageMetrics:
    """Metrics for one stage (e.g. ``stage_metrics("filter").processed.inc(n)``)."""
    return StageMetrics(stage)


# --- exposition ---------------------------------------------------------------------------


def start_metrics_server(port: int, host: str = "0.0.0.0") -> int:
    """Serve ``/metrics`` for the process registry on ``host:port`` in a daemon thread.

    Returns the bound port, or 0 when ``port`` is 0 (metrics disabled). Idempotent per
    address, so every service hosted in one process may call it with the same settings.
    A port that cannot be bound is a :class:`ConfigError` naming ``SQ_METRICS_PORT``.
    """
    if not port:
        return 0
    key = (host, port)
    with _lock:
        if key in _servers:
            return _servers[key]
        try:
            httpd, _thread = start_http_server(port, addr=host)
        except OSError as e:
            raise ConfigError(
                f"SQ_METRICS_PORT={port}: cannot serve metrics on {host}:{port} ({e.strerror or e})"
            ) from None
        bound = int(httpd.server_port)
        _servers[key] = bound
    log.info("metrics served on %s:%d/metrics", host, bound, extra={"step": "metrics"})
    return bound
