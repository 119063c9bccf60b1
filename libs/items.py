"""Helpers for the work-item protobufs: decoding with validation, ids, seeds, outcomes."""

from __future__ import annotations

import hashlib

from google.protobuf.message import DecodeError, Message
from scalequest.common.v1 import items_pb2 as pb

from libs.errors import PoisonMessage
from libs.queue import subjects
from libs.queue.worker import Publish

SCHEMA = pb.SCHEMA_VERSION_1


def decoder(cls: type[Message]):
    """A decode function for the stage worker: bytes -> message, PoisonMessage when unusable."""

    def decode(data: bytes) -> Message:
        msg = cls()
        try:
            msg.ParseFromString(data)
        except DecodeError as e:
            raise PoisonMessage("malformed", f"not a {cls.DESCRIPTOR.full_name}: {e}") from None
        version = getattr(msg, "schema_version", SCHEMA)
        if version != SCHEMA:
            raise PoisonMessage("unknown_schema_version", f"schema_version={version}")
        run_id, item_id = item_ids(msg)
        if not run_id or not item_id:
            raise PoisonMessage("missing_field", "run_id and item_id are required")
        question = msg.question if isinstance(msg, pb.SolvedQuestion) else msg
        if isinstance(question, pb.Question) and not question.text.strip():
            raise PoisonMessage("empty_question", f"item {item_id} carries no question text", item=msg)
        return msg

    return decode


def item_ids(msg: Message) -> tuple[str, str]:
    """(run_id, item_id) of any work item."""
    if isinstance(msg, pb.SolvedQuestion):
        return msg.question.run_id, msg.question.item_id
    if isinstance(msg, pb.FinalRecord):
        return msg.solved.question.run_id, msg.solved.question.item_id
    if isinstance(msg, pb.Outcome):
        kind = msg.WhichOneof("kind")
        return item_ids(getattr(msg, kind)) if kind else ("", "")
    return getattr(msg, "run_id", ""), getattr(msg, "item_id", "")


def task_seed(run_seed: int, index: int) -> int:
    """Per-task seed derived from the run seed and task index (recorded on every item)."""
    h = hashlib.sha256(f"{run_seed}:{index}".encode()).digest()
    return int.from_bytes(h[:4], "big") & 0x7FFFFFFF


def rejection(run_id: str, item_id: str, stage: str, reason: str, detail: str = "", question: str = "") -> Publish:
    """The terminal message for an item that a stage drops."""
    out = pb.Outcome(
        rejection=pb.Rejection(
            schema_version=SCHEMA,
            run_id=run_id,
            item_id=item_id,
            stage=stage,
            reason=reason,
            detail=detail[:1000],
            question=question[:4000],
        )
    )
    return Publish(subjects.SINK.subject, out.SerializeToString(), f"{item_id}.outcome")


#: Rejection reason of an item a stage skipped because its run had already ended.
RUN_CLOSED = "run_closed"

#: Prefix of the rejection reason under which a dead-lettered item reaches the coordinator.
DEAD_LETTER_PREFIX = "dlq_"


def dead_letter_rejection(stage: str):
    """The stage worker's ``on_dead_letter`` hook: a dead-lettered work item also ends as a
    rejection (reason ``dlq_<reason>``) at the coordinator, so the run's accounting and its
    admission control see it. ``scalequest dlq replay`` can bring the item back later."""

    async def hook(item: Message, reason: str, detail: str) -> list[Publish]:
        run_id, item_id = item_ids(item)
        if not run_id or not item_id:
            return []
        return [rejection(run_id, item_id, stage, DEAD_LETTER_PREFIX + reason, detail)]

    return hook


def forward(queue: subjects.WorkQueue, msg: Message, item_id: str) -> Publish:
    """Hand an item to the next stage; the msg id makes retried publishes idempotent."""
    return Publish(queue.subject, msg.SerializeToString(), f"{item_id}.{queue.consumer}")
