"""Process logging: structured JSON lines (or human-readable lines) on stderr.

Every line carries ``ts``, ``level``, ``logger``, ``msg`` and ``service``, plus the ids that
let one follow an item through the pipeline (``run_id``, ``stage``, ``item_id``) and any
other ``extra=`` fields. Ids come from ``extra=`` on the call or from :func:`log_context`,
which binds them for everything logged inside a ``with`` block (contextvars, so it follows
asyncio tasks and does not leak between concurrent RPCs).

Secrets never reach the output: :class:`RedactSecretsFilter` masks the values of environment
variables whose names contain SECRET, PASSWORD, PASSWD or CREDENTIAL, or the word KEY, TOKEN,
PASS or APIKEY (``AWS_ACCESS_KEY_ID``, ``HF_TOKEN``; not ``SQ_GEN_MAX_TOKENS``) wherever they
appear in a message, its arguments, extras or a traceback, and the password of any ``scheme://user:password@host`` URL (a NATS token URL
``nats://token@host`` loses its whole user part). Values of ``*_FILE`` / ``*_TLS_*`` settings
are file paths, not secrets, and stay readable.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
import json as _json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

#: Fields promoted to the top level of a line when present (ids first, then the rest).
CONTEXT_FIELDS = ("run_id", "stage", "item_id")
#: Libraries whose INFO chatter drowns the service's own lines; WARNING unless level is DEBUG.
NOISY_LOGGERS = ("nats", "grpc", "grpc._cython", "vllm", "httpx", "httpcore", "urllib3", "asyncio", "filelock")
#: Environment variable names containing any of these mark their value as a secret ...
SECRET_NAME_PARTS = ("SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")
#: ... and so do these as a whole ``_``-separated word (KEY in ACCESS_KEY_ID, not in MAX_KEYS;
#: TOKEN in HF_TOKEN, not in SQ_GEN_MAX_TOKENS, whose value is a number seen in many lines).
SECRET_NAME_WORDS = frozenset({"KEY", "TOKEN", "PASS", "APIKEY", "ACCESSKEY", "PASSPHRASE"})
#: ... except these, whose values are paths to files (the file may hold a secret, its name is none).
_PATH_NAME_RE = re.compile(r"(_FILE|_PATH|_DIR|_TLS_(KEY|CERT|CA|CLIENT_CA))$")
MASK = "***"
# scheme://user:password@ (password masked) and nats://token@ (token masked).
_URL_PASSWORD_RE = re.compile(r"(?P<pre>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@'\"]*):(?P<pw>[^\s/@'\"]+)@")
_URL_TOKEN_RE = re.compile(r"(?P<pre>\b(?:nats|tls|ws|wss)://)(?P<tok>[^\s:/@'\"]+)@")

_SERVICE: contextvars.ContextVar[str | None] = contextvars.ContextVar("sq_log_service", default=None)
_CONTEXT: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar("sq_log_context", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
# Values that a "secret-looking" variable commonly holds but that are not secrets; masking
# them would mangle ordinary words in every line.
_NOT_SECRET = frozenset({"", "0", "1", "true", "false", "yes", "no", "on", "off", "none", "null"})
_MIN_SECRET_LEN = 4
_HANDLER_MARK = "_scalequest_handler"
_setup_lock = threading.Lock()


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Bind fields (``run_id=``, ``stage=``, ``item_id=``, ``service=``, ...) to every line
    logged inside the block, in this task and the tasks it creates. Nested blocks merge;
    ``None`` values are dropped."""
    service = fields.pop("service", None)
    merged = {**(_CONTEXT.get() or {}), **{k: v for k, v in fields.items() if v is not None}}
    token = _CONTEXT.set(merged)
    service_token = _SERVICE.set(service) if service else None
    try:
        yield
    finally:
        _reset(_CONTEXT, token)
        if service_token is not None:
            _reset(_SERVICE, service_token)


def _reset(var: contextvars.ContextVar, token: contextvars.Token) -> None:
    # A generator closed from another task/context cannot reset its token; restoring the
    # previous value there is the closest correct thing to do.
    try:
        var.reset(token)
    except ValueError:
        if token.old_value is contextvars.Token.MISSING:
            var.set(None)
        else:
            var.set(token.old_value)


def current_log_context() -> dict[str, Any]:
    """The fields :func:`log_context` has bound here (a copy)."""
    return dict(_CONTEXT.get() or {})


def _secret_name(name: str) -> bool:
    if _PATH_NAME_RE.search(name):
        return False
    return any(part in name for part in SECRET_NAME_PARTS) or not SECRET_NAME_WORDS.isdisjoint(name.split("_"))


def _secret_values() -> list[str]:
    values = {
        value
        for name, value in os.environ.items()
        if _secret_name(name.upper())
        and len(value) >= _MIN_SECRET_LEN
        and value.strip().lower() not in _NOT_SECRET
    }
    # Longest first, so a secret that contains another is masked whole.
    return sorted(values, key=len, reverse=True)


