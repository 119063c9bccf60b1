"""Dead letters: read, list and replay the ``SQ_DLQ`` stream (``scalequest dlq list|replay``).

Each dead letter is the original payload with headers saying why (``Sq-Reason``,
``Sq-Detail``), where it came from (``Sq-Stage``, ``Sq-Original-Subject``) and how often it
was delivered. Replaying publishes the payload back onto its original work subject (msg id
``replay.<dlq seq>``, so replaying the same dead letter twice stores it once) and then deletes
it from the DLQ. An item that fails again comes back as a new dead letter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from nats.js import JetStreamContext, api
from scalequest.common.v1 import items_pb2 as pb

from libs.queue import envelope, subjects

#: The message type carried on each work subject (to show and audit dead letters by item).
PAYLOAD_TYPES = {
    subjects.GENERATE.subject: pb.GenerateTask,
    subjects.FILTER.subject: pb.Question,
    subjects.SOLVE.subject: pb.Question,
    subjects.SCORE.subject: pb.SolvedQuestion,
    subjects.SINK.subject: pb.Outcome,
}


@dataclass
class DeadLetter:
    seq: int  # sequence in the DLQ stream
    stage: str
    reason: str
    detail: str
    subject: str  # the work subject it was consumed from
    deliveries: int
    data: bytes
    time: float = 0.0
    run_id: str = ""
    item_id: str = ""
    envelope: bool = False  # a whole envelope (oversized or unreadable); items are dead-lettered alone

    def as_dict(self) -> dict:
        return {
            "seq": self.seq, "stage": self.stage, "reason": self.reason, "detail": self.detail,
            "subject": self.subject, "deliveries": self.deliveries, "bytes": len(self.data),
            "run_id": self.run_id, "item_id": self.item_id, "time": self.time,
        }  # fmt: skip


def _ids(subject: str, data: bytes) -> tuple[str, str]:
    from libs.items import item_ids

    cls = PAYLOAD_TYPES.get(subject)
    if cls is None:
        return "", ""
    try:
        msg = cls.FromString(data)
        return item_ids(msg)
    except Exception:  # noqa: BLE001 -- a malformed payload has no ids
        return "", ""


async def read_stream(js: JetStreamContext, stream: str, subject: str, batch: int = 256) -> list:
    """Every message of ``stream`` on ``subject`` (wildcards allowed), oldest first, without
    consuming it (an ephemeral consumer that acks nothing)."""
    info = await js.stream_info(stream)
    if info.state.messages == 0:
        return []
    sub = await js.pull_subscribe(
        subject,
        stream=stream,
        config=api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.ALL, ack_policy=api.AckPolicy.NONE, inactive_threshold=30.0
        ),
    )
    out = []
    try:
        while True:
            try:
                msgs = await sub.fetch(batch, timeout=1.0)
            except asyncio.TimeoutError:
                break
            out.extend(msgs)
            if msgs and msgs[-1].metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return out


async def list_dead_letters(
    js: JetStreamContext, *, stage: str | None = None, run_id: str | None = None, reason: str | None = None
) -> list[DeadLetter]:
    subject = subjects.dlq_subject(stage) if stage else subjects.DLQ_SUBJECTS
    out = []
    for m in await read_stream(js, subjects.DLQ_STREAM, subject):
        h = m.headers or {}
        orig = h.get(subjects.H_SUBJECT, "")
        rid, iid = _ids(orig, m.data)
        dl = DeadLetter(
            seq=int(m.metadata.sequence.stream),
            stage=h.get(subjects.H_STAGE, m.subject.rsplit(".", 1)[-1]),
            reason=h.get(subjects.H_REASON, ""),
            detail=h.get(subjects.H_DETAIL, ""),
            subject=orig,
            deliveries=int(h.get(subjects.H_DELIVERIES, "0") or 0),
            data=m.data,
            time=m.metadata.timestamp.timestamp() if m.metadata.timestamp else 0.0,
            run_id=rid,
            item_id=iid,
            envelope=envelope.H_ENVELOPE in h,
        )
        if run_id and dl.run_id != run_id:
            continue
        if reason and dl.reason != reason:
            continue
        out.append(dl)
    return out


async def replay(js: JetStreamContext, letters: Iterable[DeadLetter], *, keep: bool = False) -> list[int]:
    """Publish each dead letter back to its work subject, then delete it from the DLQ (unless
    ``keep``). Returns the DLQ sequences replayed; letters without a known work subject are skipped."""
    done = []
    for dl in letters:
        if dl.subject not in PAYLOAD_TYPES:
            continue
        headers = {"Nats-Msg-Id": f"replay.{dl.seq}"}
        if dl.envelope:
            headers[envelope.H_ENVELOPE] = "1"
        await js.publish(dl.subject, dl.data, headers=headers)
        if not keep:
            await js.delete_msg(subjects.DLQ_STREAM, dl.seq)
        done.append(dl.seq)
    return done
