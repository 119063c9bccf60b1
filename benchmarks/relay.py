"""One pass-through stage process for the orchestration benchmark (``benchmarks/orchestration.py``).

It consumes one work queue with the real ``StageWorker`` (fetch, envelopes, decode, publish,
ack) and forwards every item unchanged to the next queue, or only acks it on the last queue:
the orchestration layer of a stage with no stage logic and no engine. Five of them in a chain
measure what the queue layer alone costs per item, next to the full pipeline's figure.

    python -m benchmarks.relay --nats URL --queue FILTER [--batch 16 --concurrency 2 --envelope 64]

Prints one JSON line when ``--expect`` items were acked (then exits), with the times of its
first and last ack.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from scalequest.common.v1 import items_pb2 as pb

from libs.items import decoder
from libs.queue import subjects
from libs.queue.topology import connect
from libs.queue.worker import Publish, StageWorker

ORDER = [q.stream.removeprefix("SQ_") for q in subjects.WORK_QUEUES]  # GENERATE ... SINK


async def relay(args: argparse.Namespace) -> dict:
    q = getattr(subjects, args.queue)
    i = ORDER.index(args.queue)
    nxt = getattr(subjects, ORDER[i + 1]) if i + 1 < len(ORDER) else None
    nc, js = await connect(args.nats, f"relay-{args.queue.lower()}")
    first: list[float] = []

    async def handler(items: list[pb.GenerateTask]) -> list[list[Publish]]:
        if not first:
            first.append(time.time())
        if nxt is None:
            return [[] for _ in items]
        return [[Publish(nxt.subject, it.SerializeToString(), f"{it.item_id}.{nxt.consumer}")] for it in items]

    w = StageWorker(js, queue=q, stage=q.consumer, decode=decoder(pb.GenerateTask), handler=handler,
                    batch_size=args.batch, concurrency=args.concurrency, envelope_max_items=args.envelope,
                    item_id=lambda it: it.item_id)  # fmt: skip
    await w.start()
    cpu0 = time.process_time()
    print(json.dumps({"ready": args.queue}), flush=True)
    while w.stats.acked < args.expect:
        await asyncio.sleep(0.005)
    last = time.time()
    cpu = time.process_time() - cpu0
    await w.stop()
    await nc.close()
    return {"queue": args.queue, "first": first[0] if first else last, "last": last, "acked": w.stats.acked,
            "messages": w.stats.fetched, "envelopes": w.stats.envelopes, "cpu_seconds": cpu}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nats", required=True)
    p.add_argument("--queue", required=True, choices=ORDER)
    p.add_argument("--expect", type=int, required=True, help="exit after acking this many items")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--envelope", type=int, default=64)
    print(json.dumps(asyncio.run(relay(p.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
