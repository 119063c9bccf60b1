"""gRPC client channels: TLS when the settings name a CA (``SQ_GRPC_TLS_CA``), else plaintext.

Every channel the code opens to a scalequest service goes through :func:`open_channel`, so
turning TLS on is a settings change (docs/security.md). With ``SQ_GRPC_TLS_CERT``/``KEY`` set
as well, the channel presents that certificate (mutual TLS). ``SQ_GRPC_TLS_SERVER_NAME``
overrides the name checked against the server certificate (e.g. when dialing an IP address).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from grpc import aio

from libs.tls import grpc_channel_credentials

GRPC_CLIENT_FIELDS = ("grpc_tls_ca", "grpc_tls_cert", "grpc_tls_key", "grpc_tls_server_name")


def _settings(settings: Any | None) -> Any:
    if settings is not None:
        return settings
    from libs.queue.auth import settings_from_env

    return settings_from_env(GRPC_CLIENT_FIELDS)


def channel_options(settings: Any, options: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    opts = dict(options)
    name = getattr(settings, "grpc_tls_server_name", "")
    if name and getattr(settings, "grpc_tls_ca", ""):
        opts.setdefault("grpc.ssl_target_name_override", name)
    return list(opts.items())


def open_channel(target: str, settings: Any | None = None, *, options: Sequence[tuple[str, Any]] = ()) -> aio.Channel:
    """A ``grpc.aio`` channel to ``target`` (``host:port``); ``settings`` default: the
    SQ_GRPC_TLS_* environment. Secure when SQ_GRPC_TLS_CA is set."""
    s = _settings(settings)
    creds = grpc_channel_credentials(s)
    opts = channel_options(s, options)
    if creds is None:
        return aio.insecure_channel(target, options=opts)
    return aio.secure_channel(target, creds, options=opts)


def open_sync_channel(target: str, settings: Any | None = None, *,
                      options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """The blocking-API twin of :func:`open_channel`."""
    s = _settings(settings)
    creds = grpc_channel_credentials(s)
    opts = channel_options(s, options)
    if creds is None:
        return grpc.insecure_channel(target, options=opts)
    return grpc.secure_channel(target, creds, options=opts)
