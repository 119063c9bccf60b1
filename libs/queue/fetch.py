"""Pull-consumer fetch that returns what is ready instead of waiting for a full batch.

``PullSubscription.fetch(n, timeout)`` in nats-py sends a pull request with ``expires`` when its
buffer is empty; the server then holds the request until ``n`` messages arrived or ``expires``
passed. In a pipeline a stage's input arrives at the rate of the stage before it, so batches
rarely fill and every fetch waited out its whole timeout: throughput of a stage became
``batch_size x concurrency / fetch_timeout`` whatever the work cost (measured: ~40 items/s end to
end with batch 8, ~250 with batch 64, on a zero-cost engine; ``docs/benchmarks.md``).

:func:`fetch_ready` instead

1. takes messages an earlier request already delivered (buffered in the subscription);
2. else asks for up to ``batch`` with ``no_wait`` (the server answers at once with what it has);
3. else waits up to ``timeout`` for ONE message (a lingering request for a batch of 1);
4. and when the batch is not full, waits up to ``linger`` (20 ms) for the rest with one more
   request that the server ends at its expiry.

So a busy stage gets full batches in one round trip, an idle one wakes on the first message,
and no request ever holds messages the worker is not about to process (those would sit
un-heartbeated until ``ack_wait``). Raises ``asyncio.TimeoutError`` when nothing came.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import Header, StatusCode

# Status codes that end a pull request without an error (no messages, expired, conflict such
# as max waiting exceeded); 100 is an idle heartbeat.
_END_STATUSES = {StatusCode.NO_MESSAGES.value, StatusCode.REQUEST_TIMEOUT.value, StatusCode.CONFLICT.value}
_HEARTBEAT = StatusCode.CONTROL_MESSAGE.value
NO_WAIT_REPLY_TIMEOUT = 5.0  # a no_wait request is answered at once; this only guards a lost reply
# How long a batch that is not full waits for more. A stage faster than the one before it would
# otherwise wake for every message and pay a fetch round trip per item, which costs more CPU
# than the work when the machine is busy; 20 ms is nothing next to an engine call.
DEFAULT_LINGER = 0.02


def _status(msg: Msg) -> str | None:
    return msg.headers.get(Header.STATUS.value) if msg.headers else None


def _take_buffered(inner: Any, batch: int) -> list[Msg]:
    """Messages already delivered to the subscription (status messages of old requests dropped)."""
    queue = inner._pending_queue
    out: list[Msg] = []
    while len(out) < batch and not queue.empty():
        msg = queue.get_nowait()
        inner._pending_size -= len(msg.data)
        if _status(msg) is None:
            out.append(msg)
    return out


async def _request(sub: Any, n: int, *, no_wait: bool, timeout: float) -> list[Msg]:
    """One pull request for up to ``n``; messages until ``n`` arrived, an ending status, or
    ``timeout`` (lingering requests expire on the server a little before that)."""
    req: dict[str, Any] = {"batch": n}
    if no_wait:
        req["no_wait"] = True
        wait = NO_WAIT_REPLY_TIMEOUT
    else:
        # The server ends the request a little before the client stops waiting, so its
        # 408 arrives and no message is delivered after the client gave up.
        margin = min(0.05, timeout / 4)
        req["expires"] = max(int((timeout - margin) * 1e9), 1_000_000)
        wait = timeout
    await sub._nc.publish(sub._nms, json.dumps(req).encode(), sub._deliver)
    inner = sub._sub
    deadline = time.monotonic() + wait
    out: list[Msg] = []
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            msg = await inner.next_msg(timeout=left)
        except (asyncio.TimeoutError, nats.errors.TimeoutError):
            break
        status = _status(msg)
        if status is None:
            out.append(msg)
        elif status == _HEARTBEAT:
            continue
        elif status in _END_STATUSES:
            break
        else:
            raise nats.js.errors.APIError.from_msg(msg)
    return out


async def fetch_ready(sub: Any, batch: int, timeout: float, linger: float = DEFAULT_LINGER) -> list[Msg]:
    """Up to ``batch`` messages of a pull subscription: whatever is ready now, else the first
    one to arrive within ``timeout``; a batch that is not full then waits up to ``linger``
    seconds for more (module doc)."""
    msgs = _take_buffered(sub._sub, batch)
    if msgs:
        return msgs
    msgs = await _request(sub, batch, no_wait=True, timeout=timeout)
    if not msgs:
        msgs = await _request(sub, 1, no_wait=False, timeout=timeout)
        if not msgs:
            raise asyncio.TimeoutError
    if len(msgs) < batch and linger > 0:
        msgs += await _request(sub, batch - len(msgs), no_wait=False, timeout=linger)
    return msgs
