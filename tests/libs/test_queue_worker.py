"""StageWorker against a real nats-server: ack after publish, nak/retry, dead letters, dedup,
redelivery after a worker process is killed, heartbeats and graceful stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from nats.js.errors import NotFoundError

from libs.errors import InvalidArgument, PoisonMessage, TransientError
from libs.queue import subjects
from libs.queue.topology import connect, ensure_topology
from libs.queue.worker import Publish, StageWorker

REPO = Path(__file__).resolve().parents[2]
IN = subjects.FILTER  # the stage under test consumes the filter queue ...
OUT = subjects.SOLVE  # ... and hands its outputs to the solver queue
STAGE = "filter"


# ---------------------------------------------------------------------------- helpers
async def publish_inputs(js, ids: list[str]) -> None:
    for i in ids:
        await js.publish(IN.subject, json.dumps({"id": i}).encode(), headers={"Nats-Msg-Id": f"in.{i}"})


def outputs_for(items: list[dict]) -> list[list[Publish]]:
    return [[Publish(OUT.subject, json.dumps({"id": it["id"], "ok": True}).encode(), f"{it['id']}.solve")] for it in items]


async def stream_msgs(js, stream: str) -> list:
    """Every message still stored in ``stream`` (RawStreamMsg with .data, .headers, .seq)."""
    info = await js.stream_info(stream)
    out = []
    if info.state.messages == 0:
        return out
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            out.append(await js.get_msg(stream, seq))
        except NotFoundError:
            pass
    return out


async def wait_until(cond, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def pending_in(js, q=IN) -> tuple[int, int]:
    """(messages left in the work-queue stream, messages delivered but unacked)."""
    si = await js.stream_info(q.stream)
    ci = await js.consumer_info(q.stream, q.consumer)
    return si.state.messages, ci.num_ack_pending


def make_worker(js, handler, **kw) -> StageWorker:
    kw.setdefault("fetch_timeout", 0.3)
    return StageWorker(js, queue=IN, stage=STAGE, decode=json.loads, handler=handler,
                       item_id=lambda it: it["id"], **kw)  # fmt: skip


# ---------------------------------------------------------------------------- happy path
async def test_batch_publishes_outputs_then_acks(js):
    calls: list[list[str]] = []

    async def handler(items):
        calls.append([it["id"] for it in items])
        return outputs_for(items)

    events: list[tuple[str, dict]] = []
    await publish_inputs(js, [f"q{i}" for i in range(5)])
    w = make_worker(js, handler, on_event=lambda e, f: events.append((e, f)))
    await w.start()
    assert w.ready
    await wait_until(lambda: w.stats.acked == 5, what="5 acks")
    await w.stop()
    assert not w.ready

    assert sorted(i for c in calls for i in c) == [f"q{i}" for i in range(5)]
    assert len(calls) == 1  # one handler call for the whole batch
    outs = await stream_msgs(js, OUT.stream)
    assert sorted(json.loads(m.data)["id"] for m in outs) == [f"q{i}" for i in range(5)]
    assert {m.headers["Nats-Msg-Id"] for m in outs} == {f"q{i}.solve" for i in range(5)}
    assert await pending_in(js) == (0, 0)  # acked inputs are gone from the work queue
    s = w.stats
    assert (s.fetched, s.acked, s.naked, s.dead_lettered, s.published) == (5, 5, 0, 0, 5)
    assert [e for e, _ in events].count("ack") == 5 and ("batch" in [e for e, _ in events])
    assert all(f["stage"] == STAGE for _, f in events)


async def test_concurrency_processes_everything_once(js):
    seen = Counter()

    async def handler(items):
        for it in items:
            seen[it["id"]] += 1
        await asyncio.sleep(0.01)
        return outputs_for(items)

    ids = [f"c{i}" for i in range(40)]
    await publish_inputs(js, ids)
    w = make_worker(js, handler, batch_size=4, concurrency=3)
    await w.start()
    await wait_until(lambda: w.stats.acked == 40, what="40 acks")
    await w.stop()
    assert set(seen) == set(ids) and max(seen.values()) == 1
    assert len(await stream_msgs(js, OUT.stream)) == 40


async def test_empty_output_list_acks(js):
    async def handler(items):
        return [[] for _ in items]  # e.g. the filter rejected everything

    await publish_inputs(js, ["e1", "e2"])
    w = make_worker(js, handler)
    await w.start()
    await wait_until(lambda: w.stats.acked == 2)
    await w.stop()
    assert await pending_in(js) == (0, 0)
    assert await stream_msgs(js, OUT.stream) == []


# ---------------------------------------------------------------------------- dead letters
async def test_malformed_message_dead_lettered_and_worker_continues(js):
    handled = []

    async def handler(items):
        handled.extend(it["id"] for it in items)
        return outputs_for(items)

    await publish_inputs(js, ["m1"])
    bad = await js.publish(IN.subject, b"{not json", headers={"X-Trace": "t-1"})
    await publish_inputs(js, ["m2"])
    w = make_worker(js, handler)
    await w.start()
    await wait_until(lambda: w.stats.acked == 2 and w.stats.dead_lettered == 1)
    # Keeps going after the bad message.
    await publish_inputs(js, ["m3"])
    await wait_until(lambda: w.stats.acked == 3)
    await w.stop()

    assert sorted(handled) == ["m1", "m2", "m3"]
    [dl] = await stream_msgs(js, subjects.DLQ_STREAM)
    assert dl.subject == subjects.dlq_subject(STAGE)
    assert dl.data == b"{not json"  # the original payload
    h = dl.headers
    assert h[subjects.H_REASON] == "malformed"
    assert "JSONDecodeError" in h[subjects.H_DETAIL]
    assert h[subjects.H_STAGE] == STAGE
    assert h[subjects.H_SUBJECT] == IN.subject
    assert h[subjects.H_DELIVERIES] == "1"
    assert h["Nats-Msg-Id"] == f"dlq.{STAGE}.{bad.seq}"
    assert h["X-Trace"] == "t-1"  # application headers are kept
    assert await pending_in(js) == (0, 0)  # terminated, not redelivered


async def test_decoder_poison_reason_is_kept(js):
    def decode(data: bytes) -> dict:
        obj = json.loads(data)
        if obj.get("v") != 1:
            raise PoisonMessage("unknown_schema_version", f"v={obj.get('v')}")
        return obj

    async def handler(items):
        return outputs_for(items)

    await js.publish(IN.subject, b'{"id": "v7", "v": 7}')
    await js.publish(IN.subject, b'{"id": "v1", "v": 1}')
    w = StageWorker(js, queue=IN, stage=STAGE, decode=decode, handler=handler, fetch_timeout=0.3)
    await w.start()
    await wait_until(lambda: w.stats.acked == 1 and w.stats.dead_lettered == 1)
    await w.stop()
    [dl] = await stream_msgs(js, subjects.DLQ_STREAM)
    assert dl.headers[subjects.H_REASON] == "unknown_schema_version"
    assert dl.headers[subjects.H_DETAIL] == "v=7"


async def test_poison_from_handler(js):
    async def handler(items):
        return [PoisonMessage("no_answer", "x" * 5000 + "\r\nend") if it["id"] == "p2" else outputs_for([it])[0]
                for it in items]  # fmt: skip

    await publish_inputs(js, ["p1", "p2", "p3"])
    w = make_worker(js, handler)
    await w.start()
    await wait_until(lambda: w.stats.acked == 2 and w.stats.dead_lettered == 1)
    await w.stop()
    [dl] = await stream_msgs(js, subjects.DLQ_STREAM)
    assert json.loads(dl.data) == {"id": "p2"}
    assert dl.headers[subjects.H_REASON] == "no_answer"
    detail = dl.headers[subjects.H_DETAIL]
    assert 1000 <= len(detail) <= 1024 and "\r" not in detail and "\n" not in detail
    assert sorted(json.loads(m.data)["id"] for m in await stream_msgs(js, OUT.stream)) == ["p1", "p3"]
    assert await pending_in(js) == (0, 0)


async def test_transient_error_naks_then_retry_succeeds(js):
    attempts = Counter()

    async def handler(items):
        res = []
        for it in items:
            attempts[it["id"]] += 1
            res.append(TransientError("engine busy", delay=0.2) if attempts[it["id"]] == 1 else outputs_for([it])[0])
        return res

    acks = []
    await publish_inputs(js, ["t1", "t2", "t3"])
    w = make_worker(js, handler, on_event=lambda e, f: e == "ack" and acks.append(f))
    await w.start()
    await wait_until(lambda: w.stats.acked == 3)
    await w.stop()
    assert attempts == {"t1": 2, "t2": 2, "t3": 2}
    assert w.stats.naked == 3 and w.stats.dead_lettered == 0
    assert {f["deliveries"] for f in acks} == {2}
    assert len(await stream_msgs(js, OUT.stream)) == 3
    assert await pending_in(js) == (0, 0)


async def test_max_deliver_reached_dead_letters(js):
    await ensure_topology(js, max_deliver=3)
    calls = Counter()

    async def handler(items):
        for it in items:
            calls[it["id"]] += 1
        return [TransientError("still busy", delay=0.05) for _ in items]

    await publish_inputs(js, ["x1"])
    w = make_worker(js, handler, max_deliver=3)
    await w.start()
    await wait_until(lambda: w.stats.dead_lettered == 1)
    await w.stop()
    assert calls["x1"] == 3 and w.stats.naked == 2
    [dl] = await stream_msgs(js, subjects.DLQ_STREAM)
    assert dl.headers[subjects.H_REASON] == "max_deliver_exceeded"
    assert dl.headers[subjects.H_DELIVERIES] == "3"
    assert "still busy" in dl.headers[subjects.H_DETAIL]
    assert await pending_in(js) == (0, 0)


async def test_handler_raising_counts_for_every_item(js):
    await ensure_topology(js, max_deliver=2)
    calls = 0

    async def handler(items):
        nonlocal calls
        calls += 1
        raise RuntimeError("engine crashed")

    await publish_inputs(js, ["r1", "r2"])
    w = make_worker(js, handler, max_deliver=2)
    w.retry_delay = 0.1  # for exceptions other than TransientError (default 2s)
    await w.start()
    await wait_until(lambda: w.stats.dead_lettered == 2, timeout=10)
    await w.stop()
    assert w.stats.naked == 2
    dls = await stream_msgs(js, subjects.DLQ_STREAM)
    assert sorted(json.loads(m.data)["id"] for m in dls) == ["r1", "r2"]
    assert all("RuntimeError: engine crashed" in m.headers[subjects.H_DETAIL] for m in dls)


async def test_invalid_argument_and_bad_results(js):
    calls = Counter()

    async def handler(items):
        res = []
        for it in items:
            calls[it["id"]] += 1
            if it["id"] == "i1":
                res.append(InvalidArgument("no question text"))  # -> dead letter
            elif calls[it["id"]] == 1:
                res.append("not a list of Publish")  # a handler bug -> nak, retried
            else:
                res.extend(outputs_for([it]))
        return res

    await publish_inputs(js, ["i1", "i2"])
    w = make_worker(js, handler)
    w.retry_delay = 0.1
    await w.start()
    await wait_until(lambda: w.stats.acked == 1 and w.stats.dead_lettered == 1)
    await w.stop()
    assert calls == {"i1": 1, "i2": 2} and w.stats.naked == 1
    [dl] = await stream_msgs(js, subjects.DLQ_STREAM)
    assert dl.headers[subjects.H_REASON] == "invalid_argument"
    assert "no question text" in dl.headers[subjects.H_DETAIL]


async def test_delivery_beyond_max_deliver_dead_lettered_without_handler(js):
    # A previous worker died during the last allowed delivery: the next delivery must not run
    # the handler again but dead-letter the item (the consumer allows max_deliver + 1).
    await ensure_topology(js, max_deliver=2)
    await publish_inputs(js, ["d1"])
    raw = await js.pull_subscribe_bind(durable=IN.consumer, stream=IN.stream)
    for n in (1, 2):
        [m] = await raw.fetch(1, timeout=2)
        assert m.metadata.num_delivered == n
        await m.nak()
    await raw.unsubscribe()

    async def handler(items):  # pragma: no cover - must not be called
        raise AssertionError("handler called")

    w = make_worker(js, handler, max_deliver=2)
    await w.start()
    await wait_until(lambda: w.stats.dead_lettered == 1)
    await w.stop()
    [dl] = await stream_msgs(js, subjects.DLQ_STREAM)
    assert dl.headers[subjects.H_REASON] == "max_deliver_exceeded"
    assert dl.headers[subjects.H_DELIVERIES] == "3"
    assert await pending_in(js) == (0, 0)


# ---------------------------------------------------------------------------- publish + dedup
async def test_publish_failure_naks_and_never_acks(js):
    async def handler(items):
        return [[Publish("nowhere.no.stream", b"x", f"{it['id']}.x")] for it in items]

    await publish_inputs(js, ["f1"])
    w = make_worker(js, handler)
    w.publish_timeout = 1.0
    await w.start()
    await wait_until(lambda: w.stats.naked >= 1)
    await w.stop()
    assert w.stats.acked == 0
    left, _ = await pending_in(js)
    assert left == 1  # still in the work queue, will be retried


async def test_msg_id_dedup_on_publish(js):
    a = await js.publish(OUT.subject, b"one", headers={"Nats-Msg-Id": "same"})
    b = await js.publish(OUT.subject, b"one again", headers={"Nats-Msg-Id": "same"})
    assert not a.duplicate and b.duplicate and b.seq == a.seq
    msgs = await stream_msgs(js, OUT.stream)
    assert [m.data for m in msgs] == [b"one"]


async def test_redelivered_input_does_not_duplicate_outputs(js):
    # First delivery: the outputs get stored but the input is not acked (as if the worker died
    # between publishing and acking). The redelivery publishes the same ids: deduplicated.
    deliveries = Counter()

    async def handler(items):
        res = []
        for it, outs in zip(items, outputs_for(items)):
            deliveries[it["id"]] += 1
            if deliveries[it["id"]] == 1:
                for p in outs:
                    await js.publish(p.subject, p.payload, headers={"Nats-Msg-Id": p.msg_id})
                res.append(TransientError("died before ack", delay=0.1))
            else:
                res.append(outs)
        return res

    await publish_inputs(js, ["u1", "u2"])
    w = make_worker(js, handler)
    await w.start()
    await wait_until(lambda: w.stats.acked == 2)
    await w.stop()
    assert w.stats.duplicates == 2 and w.stats.published == 0
    outs = await stream_msgs(js, OUT.stream)
    assert sorted(json.loads(m.data)["id"] for m in outs) == ["u1", "u2"]


# ---------------------------------------------------------------------------- crashes, heartbeats, stop
CHILD = r"""
import asyncio, json, sys
from libs.queue import subjects
from libs.queue.topology import connect
from libs.queue.worker import StageWorker

