"""NATS authentication: one user per service, each allowed only its own subjects.

The permission table is derived from :mod:`libs.queue.subjects` (the work queues in pipeline
order, the events and dead-letter subjects, the KV buckets) plus the JetStream API subjects
the client library sends for what a service does:

* consuming its work queue: ``$JS.API.CONSUMER.INFO|MSG.NEXT.<stream>.<consumer>`` and acks
  on ``$JS.ACK.<stream>.<consumer>.>`` (ack, nak, in-progress, term);
* publishing: the next stage's work subject, the sink (rejections), its own dead-letter
  subject; the coordinator: the generate queue and the run events;
* KV: reads (``$JS.API.STREAM.INFO|MSG.GET|DIRECT.GET`` and ordered consumers for key
  listings and watches on ``KV_<bucket>``) and writes (``$KV.<bucket>.<keys>``; a stage may
  write only its own counter keys ``run.*.stage.<stage>.*`` in the runs bucket);
* replies: every request and JetStream publish waits for its answer on ``_INBOX.>``.

Users: ``questiongen``, ``filter``, ``solver``, ``reward``, ``coordinator`` (the services),
``admin`` (``scalequest bootstrap`` and operator tools: everything) and ``trainer`` (read-only
follower: streaming SFT and ``scalequest status``; it may create its own durable consumers
on the events stream and its progress bucket ``sq-trainer``, and publish nothing else).

Restricted users cannot create streams, consumers or buckets: the admin user does that once
(``scalequest bootstrap``) and the services only look up what they need
(:func:`verify_topology`, ``SQ_NATS_TOPOLOGY``).

:func:`render_config` writes the ``authorization { users = [...] }`` block of a nats-server
configuration (``scalequest nats-config``). Passwords are bcrypt hashes by default (the server
compares a client's password against the hash; the config then holds no usable secret), or
plain text with ``hash_passwords=False``. Clients always send the plain password
(``SQ_NATS_USER`` / ``SQ_NATS_PASSWORD``, see :func:`client_options`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from libs.errors import ConfigError
from libs.queue import subjects
from libs.queue.subjects import WorkQueue
from libs.queue.topology import DEDUP_BUCKET, LEDGER_BUCKET

log = logging.getLogger("scalequest.queue")

JS_API = "$JS.API"
INBOX = "_INBOX.>"
RUNS_BUCKET = subjects.RUNS_BUCKET
TRAINER_BUCKET = "sq-trainer"  # libs/streaming.PROGRESS_BUCKET (that module imports the store)

ADMIN_USER = "admin"
TRAINER_USER = "trainer"
#: Environment prefix of the passwords ``scalequest nats-config`` reads: SQ_NATS_PASSWORD_<USER>.
PASSWORD_ENV_PREFIX = "SQ_NATS_PASSWORD_"
BCRYPT_COST = 11


# ------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Access:
    """What one NATS user may do, in pipeline terms; :meth:`permissions` turns it into subjects."""

    user: str
    description: str
    consumes: tuple[WorkQueue, ...] = ()
    publishes: tuple[str, ...] = ()  # subjects bound to a stream (plain or JetStream publish)
    kv_read: tuple[str, ...] = ()  # buckets
    kv_write: tuple[str, ...] = ()  # $KV.<bucket>.<key pattern>
    kv_create: tuple[str, ...] = ()  # buckets this user may create itself
    follows_events: bool = False  # durable consumers of its own on the events stream
    admin: bool = False

    def streams(self) -> list[str]:
        """Streams this user reads or publishes to (what :func:`verify_topology` looks up)."""
        out = [q.stream for q in self.consumes]
        for subject in self.publishes:
            stream = stream_of(subject)
            if stream not in out:
                out.append(stream)
        if self.follows_events and subjects.EVENTS_STREAM not in out:
            out.append(subjects.EVENTS_STREAM)
        return out

    def permissions(self) -> dict[str, Any]:
        """nats-server ``permissions`` of this user: publish and subscribe allow lists."""
        if self.admin:
            return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
        pub: list[str] = []
        for q in self.consumes:
            pub += [
                f"{JS_API}.CONSUMER.INFO.{q.stream}.{q.consumer}",
                f"{JS_API}.CONSUMER.MSG.NEXT.{q.stream}.{q.consumer}",
                f"$JS.ACK.{q.stream}.{q.consumer}.>",
            ]
        pub += list(self.publishes)
        pub += [f"{JS_API}.STREAM.INFO.{s}" for s in self.streams()]
        if self.follows_events:
            ev = subjects.EVENTS_STREAM
            pub += [
                f"{JS_API}.CONSUMER.INFO.{ev}.*",
                f"{JS_API}.CONSUMER.CREATE.{ev}.>",
                f"{JS_API}.CONSUMER.DURABLE.CREATE.{ev}.*",
                f"{JS_API}.CONSUMER.MSG.NEXT.{ev}.*",
                f"$JS.ACK.{ev}.>",
            ]
        for bucket in dict.fromkeys([*self.kv_read, *self.kv_create]):
            pub += _kv_read_subjects(bucket)
        pub += list(self.kv_write)
        pub += [f"{JS_API}.STREAM.CREATE.KV_{b}" for b in self.kv_create]
        return {"publish": {"allow": list(dict.fromkeys(pub))}, "subscribe": {"allow": [INBOX]}}


def _kv_read_subjects(bucket: str) -> list[str]:
    s = f"KV_{bucket}"
    return [
        f"{JS_API}.STREAM.INFO.{s}",
        f"{JS_API}.STREAM.MSG.GET.{s}",
        f"{JS_API}.DIRECT.GET.{s}",
        f"{JS_API}.DIRECT.GET.{s}.>",
        # keys() / watch(): an ordered (ephemeral) consumer, its flow control and clean-up
        f"{JS_API}.CONSUMER.CREATE.{s}",
        f"{JS_API}.CONSUMER.CREATE.{s}.>",
        f"{JS_API}.CONSUMER.INFO.{s}.*",
        f"{JS_API}.CONSUMER.DELETE.{s}.>",
        f"$JS.FC.{s}.>",
    ]


def _kv(bucket: str, keys: str = ">") -> str:
    return f"$KV.{bucket}.{keys}"


def stream_of(subject: str) -> str:
    """The stream a pipeline subject belongs to."""
    for q in subjects.WORK_QUEUES:
        if subject == q.subject:
            return q.stream
    if subject.startswith(subjects.EVENTS_SUBJECTS[:-1]):
        return subjects.EVENTS_STREAM
    if subject.startswith(subjects.DLQ_SUBJECTS[:-1]):
        return subjects.DLQ_STREAM
    raise ValueError(f"{subject!r} belongs to no scalequest stream")


def _stage(i: int) -> Access:
    """Stage ``i`` of the pipeline: consumes WORK_QUEUES[i], forwards to WORK_QUEUES[i + 1];
    every stage may end an item at the sink (rejections) and dead-letter its own messages."""
    q = subjects.WORK_QUEUES[i]
    nxt = subjects.WORK_QUEUES[i + 1]
    publishes = [nxt.subject]
    if nxt is not subjects.SINK:
        publishes.append(subjects.SINK.subject)
    publishes.append(subjects.dlq_subject(q.consumer))
    kv_read = [RUNS_BUCKET]
    kv_write = [_kv(RUNS_BUCKET, f"run.*.stage.{q.consumer}.*")]  # its own counters only
    if q.consumer == "filter":
        kv_read.append(DEDUP_BUCKET)
        kv_write.append(_kv(DEDUP_BUCKET))
    return Access(
        user=q.consumer,
        description=f"stage {q.consumer}: consumes {q.subject}, publishes {', '.join(publishes)}",
        consumes=(q,),
        publishes=tuple(publishes),
        kv_read=tuple(kv_read),
        kv_write=tuple(kv_write),
    )


def _coordinator() -> Access:
    publishes = (subjects.GENERATE.subject, subjects.EVENTS_SUBJECTS, subjects.dlq_subject(subjects.SINK.consumer))
    return Access(
        user=subjects.SINK.consumer,
        description="coordinator: admits work to the generate queue, sinks outcomes, announces shards and run ends",
        consumes=(subjects.SINK,),
        publishes=publishes,
        kv_read=(RUNS_BUCKET, LEDGER_BUCKET),
        kv_write=(_kv(RUNS_BUCKET), _kv(LEDGER_BUCKET)),
    )


def access_table() -> dict[str, Access]:
    """Every user and what it may do, keyed by user name."""
    table = {a.user: a for a in (*(_stage(i) for i in range(len(subjects.WORK_QUEUES) - 1)), _coordinator())}
    table[ADMIN_USER] = Access(ADMIN_USER, "bootstrap and operator tools (scalequest bootstrap, dlq): everything",
                               admin=True)
    table[TRAINER_USER] = Access(
        TRAINER_USER,
        "read-only follower (streaming SFT, scalequest status/report): run events, run state, its progress bucket",
        kv_read=(RUNS_BUCKET, LEDGER_BUCKET),
        kv_write=(_kv(TRAINER_BUCKET),),
        kv_create=(TRAINER_BUCKET,),
        follows_events=True,
    )
    return table


USERS: tuple[str, ...] = tuple(access_table())


def permissions(user: str) -> dict[str, Any]:
    try:
        return access_table()[user].permissions()
    except KeyError:
        raise ConfigError(f"unknown NATS user {user!r}; known users: {', '.join(USERS)}") from None


# ------------------------------------------------------------------------------ server config


def bcrypt_hash(password: str, cost: int = BCRYPT_COST) -> str:
    """A bcrypt hash nats-server accepts (``$2a$``/``$2b$``): the ``bcrypt`` package when
    installed, else the C library's crypt(3) (glibc/libxcrypt support bcrypt)."""
    if not password:
        raise ConfigError("empty NATS password")
    try:
        import bcrypt  # type: ignore[import-not-found]

        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()
    except ImportError:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # stdlib until Python 3.12

        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=2**cost))
    except (ImportError, AttributeError, OSError, ValueError):
        hashed = None
    if not hashed or not hashed.startswith("$2"):
        raise ConfigError("no bcrypt implementation here: pip install bcrypt, or write plain passwords (--plain)")
    return hashed


