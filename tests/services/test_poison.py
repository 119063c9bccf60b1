"""Poison input on the real queue: malformed and wrong-version messages are dead-lettered
with a reason while the stage keeps working."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from scalequest.common.v1 import items_pb2 as pb

from libs.engines.scripted import math_engine
from libs.queue import subjects
from libs.queue.topology import connect
from scalequest_cli.embedded import start_pipeline
from services.registry import SERVICES


async def test_malformed_and_unknown_version_are_dead_lettered(nats_server, tmp_path):
    engine = math_engine()
    await engine.start()
    async with AsyncExitStack() as stack:
        await start_pipeline(
            nats_url=nats_server.url,
            store_url=str(tmp_path),
            overrides={s: {"engine": "fake"} for s in SERVICES if s != "coordinator"},
            stack=stack,
            engine=engine,
        )
        nc, js = await connect(nats_server.url, "poison-test")
        stack.push_async_callback(nc.close)
        await js.publish(subjects.FILTER.subject, b"\xff\xfe not a protobuf", headers={"Nats-Msg-Id": "bad-1"})
        wrong = pb.Question(schema_version=7, run_id="r", item_id="r-1", text="What is 1+1?")
        await js.publish(subjects.FILTER.subject, wrong.SerializeToString(), headers={"Nats-Msg-Id": "bad-2"})
        missing = pb.Question(schema_version=1, text="What is 1+1?")
        await js.publish(subjects.FILTER.subject, missing.SerializeToString(), headers={"Nats-Msg-Id": "bad-3"})

        sub = await js.subscribe(subjects.dlq_subject("filter"), stream=subjects.DLQ_STREAM)
        got = {}
        for _ in range(3):
            msg = await asyncio.wait_for(sub.next_msg(), 15)
            got[msg.data] = msg.headers[subjects.H_REASON]
        assert got[b"\xff\xfe not a protobuf"] == "malformed"
        assert got[wrong.SerializeToString()] == "unknown_schema_version"
        assert got[missing.SerializeToString()] == "missing_field"
        # the filter's work queue is empty again: poison was terminated, not redelivered forever
        # (the term follows the dead-letter publish, so allow it a moment on a loaded machine)
        for _ in range(50):
            info = await js.consumer_info(subjects.FILTER.stream, subjects.FILTER.consumer)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                break
            await asyncio.sleep(0.1)
        assert info.num_pending == 0 and info.num_ack_pending == 0, info
