"""helm test: a JetStream publish/consume round trip on SQ_NATS_URL, and the pipeline's
topology (work-queue streams, durable consumers, runs KV bucket) is in place.

Publishes one message with a Nats-Msg-Id to a temporary in-memory stream, pulls it back with
a durable consumer, acks it and deletes the stream. Exits 0 on success; passed to `python -c`.
Logs in with SQ_NATS_USER/SQ_NATS_PASSWORD when set (natsAuth: the admin user) and uses TLS
with SQ_NATS_TLS_CA (+ SQ_NATS_TLS_CERT/KEY) when set (tls.nats).
"""

import asyncio
import os
import ssl
import sys
import uuid

import nats
from nats.js import api

WORK_QUEUES = {"SQ_GENERATE": "questiongen", "SQ_FILTER": "filter", "SQ_SOLVE": "solver",
               "SQ_SCORE": "reward", "SQ_SINK": "coordinator"}
RUNS_BUCKET = "sq-runs"


def connect_options() -> dict:
    opts = {}
    if os.environ.get("SQ_NATS_USER"):
        opts.update(user=os.environ["SQ_NATS_USER"], password=os.environ.get("SQ_NATS_PASSWORD", ""))
    ca = os.environ.get("SQ_NATS_TLS_CA")
    if ca:
        ctx = ssl.create_default_context(cafile=ca)
        if os.environ.get("SQ_NATS_TLS_CERT"):
            ctx.load_cert_chain(os.environ["SQ_NATS_TLS_CERT"], os.environ["SQ_NATS_TLS_KEY"])
        opts["tls"] = ctx
    return opts


async def main() -> int:
    url = os.environ["SQ_NATS_URL"]
    nc = await nats.connect(url.split(","), connect_timeout=5, max_reconnect_attempts=5, name="scalequest-helm-test",
                            **connect_options())
    js = nc.jetstream()
    token = uuid.uuid4().hex[:12]
    stream = f"SQ_HELMTEST_{token.upper()}"
    subject = f"scalequest.helmtest.{token}"
    try:
        await js.add_stream(api.StreamConfig(name=stream, subjects=[subject], storage=api.StorageType.MEMORY,
                                             retention=api.RetentionPolicy.WORK_QUEUE, max_age=300))
        payload = f"ping-{token}".encode()
        ack = await js.publish(subject, payload, headers={"Nats-Msg-Id": token}, timeout=10)
        sub = await js.pull_subscribe(subject, durable=f"helmtest-{token}", stream=stream)
        msgs = await sub.fetch(1, timeout=10)
        if len(msgs) != 1 or msgs[0].data != payload:
            print(f"round trip failed: got {[m.data for m in msgs]!r}")
            return 1
        await msgs[0].ack_sync(timeout=10)
        print(f"JetStream round trip ok on {url} (stream {stream}, seq {ack.seq})")
    finally:
        try:
            await js.delete_stream(stream)
        except Exception as e:  # noqa: BLE001 - report, the check result stands
            print(f"cleanup: could not delete {stream}: {e}")
    missing = []
    for name, consumer in WORK_QUEUES.items():
        try:
            await js.consumer_info(name, consumer)
        except Exception as e:  # noqa: BLE001
            missing.append(f"{name}/{consumer} ({type(e).__name__})")
    try:
        await js.key_value(RUNS_BUCKET)
    except Exception as e:  # noqa: BLE001
        missing.append(f"KV {RUNS_BUCKET} ({type(e).__name__})")
    await nc.drain()
    if missing:
        print("pipeline topology incomplete: " + ", ".join(missing))
        return 1
    print("pipeline topology ok: " + ", ".join(f"{s}/{c}" for s, c in WORK_QUEUES.items()) + f", KV {RUNS_BUCKET}")
    return 0


sys.exit(asyncio.run(main()))