def authorization(
    passwords: Mapping[str, str], *, hash_passwords: bool = True, users: Sequence[str] | None = None
) -> dict[str, Any]:
    """The ``authorization`` object of a nats-server configuration for ``users`` (default: all)."""
    table = access_table()
    wanted = list(users) if users else list(table)
    unknown = [u for u in wanted if u not in table]
    if unknown:
        raise ConfigError(f"unknown NATS user(s) {', '.join(unknown)}; known users: {', '.join(table)}")
    missing = [u for u in wanted if not passwords.get(u)]
    if missing:
        raise ConfigError(
            "no password for NATS user(s) " + ", ".join(missing) + " (set "
            + ", ".join(PASSWORD_ENV_PREFIX + u.upper() for u in missing) + ")"
        )
    entries = []
    for u in wanted:
        pw = passwords[u]
        entries.append({"user": u, "password": bcrypt_hash(pw) if hash_passwords else pw,
                        "permissions": table[u].permissions()})
    return {"users": entries}


def render_config(
    passwords: Mapping[str, str],
    *,
    hash_passwords: bool = True,
    users: Sequence[str] | None = None,
    fmt: str = "conf",
) -> str:
    """The nats-server configuration text: ``conf`` = an ``authorization { users = [...] }``
    block to include in (or append to) the server's config file; ``json`` = ``{"authorization":
    ...}``, the same as JSON (nats-server reads JSON too; fits the nats Helm chart's
    ``config.merge``). Every string is double-quoted, so the ``$`` of a bcrypt hash is never
    taken for a variable."""
    auth = authorization(passwords, hash_passwords=hash_passwords, users=users)
    if fmt == "json":
        return json.dumps({"authorization": auth}, indent=2) + "\n"
    if fmt != "conf":
        raise ValueError(f"unknown format {fmt!r}")
    lines = [
        "# scalequest NATS users (scalequest nats-config); passwords are "
        + ("bcrypt hashes" if hash_passwords else "PLAIN TEXT: keep this file secret"),
        "authorization {",
        "  users = [",
    ]
    for e in auth["users"]:
        perms = e["permissions"]
        lines += [
            "    {",
            f"      user: {json.dumps(e['user'])}",
            f"      password: {json.dumps(e['password'])}",
            "      permissions: {",
            f"        publish: {{ allow: {json.dumps(perms['publish']['allow'])} }}",
            f"        subscribe: {{ allow: {json.dumps(perms['subscribe']['allow'])} }}",
            "      }",
            "    }",
        ]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def passwords_from_env(users: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``SQ_NATS_PASSWORD_<USER>`` for each user that has one."""
    env = os.environ if env is None else env
    out = {}
    for u in users or USERS:
        value = env.get(PASSWORD_ENV_PREFIX + u.upper(), "")
        if value:
            out[u] = value
    return out


def passwords_from_dir(path: str, users: Sequence[str] | None = None) -> dict[str, str]:
    """One file per user named after it (a Kubernetes Secret mounted as a volume); trailing
    newlines are stripped."""
    out = {}
    for u in users or USERS:
        f = os.path.join(path, u)
        if os.path.isfile(f):
            with open(f, encoding="utf-8") as fh:
                value = fh.read().rstrip("\r\n")
            if value:
                out[u] = value
    return out


# ------------------------------------------------------------------------------ client side


def url_has_credentials(url: str) -> bool:
    for part in url.split(","):
        try:
            p = urlsplit(part.strip())
        except ValueError:
            continue
        if p.username or p.password:
            return True
    return False


def authenticated(settings: Any) -> bool:
    """Whether these settings log in as a (possibly restricted) NATS user."""
    return bool(settings.nats_user or settings.nats_creds_file or url_has_credentials(settings.nats_url))


def manages_topology(settings: Any) -> bool:
    """Whether a service creates/updates the topology at start-up (``SQ_NATS_TOPOLOGY``):
    ``ensure`` yes, ``verify`` no, ``auto`` only when not logged in as a (restricted) user."""
    mode = getattr(settings, "nats_topology", "auto")
    if mode == "auto":
        return not authenticated(settings)
    return mode == "ensure"


def client_options(settings: Any) -> dict[str, Any]:
    """``nats.connect`` keywords for these settings: user/password, a .creds file, TLS."""
    from libs.tls import nats_tls_context

    opts: dict[str, Any] = {}
    if settings.nats_user:
        opts["user"] = settings.nats_user
        opts["password"] = settings.nats_password.get_secret_value()
    if settings.nats_creds_file:
        if not os.path.isfile(settings.nats_creds_file):
            raise ConfigError(f"SQ_NATS_CREDS_FILE={settings.nats_creds_file!r} is not a file")
        opts["user_credentials"] = settings.nats_creds_file
    ctx = nats_tls_context(settings)
    if ctx is not None:
        opts["tls"] = ctx
    return opts


NATS_CLIENT_FIELDS = ("nats_user", "nats_password", "nats_creds_file", "nats_tls_ca", "nats_tls_cert", "nats_tls_key")


def settings_from_env(fields: Sequence[str], env: Mapping[str, str] | None = None) -> Any:
    """Just these CommonSettings fields from the environment (under their SQ_* names), for code
    without a settings object; unrelated settings, valid or not, do not matter here."""
    from types import SimpleNamespace

    from pydantic import SecretStr

    from libs.settings import CommonSettings, env_name

    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in fields:
        raw = env.get(env_name(CommonSettings, f), "")
        values[f] = SecretStr(raw) if CommonSettings.model_fields[f].annotation is SecretStr else raw
    return SimpleNamespace(**values)


def client_options_from_env(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """:func:`client_options` of the SQ_* environment (the training stream, the CLI's status,
    the embedded pipeline given a --nats-url)."""
    return client_options(settings_from_env(NATS_CLIENT_FIELDS, env))


def redact_url(url: str) -> str:
    """A NATS URL (or comma-separated list) without its ``user:password@`` parts."""
    out = []
    for part in url.split(","):
        try:
            p = urlsplit(part.strip())
            host = p.hostname
            port = p.port
        except ValueError:
            out.append("<unparseable url>")
            continue
        if p.username is None and p.password is None:
            out.append(part.strip())
            continue
        netloc = f"***@{host or ''}" + (f":{port}" if port else "")
        out.append(p._replace(netloc=netloc).geturl())
    return ",".join(out)


async def verify_topology(js: Any, user: str, *, timeout: float = 10.0, wait_seconds: float = 0.0,
                          poll_seconds: float = 2.0) -> None:
    """Check that the streams, the durable consumer and the KV buckets ``user`` needs exist,
    using only lookups its permissions allow. While something is missing, look again every
    ``poll_seconds`` for up to ``wait_seconds`` (the bootstrap Job may still be running), then
    raise ConfigError naming what is missing. A lookup the server does not answer (permission
    denied) fails at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while True:
        missing = await _check_topology(js, user, timeout)
        if not missing:
            return
        if loop.time() >= deadline:
            raise ConfigError(
                f"JetStream topology incomplete for NATS user {user!r}: {', '.join(missing)} not found; "
                "run `scalequest bootstrap` as the admin user first"
            )
        log.info("topology: waiting for %s (created by `scalequest bootstrap`)", ", ".join(missing))
        await asyncio.sleep(poll_seconds)


async def _check_topology(js: Any, user: str, timeout: float) -> list[str]:
    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.errors import NotFoundError

    access = access_table().get(user)
    if access is None:
        raise ConfigError(f"unknown NATS user {user!r}; known users: {', '.join(USERS)}")
    if access.admin:
        return []
    checks: list[tuple[str, Any]] = [(f"stream {s}", lambda s=s: js.stream_info(s)) for s in access.streams()]
    checks += [(f"consumer {q.stream}/{q.consumer}", lambda q=q: js.consumer_info(q.stream, q.consumer))
               for q in access.consumes]
    checks += [(f"KV bucket {b}", lambda b=b: js.stream_info(f"KV_{b}")) for b in access.kv_read
               if b not in access.kv_create]
    missing, denied = [], []
    for what, fn in checks:
        try:
            await asyncio.wait_for(fn(), timeout)
        except NotFoundError:
            missing.append(what)
        except (NatsTimeout, asyncio.TimeoutError):
            denied.append(what)
    if denied:
        raise ConfigError(
            f"NATS user {user!r} got no answer looking up {', '.join(denied)} (permission denied? "
            "the server's authorization block must come from `scalequest nats-config`)"
        )
    return missing