async def main():
    nc, js = await connect(sys.argv[1], "doomed-worker")
    async def handler(items):
        print("HOLDING " + ",".join(it["id"] for it in items), flush=True)
        await asyncio.Event().wait()  # blocks forever (a hung model call)
    w = StageWorker(js, queue=subjects.FILTER, stage="filter", decode=json.loads, handler=handler,
                    batch_size=16, fetch_timeout=0.5, ack_wait=float(sys.argv[2]))
    await w.start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_redelivery_after_worker_killed_mid_batch(nats_server, js):
    ack_wait = 2.0
    await ensure_topology(js, ack_wait=ack_wait)
    ids = [f"k{i}" for i in range(6)]
    await publish_inputs(js, ids)

    seen = Counter()
    acks = []

    async def handler(items):
        for it in items:
            seen[it["id"]] += 1
        return outputs_for(items)

    w = make_worker(js, handler, ack_wait=ack_wait, on_event=lambda e, f: e == "ack" and acks.append(f))
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, nats_server.url, str(ack_wait),
        cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        line = await asyncio.wait_for(child.stdout.readline(), timeout=30)
        assert line.startswith(b"HOLDING "), (line, await child.stderr.read())
        held = line.decode().split()[1].split(",")
        assert held
        # A second replica runs alongside. For longer than ack_wait it gets nothing: the child's
        # heartbeats keep the messages it holds.
        await w.start()
        await asyncio.sleep(ack_wait * 1.5)
        assert w.stats.fetched == 6 - len(held)
        assert (await js.consumer_info(IN.stream, IN.consumer)).num_redelivered == 0
        os.kill(child.pid, signal.SIGKILL)  # dies mid-batch, holding unacked messages
        await child.wait()
        assert child.returncode == -signal.SIGKILL
        await wait_until(lambda: w.stats.acked == len(ids), timeout=ack_wait * 4, what="redelivery")
    finally:
        if child.returncode is None:
            os.kill(child.pid, signal.SIGKILL)
            await child.wait()
        await w.stop()

    assert seen == Counter({i: 1 for i in ids})
    assert {f["item_id"] for f in acks if f["deliveries"] >= 2} == set(held)
    outs = await stream_msgs(js, OUT.stream)
    assert Counter(json.loads(m.data)["id"] for m in outs) == Counter({i: 1 for i in ids})  # exactly once
    assert await pending_in(js) == (0, 0)
    assert (await stream_msgs(js, subjects.DLQ_STREAM)) == []


