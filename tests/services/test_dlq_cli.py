"""``scalequest dlq list|replay`` and ``scalequest audit`` against a real nats-server and a
running pipeline (scripted zero-cost engine)."""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack

from scalequest.common.v1 import items_pb2 as pb

from libs.engines.scripted import math_engine
from libs.items import SCHEMA
from libs.queue import ledger, subjects
from libs.queue.topology import connect
from scalequest_cli.embedded import start_pipeline
from scalequest_cli.main import build_parser
from scalequest_cli.ops import cmd_audit, cmd_dlq
from services.registry import SERVICES


async def test_dead_letter_listed_replayed_and_accounted(nats_server, tmp_path, capsys):
    engine = math_engine()
    await engine.start()
    async with AsyncExitStack() as stack:
        pipe = await start_pipeline(nats_url=nats_server.url, store_url=str(tmp_path),
                                    overrides={s: {"engine": "fake"} for s in SERVICES if s != "coordinator"},
                                    stack=stack, engine=engine)  # fmt: skip
        nc, js = await connect(nats_server.url, "dlq-test")
        stack.push_async_callback(nc.close)
        coord = pipe.services["coordinator"].manager
        run_id = await coord.start_run(pb.RunConfig(target=1000, shard_max_records=1))
        coord.runs[run_id].tasks[0].cancel()  # admission stops after the one item below
        coord.runs[run_id].admitted = 1
        item_id = f"{run_id}-0000000"
        q = pb.Question(schema_version=SCHEMA, run_id=run_id, item_id=item_id, config=coord.runs[run_id].config,
                        text="Tom has 4 apples and buys 3 more. How many apples does he have now?")  # fmt: skip
        # A solver replica died on every delivery of this item: the next one dead-letters it.
        await js.publish(subjects.dlq_subject("solver"), q.SerializeToString(), headers={
            subjects.H_REASON: "max_deliver_exceeded", subjects.H_DETAIL: "delivered 6 times",
            subjects.H_STAGE: "solver", subjects.H_SUBJECT: subjects.SOLVE.subject, subjects.H_DELIVERIES: "6",
        })  # fmt: skip
        await coord.handle_outcomes([pb.Outcome(rejection=pb.Rejection(
            schema_version=SCHEMA, run_id=run_id, item_id=item_id, stage="solver", reason="dlq_max_deliver_exceeded"))])  # fmt: skip
        assert coord.runs[run_id].dead

        parser = build_parser()
        args = parser.parse_args(["dlq", "list", "--nats-url", nats_server.url, "--run", run_id, "--json"])
        assert await cmd_dlq(args) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [(d["stage"], d["reason"], d["item_id"]) for d in listed] == [("solver", "max_deliver_exceeded", item_id)]

        # replay needs a selection; a wrong --seq names itself
        import pytest

        from libs.errors import ConfigError

        with pytest.raises(ConfigError, match="--seq or --all|--all"):
            await cmd_dlq(parser.parse_args(["dlq", "replay", "--nats-url", nats_server.url]))
        with pytest.raises(ConfigError, match="sequence 999"):
            await cmd_dlq(parser.parse_args(["dlq", "replay", "--nats-url", nats_server.url, "--seq", "999"]))

        assert await cmd_dlq(parser.parse_args(["dlq", "replay", "--nats-url", nats_server.url, "--run", run_id, "--all"])) == 0
        assert "replayed 1 dead letter(s)" in capsys.readouterr().out
        run = coord.runs[run_id]
        for _ in range(100):  # the replayed item goes through solver and reward to the sink
            if not run.dead:
                break
            await asyncio.sleep(0.1)
        assert not run.dead and run.finished == 1
        for _ in range(50):  # accepted: its ledger entry goes once the shard is durable
            entry = await ledger.get(await coord.ledger_kv(), run_id, item_id)
            if entry is None or not entry[1].startswith("dlq_"):
                break
            await asyncio.sleep(0.1)
        assert entry is None or not entry[1].startswith("dlq_"), entry
        assert (run.accepted == 1) == (entry is None)
        assert await cmd_dlq(parser.parse_args(["dlq", "list", "--nats-url", nats_server.url, "--json"])) == 0
        assert json.loads(capsys.readouterr().out) == []  # replayed letters leave the DLQ

        await coord.cancel_run(run_id)
        await asyncio.sleep(0.5)
        args = parser.parse_args(["audit", run_id, "--nats-url", nats_server.url, "--store", str(tmp_path),
                                  "--wait", "30", "--json"])  # fmt: skip
        code = await cmd_audit(args)
        rep = json.loads(capsys.readouterr().out)
        assert code == 0 and rep["ok"], rep["problems"]
        assert rep["admitted"] == 1 and rep["unique_rows"] + rep["rejected"] == 1 and rep["dead_lettered"] == 0
