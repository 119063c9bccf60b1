"""The coordinator's sink against a real nats-server and object store: idempotent writes,
failure handling, restart recovery and admission bounds."""

from __future__ import annotations

import asyncio

import pytest
from scalequest.common.v1 import items_pb2 as pb

from libs.items import SCHEMA
from libs.queue import subjects
from libs.storage.objectstore import LocalStore, StoreError
from libs.storage.shards import existing_item_ids, list_shards, read_manifest
from services.coordinator.runs import RunManager
from services.coordinator.settings import CoordinatorSettings


def record(run_id: str, i: int) -> pb.Outcome:
    q = pb.Question(schema_version=SCHEMA, run_id=run_id, item_id=f"{run_id}-{i:07d}", text=f"What is {i} + 1?")
    solved = pb.SolvedQuestion(
        schema_version=SCHEMA, question=q, solver_model="m", candidates=[pb.Candidate(text="x", answer=str(i + 1))]
    )
    return pb.Outcome(record=pb.FinalRecord(schema_version=SCHEMA, solved=solved, selected=0, selection_reason="t"))


def reject(run_id: str, i: int, reason: str = "duplicate") -> pb.Outcome:
    return pb.Outcome(
        rejection=pb.Rejection(schema_version=SCHEMA, run_id=run_id, item_id=f"{run_id}-{i:07d}", stage="filter", reason=reason)
    )


async def manager(js, store, **kw) -> RunManager:
    kv = await js.key_value(subjects.RUNS_BUCKET)
    return RunManager(CoordinatorSettings(**kw), js, kv, store)


async def stop_admission(m: RunManager, run_id: str) -> None:
    # Tests drive the sink directly: no generation tasks should be admitted.
    m.runs[run_id].tasks[0].cancel()


async def test_outcomes_are_written_once(js, tmp_path):
    store = LocalStore(tmp_path)
    m = await manager(js, store)
    run_id = await m.start_run(pb.RunConfig(target=5, shard_max_records=2, shard_max_seconds=0.3))
    await stop_admission(m, run_id)
    outs = [record(run_id, i) for i in range(3)] + [record(run_id, 1), reject(run_id, 9), reject(run_id, 9)]
    res = await m.handle_outcomes(outs)
    assert all(r == [] for r in res)
    await asyncio.sleep(0.6)
    run = m.runs[run_id]
    assert run.accepted == 3 and run.finished == 4 and run.rejections[("filter", "duplicate")] == 1
    assert existing_item_ids(store, run_id) == {f"{run_id}-{i:07d}" for i in range(3)}
    assert all(s.records <= 2 for s in read_manifest(store, run_id).shards)
    # shard announcements were published for every shard
    sub = await js.subscribe(subjects.shard_subject(run_id), stream=subjects.EVENTS_STREAM)
    anns = [pb.ShardAnnouncement.FromString((await asyncio.wait_for(sub.next_msg(), 5)).data) for _ in list_shards(store, run_id)]
    assert sum(a.records for a in anns) == 3
    await m.close()


async def test_target_reached_ends_run_and_announces(js, tmp_path):
    store = LocalStore(tmp_path)
    m = await manager(js, store)
    run_id = await m.start_run(pb.RunConfig(target=2, shard_max_records=10, shard_max_seconds=30))
    await stop_admission(m, run_id)
    end_sub = await js.subscribe(subjects.run_end_subject(run_id), stream=subjects.EVENTS_STREAM)
    await m.handle_outcomes([record(run_id, 0), record(run_id, 1)])
    await m._finish(m.runs[run_id], "completed")  # what the (stopped) admission loop does at target
    end = pb.RunEnd.FromString((await asyncio.wait_for(end_sub.next_msg(), 5)).data)
    assert end.state == "completed" and end.accepted == 2
    # an outcome arriving after the end is counted, not written
    await m.handle_outcomes([record(run_id, 5)])
    assert m.runs[run_id].rejections[("coordinator", "over_target")] == 1
    assert len(existing_item_ids(store, run_id)) == 2
    assert read_manifest(store, run_id).state == "completed"


