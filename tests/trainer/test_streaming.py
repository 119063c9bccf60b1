"""Following a run's shards over a real nats-server (libs/streaming.py): order, the end, restarts
without re-reading or skipping, runs that ended before the consumer started, unannounced shards,
and a whole pipeline run (scripted engine) followed while it is running."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

import grpc
import pytest
from scalequest.common.v1 import items_pb2 as pb
from scalequest.coordinator.v1 import coordinator_pb2 as capi
from scalequest.coordinator.v1 import coordinator_pb2_grpc as capi_grpc

from libs.engines.scripted import math_engine
from libs.storage.objectstore import LocalStore
from libs.storage.shards import list_shards, read_shard
from libs.streaming import PROGRESS_BUCKET, RunShardStream, StreamError, consumer_name
from scalequest_cli.embedded import start_pipeline
from tests.services.test_pipeline_fake import OVERRIDES
from tests.trainer.helpers import FakeRun


def ids(records) -> list[str]:
    return [r["item_id"] for r in records]


def take(stream: RunShardStream, n: int) -> list[dict]:
    out = []
    it = iter(stream)
    for rec in it:
        out.append(rec)
        if len(out) == n:
            break
    return out


def test_consumer_name_is_derived_from_the_job():
    assert consumer_name("sq-train-sft-demo") == "trainer-sq-train-sft-demo"
    assert consumer_name("a.b c*>") == "trainer-a-b-c"


async def test_reads_every_shard_in_order_then_ends(js, nats_server, tmp_path):
    store = LocalStore(tmp_path)
    run = FakeRun(js, store, "r1")
    want = []
    for size in (5, 5, 3):
        want += await run.shard(size)
    await run.end()
    # the run ended before the consumer existed: the events stream keeps them (limits retention)
    stream = RunShardStream(nats_server.url, "r1", "trainer-a", store=store, fetch_timeout=0.5)
    with stream:
        got = await asyncio.to_thread(lambda: list(stream))
        assert ids(got) == want
        assert stream.ended and stream.progress.records == 13
        assert await asyncio.to_thread(lambda: list(stream)) == []  # a new pass has nothing left


async def test_restart_with_the_same_consumer_resumes_exactly(js, nats_server, tmp_path):
    store = LocalStore(tmp_path)
    run = FakeRun(js, store, "r2")
    want = []
    for _ in range(4):
        want += await run.shard(5)
    await run.end()
    url = nats_server.url

    first = RunShardStream(url, "r2", "trainer-job", store=store, fetch_timeout=0.5, ack_wait=3600)
    with first:
        # a peek (what trainers do while they are built) and an abandoned iterator move nothing
        assert first.peek()["item_id"] == want[0]
        assert ids(await asyncio.to_thread(take, first, 3)) == want[:3]
        part1 = await asyncio.to_thread(take, first, 7)  # a new iteration starts at the committed position
        assert ids(part1) == want[:7]
    # stopped in the middle of the second shard; the long ack wait proves the nak on close
    second = RunShardStream(url, "r2", "trainer-job", store=store, fetch_timeout=0.5, ack_wait=3600)
    with second:
        assert second.peek()["item_id"] == want[7]
        part2 = await asyncio.to_thread(take, second, 5)  # stops in the third shard
    third = RunShardStream(url, "r2", "trainer-job", store=store, fetch_timeout=0.5, ack_wait=3600)
    with third:
        part3 = await asyncio.to_thread(lambda: list(third))
        assert third.ended
    union = ids(part1) + ids(part2) + ids(part3)
    assert union == want, "records were re-read, skipped or reordered across restarts"
    # a fourth incarnation after the end has nothing to do
    with RunShardStream(url, "r2", "trainer-job", store=store, fetch_timeout=0.5) as fourth:
        assert await asyncio.to_thread(lambda: list(fourth)) == []
    # another job name is an independent consumer that reads everything
    with RunShardStream(url, "r2", "trainer-other", store=store, fetch_timeout=0.5) as other:
        assert ids(await asyncio.to_thread(lambda: list(other))) == want


async def test_stop_at_a_shard_boundary_commits_the_shard(js, nats_server, tmp_path):
    store = LocalStore(tmp_path)
    run = FakeRun(js, store, "r3")
    want = await run.shard(4) + await run.shard(4)
    await run.end()
    url = nats_server.url
    with RunShardStream(url, "r3", "trainer-b", store=store, fetch_timeout=0.5) as s:
        a = await asyncio.to_thread(take, s, 4)
    with RunShardStream(url, "r3", "trainer-b", store=store, fetch_timeout=0.5) as s:
        b = await asyncio.to_thread(lambda: list(s))
    assert ids(a) + ids(b) == want


async def test_unannounced_shards_and_missing_end_come_from_the_manifest(js, nats_server, tmp_path):
    store = LocalStore(tmp_path)
    run = FakeRun(js, store, "r4")
    want = await run.shard(3) + await run.shard(3, announce=False) + await run.shard(2)
    await run.end(announce=False)  # neither the second shard nor the end was announced
    url = nats_server.url
    with RunShardStream(url, "r4", "trainer-c", store=store, fetch_timeout=0.3, idle_check_seconds=0.0) as s:
        got = await asyncio.to_thread(lambda: list(s))
    assert sorted(ids(got)) == sorted(want) and len(got) == len(want)


async def test_an_end_that_overtakes_the_last_shard_waits_for_it(js, nats_server, tmp_path):
    """The coordinator can announce the end while its last shard is still being written (it
    counts records as accepted first): the stream waits for the records the end announces."""
    store = LocalStore(tmp_path)
    run = FakeRun(js, store, "r8")
    want = await run.shard(3)
    await run.end(accepted=5)
    with RunShardStream(nats_server.url, "r8", "trainer-f", store=store, fetch_timeout=0.2) as s:
        task = asyncio.create_task(asyncio.to_thread(lambda: list(s)))
        await asyncio.sleep(1.0)
        assert not task.done(), "the stream ended without the records the end announced"
        want += await run.shard(2)
        got = await asyncio.wait_for(task, 30)
    assert ids(got) == want


async def test_close_from_another_thread_stops_a_waiting_reader(js, nats_server, tmp_path):
    store = LocalStore(tmp_path)
    FakeRun(js, store, "r9")  # started, nothing written yet
    stream = RunShardStream(nats_server.url, "r9", "trainer-g", store=store, fetch_timeout=0.2).start()
    reader = asyncio.create_task(asyncio.to_thread(lambda: list(stream)))
    await asyncio.sleep(0.5)
    await asyncio.to_thread(stream.close)
    assert await asyncio.wait_for(reader, 10) == [] and not stream.ended


async def test_consumer_bound_to_another_run_is_refused(js, nats_server, tmp_path):
    store = LocalStore(tmp_path)
    run = FakeRun(js, store, "r5")
    await run.shard(2)
    await run.end()
    url = nats_server.url
    with RunShardStream(url, "r5", "trainer-d", store=store, fetch_timeout=0.3) as s:
        await asyncio.to_thread(lambda: list(s))
    with pytest.raises(StreamError, match="already follows run"):
        await asyncio.to_thread(RunShardStream(url, "r6", "trainer-d", store=store).start)
    kv = await js.key_value(PROGRESS_BUCKET)
    assert (await kv.get("trainer-d")).value


async def test_follows_a_live_run_as_shards_appear(js, nats_server, tmp_path):
    """Shards announced over time are delivered while the run goes on; the stream ends only at
    the run's end."""
    store = LocalStore(tmp_path)
    run = FakeRun(js, store, "r7")
    url = nats_server.url
    stream = RunShardStream(url, "r7", "trainer-e", store=store, fetch_timeout=0.2).start()
    got: list[tuple[float, str]] = []

    def consume():
        for rec in stream:
            got.append((time.monotonic(), rec["item_id"]))

    task = asyncio.create_task(asyncio.to_thread(consume))
    want = []
    published = []
    for _ in range(3):
        want += await run.shard(2)
        published.append(time.monotonic())
        await asyncio.sleep(0.8)
    assert not task.done(), "the stream ended before the run did"
    await run.end()
    await asyncio.wait_for(task, 30)
    stream.close()
    assert [i for _, i in got] == want
    # the first shard's records were consumed before the next shard was even written
    assert got[1][0] < published[1]


