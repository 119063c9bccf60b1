"""NATS JetStream plumbing: embedded server, topology, KV helpers and the stage worker."""

from libs.queue.kv import kv_get_json, kv_keys, kv_put_json, kv_update_json
from libs.queue.server import EmbeddedNats, find_nats_server
from libs.queue.topology import connect, ensure_topology
from libs.queue.worker import Publish, StageWorker, WorkerStats

__all__ = [
    "EmbeddedNats",
    "Publish",
    "StageWorker",
    "WorkerStats",
    "connect",
    "ensure_topology",
    "find_nats_server",
    "kv_get_json",
    "kv_keys",
    "kv_put_json",
    "kv_update_json",
]
