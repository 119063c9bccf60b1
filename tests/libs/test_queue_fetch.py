"""fetch_ready against a real nats-server: what is ready comes back at once, an idle stage
wakes on the first message, and nothing is held beyond what was returned."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

from libs.queue.fetch import fetch_ready


@pytest.fixture
async def sub(js):
    await js.add_stream(StreamConfig(name="F", subjects=["f.>"], retention=RetentionPolicy.WORK_QUEUE))
    await js.add_consumer("F", ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT, ack_wait=30))
    return await js.pull_subscribe_bind(durable="c", stream="F")


async def put(js, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        await js.publish("f.x", str(i).encode())


async def test_a_partial_batch_comes_back_without_waiting_for_the_timeout(js, sub):
    await put(js, 5)
    t0 = time.monotonic()
    msgs = await fetch_ready(sub, 64, timeout=5.0)
    assert [m.data for m in msgs] == [str(i).encode() for i in range(5)]
    assert time.monotonic() - t0 < 1.0  # nats-py's fetch(64, timeout=5) waits the full 5 s here
    for m in msgs:
        await m.ack()


async def test_a_full_batch_and_the_rest_next_time(js, sub):
    await put(js, 10)
    first = await fetch_ready(sub, 4, timeout=2.0)
    second = await fetch_ready(sub, 100, timeout=2.0)
    assert [m.data for m in first + second] == [str(i).encode() for i in range(10)]
    assert len(first) == 4


async def test_an_idle_fetch_wakes_on_the_first_message_and_takes_what_is_ready(js, sub):
    async def later() -> None:
        await asyncio.sleep(0.3)
        await put(js, 3)

    t0 = time.monotonic()
    task = asyncio.create_task(later())
    msgs = await fetch_ready(sub, 16, timeout=5.0)
    waited = time.monotonic() - t0
    await task
    assert 0.25 < waited < 2.0
    assert 1 <= len(msgs) <= 3
    rest = [] if len(msgs) == 3 else await fetch_ready(sub, 16, timeout=2.0)
    assert [m.data for m in msgs + rest] == [b"0", b"1", b"2"]


async def test_nothing_raises_timeout_and_holds_no_message(js, sub):
    with pytest.raises(asyncio.TimeoutError):
        await fetch_ready(sub, 8, timeout=0.3)
    # no request is left waiting on the server to swallow the next message
    await put(js, 1)
    info = await js.consumer_info("F", "c")
    assert info.num_pending + info.num_ack_pending == 1
    msgs = await fetch_ready(sub, 8, timeout=2.0)
    assert [m.data for m in msgs] == [b"0"]
