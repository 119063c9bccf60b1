"""RunStates: the cached "is this run closed?" answer stages ask for every item."""

from __future__ import annotations

import asyncio

from libs.queue.kv import kv_put_json
from libs.runstate import RunStates, state_key


async def test_a_batch_asking_at_once_costs_one_kv_read(js):
    kv = await js.create_key_value(bucket="runs-test")
    await kv_put_json(kv, state_key("r1"), {"state": "running"})
    reads = 0
    real_get = kv.get

    async def counting_get(key, *a, **kw):
        nonlocal reads
        reads += 1
        return await real_get(key, *a, **kw)

    kv.get = counting_get
    states = RunStates(kv, ttl=0.2)
    assert await asyncio.gather(*(states.is_closed("r1") for _ in range(64))) == [False] * 64
    assert reads == 1
    await kv_put_json(kv, state_key("r1"), {"state": "completed"})
    assert await states.is_closed("r1") is False  # cached within the ttl
    await asyncio.sleep(0.25)
    assert await asyncio.gather(*(states.is_closed("r1") for _ in range(16))) == [True] * 16
    assert reads == 2
    assert await states.is_closed("r1") is True and reads == 2  # closed is final: never read again