async def test_late_outcomes_of_an_ended_run_count_once(js, tmp_path):
    """A coordinator that did not load an ended run still counts each late outcome once, also
    one whose first delivery went into a batch entry of the ledger (a crash before its ack)."""
    from libs.queue.kv import kv_get_json
    from libs.runstate import state_key

    store = LocalStore(tmp_path)
    m1 = await manager(js, store)
    run_id = await m1.start_run(pb.RunConfig(target=1, shard_max_records=10, shard_max_seconds=30))
    await stop_admission(m1, run_id)
    await m1.handle_outcomes([record(run_id, 0), reject(run_id, 1)])
    await m1._finish(m1.runs[run_id], "completed")
    await m1.handle_outcomes([reject(run_id, 2)])  # in flight at the end
    await m1.close()
    before = (await kv_get_json(m1.kv, state_key(run_id)))["finished"]
    m2 = await manager(js, store)
    assert await m2.resume_runs() == []  # ended: not loaded
    # 1 and 2 come again (their acks were lost), 3 is new
    await m2.handle_outcomes([reject(run_id, 1), reject(run_id, 2), reject(run_id, 3)])
    await m2.handle_outcomes([reject(run_id, 3)])
    st = await kv_get_json(m2.kv, state_key(run_id))
    assert st["finished"] == before + 1 == 4 and st["rejections"]["filter/duplicate"] == 3
    await m2.close()


class FlakyStore(LocalStore):
    fail = True

    def put_bytes(self, key, data, content_type="application/octet-stream"):
        if self.fail and "/shards/" in key:
            raise StoreError("object store unavailable (test)")
        return super().put_bytes(key, data, content_type)


async def test_failed_shard_write_is_retried_not_lost(js, tmp_path):
    store = FlakyStore(tmp_path)
    m = await manager(js, store)
    run_id = await m.start_run(pb.RunConfig(target=10, shard_max_records=2, shard_max_seconds=0.2))
    await stop_admission(m, run_id)
    # The store is down: the records stay buffered and their inputs un-acked (the handler does
    # not return) while the coordinator retries the shard write in place.
    handling = asyncio.create_task(m.handle_outcomes([record(run_id, 0), record(run_id, 1)]))
    await asyncio.sleep(1.5)
    assert not handling.done(), "inputs must not be acked while the shard is not durable"
    assert m.runs[run_id].flush_failures >= 1 and existing_item_ids(store, run_id) == set()
    store.fail = False  # the store is back: the pending write lands, then the inputs are acked
    res = await asyncio.wait_for(handling, 30)
    assert res == [[], []]
    assert existing_item_ids(store, run_id) == {f"{run_id}-0000000", f"{run_id}-0000001"}
    assert m.runs[run_id].accepted == 2 and m.runs[run_id].flush_failures == 0
    await m.close()


async def test_restart_resumes_without_duplicates(js, tmp_path):
    store = LocalStore(tmp_path)
    m1 = await manager(js, store)
    run_id = await m1.start_run(pb.RunConfig(target=10, shard_max_records=2, shard_max_seconds=0.2))
    await stop_admission(m1, run_id)
    await m1.handle_outcomes([record(run_id, i) for i in range(4)])
    await m1._save_state(m1.runs[run_id])
    for t in m1.runs[run_id].tasks:
        t.cancel()  # the process "dies"
    m2 = await manager(js, store)
    assert await m2.resume_runs() == [run_id]
    await stop_admission(m2, run_id)
    # redelivered outcomes of already-written records are acknowledged without a second write
    await m2.handle_outcomes([record(run_id, i) for i in range(6)])
    await asyncio.sleep(0.5)
    ids = existing_item_ids(store, run_id)
    assert len(ids) == 6
    rows = sum(s.records for s in read_manifest(store, run_id).shards)
    assert rows == 6
    await m2.close()


