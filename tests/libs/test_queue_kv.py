"""JSON helpers on the runs KV bucket, including compare-and-set under concurrency."""

from __future__ import annotations

import asyncio

from libs.queue import subjects
from libs.queue.kv import WATCH_IDLE_SECONDS, kv_get_json, kv_keys, kv_latest_json, kv_put_json, kv_update_json
from libs.queue.topology import connect


async def test_put_get_keys(js):
    kv = await js.key_value(subjects.RUNS_BUCKET)
    assert await kv_keys(kv, "") == []  # empty bucket: no exception
    assert await kv_get_json(kv, "run.r1.config") is None
    rev = await kv_put_json(kv, "run.r1.config", {"target": 10, "name": "é"})
    assert rev >= 1
    await kv_put_json(kv, "run.r1.state", {"phase": "running"})
    await kv_put_json(kv, "run.r2.config", {"target": 3})
    assert await kv_get_json(kv, "run.r1.config") == {"target": 10, "name": "é"}
    assert await kv_keys(kv, "run.r1.") == ["run.r1.config", "run.r1.state"]
    assert await kv_keys(kv, "run.") == ["run.r1.config", "run.r1.state", "run.r2.config"]
    assert await kv_keys(kv, "nope.") == []
    await kv.delete("run.r2.config")
    assert await kv_get_json(kv, "run.r2.config") is None
    assert await kv_keys(kv, "run.r2.") == []


async def test_latest_values_by_filter_and_watch_consumers_are_short_lived(js):
    kv = await js.key_value(subjects.RUNS_BUCKET)
    assert await kv_latest_json(kv, "run.r1.stage.>") == {}  # nothing yet: no exception, no wait
    await kv_put_json(kv, "run.r1.stage.filter.a", {"processed": 1})
    await kv_put_json(kv, "run.r1.stage.filter.a", {"processed": 2})
    await kv_put_json(kv, "run.r1.stage.solver.b", {"processed": 5})
    await kv_put_json(kv, "run.r2.stage.filter.a", {"processed": 9})
    await kv_put_json(kv, "run.r1.stage.reward.c", {"processed": 7})
    await kv.delete("run.r1.stage.reward.c")
    assert await kv_latest_json(kv, "run.r1.stage.>") == {"run.r1.stage.filter.a": {"processed": 2},
                                                          "run.r1.stage.solver.b": {"processed": 5}}  # fmt: skip
    for _ in range(5):  # a status poll: each call's consumer goes away seconds after it is done
        await kv_keys(kv, "run.")
        await kv_latest_json(kv, "run.r1.stage.>")
    infos = await js.consumers_info(f"KV_{subjects.RUNS_BUCKET}")
    assert infos and all(0 < c.config.inactive_threshold <= WATCH_IDLE_SECONDS for c in infos)


async def test_update_creates_and_recreates_deleted(js):
    kv = await js.key_value(subjects.RUNS_BUCKET)
    assert await kv_update_json(kv, "c", lambda old: {"n": (old or {}).get("n", 0) + 1}) == {"n": 1}
    await kv.delete("c")
    assert await kv_update_json(kv, "c", lambda old: {"n": (old or {}).get("n", 0) + 1}) == {"n": 1}
    assert await kv_get_json(kv, "c") == {"n": 1}


async def test_update_cas_concurrent_increments(nats_server, js):
    # Several connections (as several replicas would have) racing on the same absent key.
    others = [await connect(nats_server.url, f"kv{i}", max_reconnect_attempts=5) for i in range(3)]
    try:
        kvs = [await js.key_value(subjects.RUNS_BUCKET)] + [await j.key_value(subjects.RUNS_BUCKET) for _, j in others]
        calls = 0

        def incr(old):
            nonlocal calls
            calls += 1
            old = old or {"accepted": 0, "by_reason": {}}
            old["accepted"] += 1
            old["by_reason"]["ok"] = old["by_reason"].get("ok", 0) + 1
            return old

        await asyncio.gather(*(kv_update_json(kvs[i % len(kvs)], "run.x.counters", incr) for i in range(10)))
        assert await kv_get_json(kvs[0], "run.x.counters") == {"accepted": 10, "by_reason": {"ok": 10}}
        assert calls >= 10  # conflicts were retried, not lost
    finally:
        for nc, _ in others:
            await nc.close()
