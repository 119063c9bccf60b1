"""Domain errors. One gRPC interceptor maps them to status codes; the queue worker maps
them to ack / nak / dead-letter. Stages raise these instead of transport-specific errors."""

from __future__ import annotations


class ScaleQuestError(Exception):
    """Base class of every domain error."""


class InvalidArgument(ScaleQuestError):
    """The caller sent something unusable (gRPC INVALID_ARGUMENT; queue: dead-letter)."""


class NotFound(ScaleQuestError):
    """A named thing (run, object) does not exist (gRPC NOT_FOUND)."""


class NotReady(ScaleQuestError):
    """The service cannot serve yet: engine loading, queue unavailable (gRPC UNAVAILABLE; queue: nak)."""


class ResourceExhausted(ScaleQuestError):
    """Request too large or too many in flight (gRPC RESOURCE_EXHAUSTED)."""


class ConfigError(ScaleQuestError):
    """A setting has an invalid value; the message names the setting."""


class PoisonMessage(ScaleQuestError):
    """A queue message that can never be processed; dead-lettered with `reason`."""

    def __init__(self, reason: str, detail: str = "", item: object = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.item = item  # the decoded message, when it decoded (its item then ends as dead-lettered)


class TransientError(ScaleQuestError):
    """A failure worth retrying later (queue: nak with `delay` seconds)."""

    def __init__(self, message: str, delay: float = 2.0) -> None:
        super().__init__(message)
        self.delay = delay