@pytest.mark.parametrize("accepted,finished,outstanding,expected_max", [(0, 0, 0, 64), (0, 100, 0, 64)])
def test_admission_bounds(accepted, finished, outstanding, expected_max):
    from services.coordinator.runs import Run

    run = Run(run_id="r", config=pb.RunConfig(target=10, max_outstanding=64, max_tasks=1000))
    run.accepted, run.finished, run.admitted = accepted, finished, finished + outstanding
    n = RunManager._tasks_wanted(None, run)  # type: ignore[arg-type]
    assert 0 < n <= expected_max
    # with 10 outstanding at an observed rate of 1/2, about 10 more are needed, not 64
    run.accepted, run.finished, run.admitted = 5, 10, 15
    assert RunManager._tasks_wanted(None, run) == 5  # type: ignore[arg-type]
    run.admitted = 20  # 10 in flight at rate 1/2 already cover the 5 still needed
    assert RunManager._tasks_wanted(None, run) == 0  # type: ignore[arg-type]
    run.accepted = 10
    assert RunManager._tasks_wanted(None, run) == 0  # type: ignore[arg-type]


async def test_rejections_counted_once_across_a_crash_from_the_ledger(js, tmp_path):
    """Rejections acked after the last state save are not lost on a restart, and rejections
    redelivered because the crash came before their ack are not counted twice."""
    store = LocalStore(tmp_path)
    m1 = await manager(js, store)
    run_id = await m1.start_run(pb.RunConfig(target=10, shard_max_records=2, shard_max_seconds=0.2))
    await stop_admission(m1, run_id)
    await m1.handle_outcomes([reject(run_id, i, "judge_unsolvable") for i in range(5)] + [record(run_id, 5)])
    await asyncio.sleep(0.5)  # the record's shard lands
    for t in m1.runs[run_id].tasks:
        t.cancel()  # killed: the counters in KV are from before these outcomes (or absent)
    m2 = await manager(js, store)
    assert await m2.resume_runs() == [run_id]
    await stop_admission(m2, run_id)
    run = m2.runs[run_id]
    assert run.rejections[("filter", "judge_unsolvable")] == 5 and run.accepted == 1 and run.finished == 6
    # items 3 and 4 and the record come again (acks lost), item 6 is new
    await m2.handle_outcomes([reject(run_id, 3, "judge_unsolvable"), reject(run_id, 4, "judge_unsolvable"),
                              record(run_id, 5), reject(run_id, 6, "duplicate")])  # fmt: skip
    assert run.rejections[("filter", "judge_unsolvable")] == 5 and run.rejections[("filter", "duplicate")] == 1
    assert run.finished == 7 and run.accepted == 1
    await m2.close()


async def test_replayed_dead_letter_replaces_its_ledger_entry(js, tmp_path):
    from libs.queue import ledger

    store = LocalStore(tmp_path)
    m = await manager(js, store)
    run_id = await m.start_run(pb.RunConfig(target=10, shard_max_records=1, shard_max_seconds=0.2))
    await stop_admission(m, run_id)
    await m.handle_outcomes([reject(run_id, 0, "dlq_max_deliver_exceeded"), reject(run_id, 1, "dlq_malformed")])
    run = m.runs[run_id]
    assert run.finished == 2 and set(run.dead) == {f"{run_id}-0000000", f"{run_id}-0000001"}
    # the same dead letter again is a duplicate; the replayed items' real outcomes replace them
    await m.handle_outcomes([reject(run_id, 0, "dlq_max_deliver_exceeded")])
    await m.handle_outcomes([record(run_id, 0), reject(run_id, 1, "judge_unsolvable")])
    assert run.accepted == 1 and run.finished == 2 and not run.dead
    assert dict(run.rejections) == {("filter", "dlq_max_deliver_exceeded"): 0, ("filter", "dlq_malformed"): 0,
                                    ("filter", "judge_unsolvable"): 1}  # fmt: skip
    lk = await m.ledger_kv()
    assert await ledger.entries(lk, run_id) == {f"{run_id}-0000001": ("filter", "judge_unsolvable")}
    assert existing_item_ids(store, run_id) == {f"{run_id}-0000000"}
    await m.close()


