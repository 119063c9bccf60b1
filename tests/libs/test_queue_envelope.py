"""Envelopes (several items per queue message): packing, and the stage worker against a real
nats-server: items worked on one by one, outputs packed, partial failures retried on their own,
poison items dead-lettered on their own, nothing lost and nothing acked early."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import pytest

from libs.errors import PoisonMessage, TransientError
from libs.queue import envelope, subjects
from libs.queue.worker import Publish
from tests.libs.test_queue_worker import IN, OUT, make_worker, pending_in, stream_msgs, wait_until


def items_of(msgs) -> list[dict]:
    """Every item in a list of stored messages, unpacking envelopes."""
    out = []
    for m in msgs:
        if envelope.is_envelope(m.headers):
            out += [json.loads(b) for b in envelope.decode(m.data).items]
        else:
            out.append(json.loads(m.data))
    return out


async def publish_envelope(js, ids: list[str], msg_id: str = "", **kw) -> None:
    payloads = [json.dumps({"id": i}).encode() for i in ids]
    msg_ids = [f"in.{i}" for i in ids]
    await js.publish(IN.subject, envelope.encode(payloads, msg_ids, **kw),
                     headers={envelope.H_ENVELOPE: str(len(ids)),
                              "Nats-Msg-Id": msg_id or envelope.envelope_id(msg_ids)})  # fmt: skip


def outputs(items: list[dict]) -> list[list[Publish]]:
    return [[Publish(OUT.subject, json.dumps({"id": it["id"], "ok": True}).encode(), f"{it['id']}.solve")]
            for it in items]  # fmt: skip


# ---------------------------------------------------------------------------- packing
def test_pack_respects_item_and_byte_limits_and_keeps_order():
    payloads = [bytes([65 + i % 26]) * 100 for i in range(10)]
    ids = [f"i{i}.solve" for i in range(10)]
    packs = envelope.pack(payloads, ids, max_items=4, max_bytes=100_000)
    assert [p.members for p in packs] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    small = envelope.pack(payloads, ids, max_items=64, max_bytes=envelope.OVERHEAD_BYTES + 250)
    assert [len(p.members) for p in small] == [2, 2, 2, 2, 2]
    env = envelope.decode(packs[0].payload)
    assert list(env.items) == payloads[:4] and list(env.item_msg_ids) == ids[:4]
    # One item over the byte budget still travels (alone): the server's max_payload decides.
    big = envelope.pack([b"x" * 5000, b"y"], ["a", "b"], max_items=8, max_bytes=2000)
    assert [p.members for p in big] == [[0], [1]]


def test_envelope_id_depends_on_the_items_not_their_order():
    assert envelope.envelope_id(["a", "b"]) == envelope.envelope_id(["b", "a"])
    assert envelope.envelope_id(["a", "b"]) != envelope.envelope_id(["a", "b", "c"])
    assert envelope.envelope_id(["ab"]) != envelope.envelope_id(["a", "b"])


def test_envelope_id_is_stable_across_releases():
    """A publish retried by a newer replica inside the duplicate window must carry the same id."""
    ids = ["r1-0000002.task", "r1-0000001.task", "é.filter"]
    assert envelope.envelope_id(ids) == "env.ea8607fb502a2f9ef2a915d19fdba2cb"


def test_decode_rejects_what_is_not_an_envelope():
    with pytest.raises(ValueError, match="Envelope"):
        envelope.decode(b"\xff\xff\xff")
    with pytest.raises(ValueError, match="schema_version"):
        envelope.decode(b"")  # parses, but carries no schema version
    bad = envelope.pb.Envelope(schema_version=1, items=[b"a", b"b"], item_msg_ids=["x"]).SerializeToString()
    with pytest.raises(ValueError, match="2 items but 1"):
        envelope.decode(bad)
    assert envelope.is_envelope({envelope.H_ENVELOPE: "3"}) and not envelope.is_envelope({"Nats-Msg-Id": "x"})
    assert not envelope.is_envelope(None)


# ---------------------------------------------------------------------------- worker
async def test_envelope_items_are_handled_and_outputs_packed(js):
    seen: list[str] = []

    async def handler(items):
        seen.extend(it["id"] for it in items)
        return outputs(items)

    w = make_worker(js, handler, batch_size=64, envelope_max_items=10)
    await publish_envelope(js, [f"e{i}" for i in range(25)])
    await w.start()
    try:
        await wait_until(lambda: w.stats.acked == 25, what="25 items acked")
    finally:
        await w.stop()
    assert sorted(seen) == sorted(f"e{i}" for i in range(25))
    out = await stream_msgs(js, OUT.stream)
    assert [m.headers[envelope.H_ENVELOPE] for m in out] == ["10", "10", "5"]  # one batch, packed by 10
    assert sorted(it["id"] for it in items_of(out)) == sorted(seen)
    assert await pending_in(js) == (0, 0)
    assert w.stats.fetched == 1 and w.stats.items == 25 and w.stats.envelopes == 3 and w.stats.published == 25


async def test_handler_calls_take_at_most_batch_size_items(js):
    """An envelope larger than the stage's batch is worked on in batch_size chunks (the engine's
    concurrency is batch_size x concurrency, whatever the producer packed) and acked once."""
    calls: list[int] = []

    async def handler(items):
        calls.append(len(items))
        return outputs(items)

    w = make_worker(js, handler, batch_size=10, envelope_max_items=64)
    await publish_envelope(js, [f"c{i}" for i in range(25)])
    await w.start()
    try:
        await wait_until(lambda: w.stats.acked == 25)
    finally:
        await w.stop()
    assert calls == [10, 10, 5]
    assert await pending_in(js) == (0, 0)


async def test_fetch_size_follows_items_per_message(js):
    batches: list[int] = []

    async def handler(items):
        batches.append(len(items))
        return outputs(items)

    w = make_worker(js, handler, batch_size=16)
    for k in range(8):
        await publish_envelope(js, [f"f{k}-{i}" for i in range(8)])
    await w.start()
    try:
        await wait_until(lambda: w.stats.acked == 64, what="64 acks")
    finally:
        await w.stop()
    # Every fetched batch holds about 16 items, the first one included.
    assert max(batches, default=0) <= 32, batches


async def test_a_single_item_first_message_does_not_make_the_backlog_one_batch(js):
    """The first messages size the fetches: a plain single-item message ahead of a backlog of
    envelopes must not make one loop fetch batch_size envelopes (the whole backlog)."""
    fetched: list[int] = []

    async def handler(items):
        return outputs(items)

    def on_event(name, fields):
        if name == "batch":
            fetched.append(fields["handled"])

    await js.publish(IN.subject, json.dumps({"id": "single"}).encode(), headers={"Nats-Msg-Id": "in.single"})
    for k in range(20):
        await publish_envelope(js, [f"b{k}-{i}" for i in range(16)])
    w = make_worker(js, handler, batch_size=32, concurrency=2, on_event=on_event)
    await w.start()
    try:
        await wait_until(lambda: w.stats.acked == 321, what="321 acks")
    finally:
        await w.stop()
    assert sum(fetched) == 321 and max(fetched) <= 64, fetched


async def test_redelivered_envelope_outputs_are_deduplicated(js):
    async def handler(items):
        return outputs(items)

    w = make_worker(js, handler, envelope_max_items=64)
    await publish_envelope(js, ["d1", "d2", "d3"])
    await w.start()
    try:
        await wait_until(lambda: w.stats.acked == 3)
        # The same envelope again (a redelivery after a lost ack looks like this): same outputs.
        await publish_envelope(js, ["d1", "d2", "d3"], msg_id="again")
        await wait_until(lambda: w.stats.acked == 6)
    finally:
        await w.stop()
    assert w.stats.duplicates == 3 and w.stats.published == 3
    assert len(await stream_msgs(js, OUT.stream)) == 1


async def test_poison_item_is_dead_lettered_alone(js):
    async def handler(items):
        return [PoisonMessage("bad_item", "item p2 is broken") if it["id"] == "p2" else outputs([it])[0]
                for it in items]  # fmt: skip

    w = make_worker(js, handler, envelope_max_items=64)
    await publish_envelope(js, ["p1", "p2", "p3"])
    # An undecodable item inside an otherwise good envelope.
    await js.publish(IN.subject, envelope.encode([b"{not json", json.dumps({"id": "p4"}).encode()], ["x", "y"]),
                     headers={envelope.H_ENVELOPE: "2", "Nats-Msg-Id": "env-mixed"})  # fmt: skip
    await w.start()
    try:
        await wait_until(lambda: w.stats.acked == 3 and w.stats.dead_lettered == 2)
    finally:
        await w.stop()
    dead = await stream_msgs(js, subjects.DLQ_STREAM)
    reasons = sorted(m.headers[subjects.H_REASON] for m in dead)
    assert reasons == ["bad_item", "malformed"]
    poison = next(m for m in dead if m.headers[subjects.H_REASON] == "bad_item")
    assert json.loads(poison.data) == {"id": "p2"}  # the item alone, replayable as a single message
    assert envelope.H_ENVELOPE not in poison.headers
    assert sorted(it["id"] for it in items_of(await stream_msgs(js, OUT.stream))) == ["p1", "p3", "p4"]
    assert await pending_in(js) == (0, 0)


async def test_malformed_envelope_is_dead_lettered_whole(js):
    w = make_worker(js, lambda items: asyncio.sleep(0, outputs(items)))
    await js.publish(IN.subject, b"\xff\xfe garbage", headers={envelope.H_ENVELOPE: "3", "Nats-Msg-Id": "g"})
    await w.start()
    try:
        await wait_until(lambda: w.stats.dead_lettered == 1)
    finally:
        await w.stop()
    (dead,) = await stream_msgs(js, subjects.DLQ_STREAM)
    assert dead.headers[subjects.H_REASON] == "malformed" and dead.data == b"\xff\xfe garbage"
    assert await pending_in(js) == (0, 0)


async def test_failed_item_goes_on_in_a_retry_envelope(js):
    calls: Counter = Counter()
    times: dict[str, list[float]] = {}

    async def handler(items):
        out = []
        for it in items:
            calls[it["id"]] += 1
            times.setdefault(it["id"], []).append(time.monotonic())
            if it["id"] == "r2" and calls["r2"] < 3:
                out.append(TransientError("engine busy", delay=0.4))
            else:
                out.append(outputs([it])[0])
        return out

    w = make_worker(js, handler, envelope_max_items=64, max_deliver=5)
    await publish_envelope(js, ["r1", "r2", "r3"])
    await w.start()
    try:
        await wait_until(lambda: w.stats.acked == 3, timeout=15, what="all three done")
    finally:
        await w.stop()
    # r1 and r3 ran once: only the failed item was retried, after its back-off each time.
    assert calls == {"r1": 1, "r2": 3, "r3": 1}
    gaps = [b - a for a, b in zip(times["r2"], times["r2"][1:])]
    assert all(g >= 0.35 for g in gaps), gaps
    assert sorted(it["id"] for it in items_of(await stream_msgs(js, OUT.stream))) == ["r1", "r2", "r3"]
    assert w.stats.naked == 2 and await pending_in(js) == (0, 0)


async def test_item_that_keeps_failing_is_dead_lettered_after_max_deliver(js):
    calls: Counter = Counter()

    async def handler(items):
        for it in items:
            calls[it["id"]] += 1
        return [TransientError("always", delay=0.3) if it["id"] == "k2" else outputs([it])[0] for it in items]

    w = make_worker(js, handler, envelope_max_items=64, max_deliver=3)
    await publish_envelope(js, ["k1", "k2"])
    await w.start()
    try:
        await wait_until(lambda: w.stats.dead_lettered == 1, timeout=15)
    finally:
        await w.stop()
    assert calls == {"k1": 1, "k2": 3}  # max_deliver counts the item's attempts across envelopes
    (dead,) = await stream_msgs(js, subjects.DLQ_STREAM)
    assert dead.headers[subjects.H_REASON] == "max_deliver_exceeded" and json.loads(dead.data) == {"id": "k2"}
    assert await pending_in(js) == (0, 0)


async def test_envelope_whose_items_all_fail_is_nakd_whole(js):
    calls: Counter = Counter()

    async def handler(items):
        for it in items:
            calls[it["id"]] += 1
        if calls["a1"] < 2:
            raise TransientError("store down", delay=0.2)
        return outputs(items)

    w = make_worker(js, handler, envelope_max_items=64)
    await publish_envelope(js, ["a1", "a2"])
    await w.start()
    try:
        await wait_until(lambda: w.stats.acked == 2, timeout=10)
    finally:
        await w.stop()
    assert calls == {"a1": 2, "a2": 2}
    # No retry envelope was needed: the envelope itself came back (the stream has nothing else).
    si = await js.stream_info(IN.stream)
    assert si.state.last_seq == 1


async def test_outputs_that_cannot_be_stored_are_retried_alone(js):
    """An output whose subject has no stream is never stored: that item is retried, then
    dead-lettered; its envelope-mates are done once."""
    calls: Counter = Counter()

    async def handler(items):
        for it in items:
            calls[it["id"]] += 1
        return [[Publish("nowhere.at.all", b"x", f"{it['id']}.x")] if it["id"] == "s2" else outputs([it])[0]
                for it in items]  # fmt: skip

    w = make_worker(js, handler, envelope_max_items=64, max_deliver=2)
    w.publish_timeout = 0.5
    w.publish_retry_delay = 0.1
    await publish_envelope(js, ["s1", "s2", "s3"])
    await w.start()
    try:
        await wait_until(lambda: w.stats.acked == 2 and w.stats.dead_lettered == 1, timeout=20)
    finally:
        await w.stop()
    assert calls == {"s1": 1, "s2": 2, "s3": 1}
    assert await pending_in(js) == (0, 0)


async def test_oversized_envelope_is_dead_lettered_whole_and_replays_as_one(js):
    """An envelope larger than the stage accepts (stages configured with other limits) is kept
    whole in the DLQ with its header, so a replay (after raising the limit) unpacks it again."""
    from libs.queue import dlq

    w = make_worker(js, lambda items: asyncio.sleep(0, outputs(items)), max_message_bytes=1024)
    await publish_envelope(js, [f"o{i}-" + "x" * 100 for i in range(20)])
    await w.start()
    try:
        await wait_until(lambda: w.stats.dead_lettered == 1)
    finally:
        await w.stop()
    (letter,) = await dlq.list_dead_letters(js)
    assert letter.reason == "oversized" and letter.envelope
    assert await dlq.replay(js, [letter]) == [letter.seq]
    w2 = make_worker(js, lambda items: asyncio.sleep(0, outputs(items)))
    await w2.start()
    try:
        await wait_until(lambda: w2.stats.acked == 20)
    finally:
        await w2.stop()
