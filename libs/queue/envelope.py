"""Envelopes: several work items in one queue message.

Every message on a work queue costs a publish (awaiting the stream's ack and its duplicate check),
a delivery and an ack, whatever it carries; on this 2-core machine one Python process moves about
8,000 of them a second through one hop (docs/benchmarks.md). An envelope
(``scalequest.common.v1.Envelope``, marked by the ``Sq-Envelope`` header) carries many items, so a
stage pays that cost once per envelope.

Packing: :func:`pack` groups the outputs of one processed batch by subject into envelopes of at
most ``max_items`` items and ``max_bytes`` bytes. An envelope's message id is a hash of the item
message ids it carries, so a retry that stores the same items again is deduplicated by the stream,
as single messages are. A retry that packs a different set (a crash between publish and ack, and a
redelivery fetched together with other messages) stores the items again under another id; the
sink's per-item ledger is what finally guarantees that an item is written once.

Unpacking is the stage worker's job (``libs/queue/worker.py``): it treats each item as a unit of
work (decoding, dead letters, max_deliver) and settles the envelope when all of its items are
settled.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from scalequest.common.v1 import items_pb2 as pb

#: Header that marks a message as an envelope (value: the number of items, for humans and tools).
H_ENVELOPE = "Sq-Envelope"
#: Room left in a message for headers and the envelope's own fields.
OVERHEAD_BYTES = 1024


@dataclass
class Packed:
    """One message to publish and the indices (into the input list) of the items it carries:
    an envelope, or a single item as it is (``envelope`` False)."""

    payload: bytes
    msg_id: str
    members: list[int]
    envelope: bool = True

    @property
    def headers(self) -> dict[str, str]:
        if not self.envelope:
            return {"Nats-Msg-Id": self.msg_id}
        return {H_ENVELOPE: str(len(self.members)), "Nats-Msg-Id": self.msg_id}


def is_envelope(headers: dict[str, str] | None) -> bool:
    return bool(headers) and H_ENVELOPE in headers


def envelope_id(msg_ids: Iterable[str]) -> str:
    """Message id of an envelope: the same items (in any order) give the same id."""
    data = "".join([m + "\0" for m in sorted(msg_ids)])  # each id NUL-terminated, hashed in one call
    return "env." + hashlib.blake2b(data.encode(), digest_size=16).hexdigest()


def encode(items: Sequence[bytes], msg_ids: Sequence[str], *, prior_deliveries: int = 0,
           not_before: float = 0.0) -> bytes:  # fmt: skip
    env = pb.Envelope(schema_version=pb.SCHEMA_VERSION_1, prior_deliveries=prior_deliveries, not_before=not_before)
    env.items.extend(items)
    env.item_msg_ids.extend(msg_ids)
    return env.SerializeToString()


def decode(data: bytes) -> pb.Envelope:
    """The envelope in ``data``; ValueError when it is not one (the worker dead-letters it)."""
    env = pb.Envelope()
    try:
        env.ParseFromString(data)
    except Exception as e:  # noqa: BLE001 -- protobuf's DecodeError and friends
        raise ValueError(f"not a scalequest.common.v1.Envelope: {e}") from None
    if env.schema_version != pb.SCHEMA_VERSION_1:
        raise ValueError(f"envelope schema_version={env.schema_version}")
    if env.item_msg_ids and len(env.item_msg_ids) != len(env.items):
        raise ValueError(f"envelope has {len(env.items)} items but {len(env.item_msg_ids)} message ids")
    return env


def pack(payloads: Sequence[bytes], msg_ids: Sequence[str], *, max_items: int, max_bytes: int) -> list[Packed]:
    """Cut ``payloads`` (all for one subject) into envelopes in order; an item bigger than
    ``max_bytes`` on its own still gets an envelope of its own (the server's limit decides)."""
    if max_items < 1:
        raise ValueError("max_items must be >= 1")
    out: list[Packed] = []
    members: list[int] = []
    size = OVERHEAD_BYTES

    def close() -> None:
        ids = [msg_ids[i] for i in members]
        out.append(Packed(encode([payloads[i] for i in members], ids), envelope_id(ids), list(members)))

    for i, p in enumerate(payloads):
        cost = len(p) + len(msg_ids[i]) + 8
        if members and (len(members) >= max_items or size + cost > max_bytes):
            close()
            members, size = [], OVERHEAD_BYTES
        members.append(i)
        size += cost
    if members:
        close()
    return out


def messages(payloads: Sequence[bytes], msg_ids: Sequence[str], *, max_items: int, max_bytes: int) -> list[Packed]:
    """The messages that carry ``payloads`` (all for one subject): envelopes (:func:`pack`), or
    the items as they are when there is only one or ``max_items`` is 1 (envelopes off)."""
    if max_items <= 1 or len(payloads) == 1:
        return [Packed(p, m, [i], envelope=False) for i, (p, m) in enumerate(zip(payloads, msg_ids))]
    return pack(payloads, msg_ids, max_items=max_items, max_bytes=max_bytes)