def redact(text: str, secrets: list[str] | None = None) -> str:
    """``text`` with every secret value (default: from the environment now) and every URL
    password replaced by ***."""
    for value in _secret_values() if secrets is None else secrets:
        if value in text:
            text = text.replace(value, MASK)
    if "@" in text and "://" in text:
        text = _URL_PASSWORD_RE.sub(rf"\g<pre>:{MASK}@", text)
        text = _URL_TOKEN_RE.sub(rf"\g<pre>{MASK}@", text)
    return text


class RedactSecretsFilter(logging.Filter):
    """Masks secret environment values in a record before any formatter sees it.

    The environment is read on every record (a few microseconds), so secrets set after
    start-up — by tests, or by a library loading a ``.env`` — are covered too. The rendered
    message replaces ``msg``/``args``; the traceback is rendered into ``exc_text`` and masked;
    string extras are masked. Formatters add a final pass over the whole line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = _secret_values()
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # bad format string: the formatter reports it as logging does
            return True
        if not secrets and "://" not in message and not record.exc_info and not record.exc_text:
            return True
        record.msg, record.args = redact(message, secrets), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, secrets)
        for key, value in list(vars(record).items()):
            if key not in _RECORD_ATTRS and isinstance(value, str):
                setattr(record, key, redact(value, secrets))
        return True


_factory_attrs: tuple[object, frozenset[str]] | None = None


def _baseline_attrs() -> frozenset[str]:
    """Attributes every record gets, including those a library's record factory adds to all
    records (vLLM adds ``vllm_process_name``): those are not the caller's extras."""
    global _factory_attrs
    factory = logging.getLogRecordFactory()
    cached = _factory_attrs
    if cached is None or cached[0] is not factory:
        try:
            probe = frozenset(vars(factory("", 0, "", 0, "", (), None)))
        except Exception:  # a factory with other needs: fall back to the stdlib set
            probe = frozenset()
        cached = _factory_attrs = (factory, _RECORD_ATTRS | probe)
    return cached[1]


def _fields(record: logging.LogRecord, default_service: str) -> dict[str, Any]:
    """Context fields and extras of a record; `extra=` wins over log_context."""
    fields: dict[str, Any] = dict(_CONTEXT.get() or {})
    baseline = _baseline_attrs()
    for key, value in vars(record).items():
        if key not in baseline and not key.startswith("_"):
            fields[key] = value
    fields["service"] = fields.get("service") or _SERVICE.get() or default_service
    return fields


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    return record.exc_text or ""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601, ms), level, logger, msg, service,
    the context ids, other extras, and ``exc`` (the traceback) when there is one."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        ts = _dt.datetime.fromtimestamp(record.created, tz=_dt.timezone.utc)
        line: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = _fields(record, self.service)
        line["service"] = fields.pop("service")
        for key in CONTEXT_FIELDS:
            if key in fields:
                line[key] = fields.pop(key)
        line.update((k, v) for k, v in fields.items() if k not in line)
        exc = _exception_text(self, record)
        if exc:
            line["exc"] = exc
        if record.stack_info:
            line["stack"] = record.stack_info
        return redact(_json.dumps(line, default=str, ensure_ascii=False))


class HumanFormatter(logging.Formatter):
    """``2024-05-01 12:00:00.123 INFO  filter libs.runtime: msg  run_id=.. stage=..``"""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        ts = _dt.datetime.fromtimestamp(record.created).strftime("%Y-%m-%d %H:%M:%S")
        fields = _fields(record, self.service)
        service = fields.pop("service")
        ordered = [k for k in CONTEXT_FIELDS if k in fields] + [k for k in fields if k not in CONTEXT_FIELDS]
        tail = "  ".join(f"{k}={fields[k]}" for k in ordered)
        text = f"{ts}.{int(record.msecs):03d} {record.levelname:<7} {service} {record.name}: {record.getMessage()}"
        if tail:
            text += "  " + tail
        exc = _exception_text(self, record)
        if exc:
            text += "\n" + exc
        if record.stack_info:
            text += "\n" + record.stack_info
        return redact(text)


def setup_logging(
    level: str | int = "INFO", json: bool = True, service: str = "scalequest", *, stream: TextIO | None = None
) -> logging.Handler:
    """Configure the root logger for a service process; safe to call more than once.

    One stderr handler (JSON lines or human-readable) with the redaction filter replaces
    any handler an earlier call installed; handlers installed by others (pytest's capture)
    are left alone. ``service`` is the default for the ``service`` field; in a process
    hosting several services, ``log_context(service=...)`` overrides it per task.
    Noisy libraries are set to WARNING unless ``level`` is DEBUG. ``stream`` defaults to
    stderr (tests pass a StringIO). Returns the handler.
    """
    try:
        numeric = int(logging.getLevelName(level.upper()) if isinstance(level, str) else level)
    except ValueError:  # getLevelName answers "Level X" for an unknown name
        raise ValueError(f"unknown log level {level!r}") from None
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(JsonFormatter(service) if json else HumanFormatter(service))
    handler.addFilter(RedactSecretsFilter())
    with _setup_lock:
        root = logging.getLogger()
        for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
            root.removeHandler(old)
            old.close()
        root.addHandler(handler)
        root.setLevel(numeric)
        quiet = logging.NOTSET if numeric <= logging.DEBUG else logging.WARNING
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(quiet)
    logging.captureWarnings(True)
    return handler
