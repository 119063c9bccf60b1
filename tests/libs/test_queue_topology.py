"""ensure_topology against a real nats-server: idempotent, concurrent, create-or-update."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from nats.js import api

from libs.queue import subjects
from libs.queue.topology import connect, ensure_topology

REPO = Path(__file__).resolve().parents[2]


async def _check_topology(js, *, ack_wait: float, max_deliver: int, duplicate_window: float) -> None:
    for q in subjects.WORK_QUEUES:
        si = await js.stream_info(q.stream)
        assert si.config.subjects == [q.subject]
        assert si.config.retention == api.RetentionPolicy.WORK_QUEUE
        assert si.config.storage == api.StorageType.FILE
        assert si.config.duplicate_window == duplicate_window
        ci = await js.consumer_info(q.stream, q.consumer)
        assert ci.config.durable_name == q.consumer
        assert ci.config.ack_policy == api.AckPolicy.EXPLICIT
        assert ci.config.ack_wait == ack_wait
        assert ci.config.max_deliver == max_deliver + 1  # the worker dead-letters at max_deliver
        assert ci.config.filter_subject == q.subject
        assert si.state.consumer_count == 1
    for name, subj in ((subjects.EVENTS_STREAM, subjects.EVENTS_SUBJECTS), (subjects.DLQ_STREAM, subjects.DLQ_SUBJECTS)):
        si = await js.stream_info(name)
        assert si.config.subjects == [subj]
        assert si.config.retention == api.RetentionPolicy.LIMITS
    kv = await js.key_value(subjects.RUNS_BUCKET)
    status = await kv.status()
    assert status.history == 1


async def test_topology_idempotent(js):
    # The fixture already ran it once; run it twice more.
    kv1 = await ensure_topology(js)
    kv2 = await ensure_topology(js)
    assert kv1._name == kv2._name == subjects.RUNS_BUCKET
    await _check_topology(js, ack_wait=60.0, max_deliver=5, duplicate_window=600.0)
    names = sorted(await js.streams_info(), key=lambda s: s.config.name)
    assert len(names) == len(subjects.WORK_QUEUES) + 5  # + events, dlq, KV buckets runs, dedup and ledger


async def test_topology_updates_in_place_keeping_messages(js):
    await js.publish(subjects.FILTER.subject, b"kept")
    await ensure_topology(js, ack_wait=7.0, max_deliver=2, duplicate_window=30.0)
    await _check_topology(js, ack_wait=7.0, max_deliver=2, duplicate_window=30.0)
    assert (await js.stream_info(subjects.FILTER.stream)).state.messages == 1


async def test_topology_concurrent_connections(nats_server):
    conns = [await connect(nats_server.url, f"t{i}", max_reconnect_attempts=5) for i in range(6)]
    try:
        # Fresh server: everyone races to create, then everyone races to update.
        await asyncio.gather(*(ensure_topology(js) for _, js in conns))
        await asyncio.gather(*(ensure_topology(js, ack_wait=20.0, duplicate_window=120.0) for _, js in conns))
        await _check_topology(conns[0][1], ack_wait=20.0, max_deliver=5, duplicate_window=120.0)
    finally:
        for nc, _ in conns:
            await nc.close()


async def test_topology_concurrent_processes(nats_server, nats_conn):
    code = (
        "import asyncio, sys\n"
        "from libs.queue.topology import connect, ensure_topology\n"
        "async def main():\n"
        "    nc, js = await connect(sys.argv[1], 'proc', max_reconnect_attempts=5)\n"
        "    await ensure_topology(js, ack_wait=15.0)\n"
        "    await nc.close()\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, nats_server.url, cwd=str(REPO), env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        for _ in range(4)
    ]  # fmt: skip
    outs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), timeout=60)
    for p, (out, _) in zip(procs, outs):
        assert p.returncode == 0, out.decode(errors="replace")
    await _check_topology(nats_conn.jetstream(), ack_wait=15.0, max_deliver=5, duplicate_window=600.0)
