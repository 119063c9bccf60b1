"""Request validation shared by the servicers.

Every check raises :class:`~libs.errors.InvalidArgument` (INVALID_ARGUMENT) with a message
that names the field as the caller wrote it (``questions[3]``, ``sampling.top_p``), or
:class:`~libs.errors.ResourceExhausted` (RESOURCE_EXHAUSTED) when a well-formed request asks
for more work than ``grpc_max_request_tokens`` / ``grpc_max_request_chars`` allow.

Text policy: any Unicode a protobuf string can carry is accepted (other scripts, emoji,
control characters such as tabs) except NUL, which no prompt, KV key or log line should hold.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from scalequest.common.v1 import items_pb2 as pb

from libs.errors import InvalidArgument, ResourceExhausted

#: Seeds a caller may pass (0 = "pick one"); the coordinator derives 31-bit task seeds too.
MAX_SEED = 2**31 - 1
#: Largest max_tokens of any sampling request (every service's own setting is capped the same).
MAX_SAMPLING_TOKENS = 32768
#: Largest sampling temperature.
MAX_TEMPERATURE = 5.0
#: Longest question text a questiongen / reward request may carry (filter and solver: their setting).
MAX_QUESTION_CHARS = 16384
#: Longest model name / short identifier-like string (rule names, models recorded in provenance).
MAX_NAME_CHARS = 256

_SCOPE_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def _shown(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."


def text(field: str, value: str, *, max_chars: int, required: bool = True) -> str:
    """A free-text field: non-blank (when required), at most ``max_chars``, no NUL."""
    if required and not value.strip():
        raise InvalidArgument(f"{field} is empty")
    if len(value) > max_chars:
        raise InvalidArgument(f"{field} is longer than {max_chars} characters ({len(value)})")
    if "\x00" in value:
        raise InvalidArgument(f"{field} contains a NUL character")
    return value


def texts(field: str, values: Sequence[str], *, max_count: int, max_chars: int, min_count: int = 1) -> list[str]:
    """A repeated free-text field: ``min_count..max_count`` entries, each valid per :func:`text`."""
    n = len(values)
    if not min_count <= n <= max_count:
        raise InvalidArgument(f"{field} must hold {min_count}..{max_count} entries, got {n}")
    for i, v in enumerate(values):
        text(f"{field}[{i}]", v, max_chars=max_chars)
    return list(values)


def identifier(field: str, value: str, *, max_chars: int = 64, pattern: re.Pattern[str] = _SCOPE_RE,
               rule: str = "letters, digits, '-' and '_'") -> str:  # fmt: skip
    """A name that ends up in keys or subjects: ASCII from ``pattern`` only."""
    if len(value) > max_chars:
        raise InvalidArgument(f"{field} is longer than {max_chars} characters ({len(value)})")
    if not pattern.fullmatch(value):  # not match(): "$" also matches before a trailing newline
        raise InvalidArgument(f"{field} may hold only {rule}, got {_shown(value)}")
    return value


def int_range(field: str, value: int, lo: int, hi: int) -> int:
    if not lo <= value <= hi:
        raise InvalidArgument(f"{field} must be in [{lo}, {hi}], got {value}")
    return value


def finite(field: str, value: float) -> float:
    if not math.isfinite(value):
        raise InvalidArgument(f"{field} must be a finite number, got {value}")
    return value


def float_range(field: str, value: float, lo: float, hi: float, *, lo_open: bool = False) -> float:
    """``value`` in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``); NaN and infinities are refused."""
    finite(field, value)
    if (value <= lo if lo_open else value < lo) or value > hi:
        raise InvalidArgument(f"{field} must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {value:g}")
    return value


def enum(field: str, value: int, enum_type: Any, *, allow_unspecified: bool = True) -> int:
    """A proto enum field: only the numbers the enum defines (proto3 keeps unknown ones)."""
    names = {v.number: v.name for v in enum_type.DESCRIPTOR.values}
    if value not in names or (value == 0 and not allow_unspecified):
        known = ", ".join(f"{name}={n}" for n, name in sorted(names.items()) if n or allow_unspecified)
        raise InvalidArgument(f"{field} must be one of {known}, got {value}")
    return value


def seed(field: str, value: int) -> int:
    """A seed: ``[0, MAX_SEED]`` (0 = random where the RPC says so)."""
    return int_range(field, value, 0, MAX_SEED)


def choice(field: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise InvalidArgument(f"{field} must be one of {', '.join(allowed)}, got {_shown(value)}")
    return value


def sampling(field: str, s: pb.Sampling, *, temperature: float, top_p: float, max_tokens: int) -> pb.Sampling:
    """Check what the caller set (zero = the given default), then return the resolved values."""
    float_range(f"{field}.temperature", s.temperature, 0.0, MAX_TEMPERATURE)
    float_range(f"{field}.top_p", s.top_p, 0.0, 1.0)  # 0 = default; the resolved value must be > 0
    int_range(f"{field}.max_tokens", s.max_tokens, 0, MAX_SAMPLING_TOKENS)
    out = pb.Sampling(
        temperature=s.temperature or temperature, top_p=s.top_p or top_p, max_tokens=s.max_tokens or max_tokens
    )
    float_range(f"{field}.temperature", out.temperature, 0.0, MAX_TEMPERATURE)
    float_range(f"{field}.top_p", out.top_p, 0.0, 1.0, lo_open=True)
    int_range(f"{field}.max_tokens", out.max_tokens, 1, MAX_SAMPLING_TOKENS)
    return out


def work(settings: Any, *, tokens: int = 0, chars: int = 0, what: str = "") -> None:
    """RESOURCE_EXHAUSTED when one request asks for more generated tokens or carries more text
    than the service's ``grpc_max_request_tokens`` / ``grpc_max_request_chars`` allow."""
    token_cap = int(getattr(settings, "grpc_max_request_tokens", 0) or 0)
    char_cap = int(getattr(settings, "grpc_max_request_chars", 0) or 0)
    if token_cap and tokens > token_cap:
        raise ResourceExhausted(
            f"request asks for up to {tokens} generated tokens ({what}); the limit per request is {token_cap} "
            "(SQ_GRPC_MAX_REQUEST_TOKENS): split it into smaller requests"
        )
    if char_cap and chars > char_cap:
        raise ResourceExhausted(
            f"request carries {chars} characters of text; the limit per request is {char_cap} "
            "(SQ_GRPC_MAX_REQUEST_CHARS): split it into smaller requests"
        )