async def test_heartbeat_keeps_slow_batch_from_redelivery(nats_server, js):
    ack_wait = 1.5
    await ensure_topology(js, ack_wait=ack_wait)
    seen = Counter()

    async def slow(items):
        for it in items:
            seen[it["id"]] += 1
        await asyncio.sleep(ack_wait * 2.5)  # far longer than ack_wait
        return outputs_for(items)

    async def other(items):  # a second replica on the same consumer
        for it in items:
            seen[it["id"]] += 1
        return outputs_for(items)

    nc2, js2 = await connect(nats_server.url, "replica-2", max_reconnect_attempts=5)
    await publish_inputs(js, ["h1", "h2"])
    w1 = make_worker(js, slow, ack_wait=ack_wait)
    await w1.start()
    await wait_until(lambda: w1.inflight == 1)
    w2 = StageWorker(js2, queue=IN, stage=STAGE, decode=json.loads, handler=other, fetch_timeout=0.2, ack_wait=ack_wait)
    await w2.start()
    try:
        await wait_until(lambda: w1.stats.acked == 2, timeout=ack_wait * 6)
    finally:
        await w1.stop()
        await w2.stop()
        await nc2.close()
    assert seen == Counter({"h1": 1, "h2": 1})
    assert w2.stats.fetched == 0


