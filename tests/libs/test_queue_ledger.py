"""The outcome ledger against a real nats-server: per-item and batch entries, folded in order."""

from __future__ import annotations

import asyncio

from libs.queue import ledger


async def test_batch_entries_fold_with_per_item_records_in_stream_order(js):
    kv = await ledger.ledger_kv(js)
    await ledger.record_batch(kv, "r1", [("r1-1", "filter", "duplicate"), ("r1-2", "filter", "near_duplicate")])
    # A redelivered outcome recorded again in another batch: the first record stands.
    await ledger.record_batch(kv, "r1", [("r1-2", "coordinator", "over_target"), ("r1-3", "solver", "no_answer")])
    assert await ledger.record(kv, "r1", "r1-4", "reward", "disagreement")
    # The same batch again (a retry after a lost reply) stores nothing new.
    before = (await kv.status()).values
    await ledger.record_batch(kv, "r1", [("r1-1", "filter", "duplicate"), ("r1-2", "filter", "near_duplicate")])
    assert (await kv.status()).values == before
    await ledger.record_batch(kv, "r2", [("r2-1", "filter", "duplicate")])  # another run
    assert await ledger.entries(kv, "r1") == {
        "r1-1": ("filter", "duplicate"),
        "r1-2": ("filter", "near_duplicate"),
        "r1-3": ("solver", "no_answer"),
        "r1-4": ("reward", "disagreement"),
    }
    # A replayed dead letter replaces its batch record; an accepted one is forgotten.
    await ledger.record(kv, "r1", "r1-1", "filter", "judge_unsolvable", replace=True)
    await ledger.forget(kv, "r1", "r1-3")
    got = await ledger.entries(kv, "r1")
    assert got["r1-1"] == ("filter", "judge_unsolvable") and "r1-3" not in got and len(got) == 3
    # get finds batch-recorded items too
    assert await ledger.get(kv, "r1", "r1-2") == ("filter", "near_duplicate")
    assert await ledger.get(kv, "r1", "r1-3") is None
    assert await ledger.get(kv, "r2", "r2-1") == ("filter", "duplicate")


async def test_strict_record_keeps_first_writer_wins(js):
    kv = await ledger.ledger_kv(js)
    assert await ledger.record(kv, "r3", "r3-1", "filter", "duplicate", same_ok=False)
    assert not await ledger.record(kv, "r3", "r3-1", "filter", "duplicate", same_ok=False)
    assert await ledger.record(kv, "r3", "r3-1", "filter", "duplicate")  # same_ok: a lost reply retried
    assert not await ledger.record(kv, "r3", "r3-1", "solver", "no_answer")


async def test_batch_recorder_writes_one_entry_per_tick_per_run(js):
    kv = await ledger.ledger_kv(js)

    async def kv_of():
        return kv

    rec = ledger.BatchRecorder(kv_of)
    await asyncio.gather(*(rec.record("r4", f"r4-{i}", "filter", "duplicate") for i in range(50)),
                         *(rec.record("r5", f"r5-{i}", "solver", "no_answer") for i in range(3)))  # fmt: skip
    assert rec.entries_written == 2
    assert len(await ledger.entries(kv, "r4")) == 50 and len(await ledger.entries(kv, "r5")) == 3
    await rec.record("r4", "r4-50", "filter", "duplicate")
    assert rec.entries_written == 3


async def test_batch_recorder_hands_a_store_error_to_every_caller():
    class Broken:
        async def create(self, key, value):
            raise ConnectionError("nats down")

    async def kv_of():
        return Broken()

    rec = ledger.BatchRecorder(kv_of)
    out = await asyncio.gather(*(rec.record("r6", f"r6-{i}", "filter", "duplicate") for i in range(4)),
                               return_exceptions=True)  # fmt: skip
    assert all(isinstance(e, ConnectionError) for e in out) and rec.entries_written == 0