async def _start_run(stub, target: int, run_id: str, **cfg) -> str:
    config = pb.RunConfig(target=target, seed=7, n_candidates=4, max_outstanding=8, shard_max_records=4,
                          shard_max_seconds=0.5, **cfg)
    return (await stub.StartRun(capi.StartRunRequest(config=config, run_id=run_id))).run_id


async def test_follows_a_pipeline_run_concurrently(nats_server, tmp_path):
    """A real run (all services, scripted engine with latency) and a stream that starts with it:
    shards are consumed while the run is still going, and the stream stops at the run's end
    with every accepted record exactly once."""
    store_url = str(tmp_path / "store")
    engine = math_engine(delay=0.05)
    await engine.start()
    stream = RunShardStream(nats_server.url, "live-run", consumer_name("sft-live"), store=store_url, fetch_timeout=0.3)
    await asyncio.to_thread(stream.start)
    got: list[dict] = []
    consumer = asyncio.create_task(asyncio.to_thread(lambda: got.extend(stream)))
    async with AsyncExitStack() as stack:
        pipe = await start_pipeline(nats_url=nats_server.url, store_url=store_url, overrides=OVERRIDES, stack=stack,
                                    engine=engine)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{pipe.port('coordinator')}") as ch:
            stub = capi_grpc.CoordinatorServiceStub(ch)
            run_id = await _start_run(stub, 16, "live-run")
            async for st in stub.StreamProgress(capi.StreamProgressRequest(run_id=run_id, interval_seconds=0.2)):
                pass
            t_done = time.monotonic()
            assert st.state == "completed"
        await asyncio.wait_for(consumer, 60)
    stream.close()
    rows = [r for k in list_shards(LocalStore(store_url), "live-run") for r in read_shard(LocalStore(store_url), k)]
    assert sorted(ids(got)) == sorted(ids(rows)) and len(got) == 16
    assert len(stream.received) >= 3
    assert stream.received[0][0] < t_done, "no shard was consumed while the run was going"