async def test_a_replayed_dead_letter_twice_in_one_batch_counts_once(js, tmp_path):
    store = LocalStore(tmp_path)
    m = await manager(js, store)
    run_id = await m.start_run(pb.RunConfig(target=10, shard_max_records=1, shard_max_seconds=0.2))
    await stop_admission(m, run_id)
    await m.handle_outcomes([reject(run_id, 0, "dlq_malformed")])
    res = await m.handle_outcomes([record(run_id, 0), record(run_id, 0)])
    run = m.runs[run_id]
    assert res == [[], []] and run.accepted == 1 and run.finished == 1 and not run.dead
    assert existing_item_ids(store, run_id) == {f"{run_id}-0000000"}
    await m.close()


async def test_shard_is_written_once_every_sink_fetch_loop_waits_on_it(js, tmp_path):
    """Small batches (a slower stage upstream) must not wait for the idle timer or
    shard_max_seconds: when every fetch loop of the sink has handed over its batch, nothing new
    can arrive, so the buffer is written at once."""
    store = LocalStore(tmp_path)
    m = await manager(js, store, batch_size=256, worker_concurrency=2)
    run_id = await m.start_run(pb.RunConfig(target=100, shard_max_records=1000, shard_max_seconds=30))
    await stop_admission(m, run_id)
    first = asyncio.create_task(m.handle_outcomes([record(run_id, i) for i in range(3)]))
    await asyncio.sleep(0.1)
    assert not first.done()  # one loop of two waiting: more may come
    t0 = asyncio.get_running_loop().time()
    await asyncio.wait_for(m.handle_outcomes([record(run_id, i) for i in range(3, 5)]), 5)
    await asyncio.wait_for(first, 5)
    assert asyncio.get_running_loop().time() - t0 < 0.25  # not the 0.3 s idle flush
    assert [s.records for s in read_manifest(store, run_id).shards] == [5]
    await m.close()


async def test_a_sink_batch_stores_one_ledger_entry_per_run_and_a_failed_one_is_retried(js, tmp_path):
    store = LocalStore(tmp_path)
    m = await manager(js, store)
    a = await m.start_run(pb.RunConfig(target=50, shard_max_records=100, shard_max_seconds=0.2))
    b = await m.start_run(pb.RunConfig(target=50, shard_max_records=100, shard_max_seconds=0.2))
    await stop_admission(m, a)
    await stop_admission(m, b)
    batch = [reject(a, i) for i in range(4)] + [reject(b, i) for i in range(3)] + [record(a, 10), record(b, 10)]
    assert await m.handle_outcomes(batch) == [[]] * len(batch)
    assert m._ledger_batch.entries_written == 2  # one entry per run, not one per rejection
    assert (m.runs[a].finished, m.runs[a].accepted, m.runs[b].finished, m.runs[b].accepted) == (5, 1, 4, 1)

    real = m._ledger_batch.record_many

    async def down(run_id, rejections):
        raise ConnectionError("ledger down")

    m._ledger_batch.record_many = down
    res = await m.handle_outcomes([reject(a, 20), record(a, 21)])
    # The rejection is not counted and comes back; the record in the same batch is unaffected.
    assert isinstance(res[0], ConnectionError) and res[1] == []
    assert m.runs[a].finished == 6 and f"{a}-{20:07d}" not in m.runs[a].seen
    m._ledger_batch.record_many = real
    assert await m.handle_outcomes([reject(a, 20)]) == [[]]
    assert m.runs[a].finished == 7 and m.runs[a].rejections[("filter", "duplicate")] == 5
    await m.close()