async def test_graceful_stop_finishes_inflight_work(js):
    started = asyncio.Event()

    async def handler(items):
        started.set()
        await asyncio.sleep(1.0)
        return outputs_for(items)

    await publish_inputs(js, ["g1", "g2", "g3"])
    w = make_worker(js, handler)
    await w.start()
    await asyncio.wait_for(started.wait(), timeout=10)
    assert w.inflight == 1
    t0 = time.monotonic()
    await w.stop(timeout=10)
    assert time.monotonic() - t0 < 5
    assert not w.ready and w.inflight == 0
    assert w.stats.acked == 3
    assert len(await stream_msgs(js, OUT.stream)) == 3
    assert await pending_in(js) == (0, 0)
    # Nothing is fetched after stop.
    await publish_inputs(js, ["g4"])
    await asyncio.sleep(0.5)
    assert w.stats.fetched == 3
    assert (await pending_in(js)) == (1, 0)


async def test_stop_when_idle_is_quick_and_timeout_cancels(js):
    w = make_worker(js, lambda items: asyncio.sleep(0, outputs_for(items)), fetch_timeout=0.5)
    await w.start()
    t0 = time.monotonic()
    await w.stop()
    assert time.monotonic() - t0 < 2

    async def hang(items):
        await asyncio.Event().wait()

    await publish_inputs(js, ["s1"])
    w = make_worker(js, hang)
    await w.start()
    await wait_until(lambda: w.inflight == 1)
    await w.stop(timeout=0.3)  # gives up on the hung batch; the message stays unacked
    assert w.stats.acked == 0
    assert (await pending_in(js)) == (1, 1)


async def test_runtime_shutdown_lets_the_worker_cancel_a_hung_batch(js):
    # The runtime hands the worker its stop timeout, so the worker cancels the batch itself and
    # the shutdown is clean; the step's own bound (20 s) used to fire first, log a failure and
    # leave the batch running while NATS was drained under it.
    from libs.runtime import ServiceRuntime
    from libs.settings import CommonSettings

    cancelled = asyncio.Event()

    async def hang(items):
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    await publish_inputs(js, ["r1"])
    w = make_worker(js, hang)
    await w.start()
    await wait_until(lambda: w.inflight == 1)
    rt = ServiceRuntime(STAGE, CommonSettings(), None)
    rt.worker_stop_timeout = 0.3  # what `scalequest run` sets once its run has ended
    rt.register_worker(w)
    rt.request_shutdown("test")
    t0 = time.monotonic()
    assert await rt.run_until_shutdown() == 0
    assert time.monotonic() - t0 < 3
    assert rt.failures == [] and cancelled.is_set()
    assert w.stats.acked == 0 and (await pending_in(js)) == (1, 1)  # unacked: redelivered later


async def test_consumer_missing_is_a_clear_error(nats_conn):
    js = nats_conn.jetstream()  # no ensure_topology
    w = make_worker(js, lambda items: None)
    with pytest.raises(RuntimeError, match="ensure_topology"):
        await w.start()


async def test_worker_survives_server_restart(nats_server, nats_conn, js):
    async def handler(items):
        return outputs_for(items)

    await publish_inputs(js, ["b1"])
    w = make_worker(js, handler)
    await w.start()
    await wait_until(lambda: w.stats.acked == 1)
    reconnects = nats_conn.stats["reconnects"]
    nats_server.restart()
    await wait_until(lambda: nats_conn.stats["reconnects"] > reconnects and nats_conn.is_connected, what="reconnect")
    await publish_inputs(js, ["b2", "b3"])
    await wait_until(lambda: w.stats.acked == 3, timeout=15, what="work after restart")
    assert w.ready
    await w.stop()
    assert sorted(json.loads(m.data)["id"] for m in await stream_msgs(js, OUT.stream)) == ["b1", "b2", "b3"]
