"""TLS material from settings: PEM files for gRPC (server and channel credentials) and an
``ssl.SSLContext`` for NATS.

Every path comes from a ``SQ_*_TLS_*`` setting (a file mounted from a Secret); a file that
cannot be read or parsed is a :class:`ConfigError` naming the setting, never a traceback.
Only paths appear in messages, never file contents.
"""

from __future__ import annotations

import ssl
from typing import Any

from libs.errors import ConfigError


def read_pem(path: str, env: str) -> bytes:
    """The bytes of a PEM file named by the setting ``env``."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"{env}={path!r}: cannot read the file: {e.strerror or e}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{env}={path!r}: not a PEM file")
    return data


def grpc_tls_enabled(settings: Any) -> bool:
    """Whether the gRPC server of these settings speaks TLS."""
    return bool(getattr(settings, "grpc_tls_cert", ""))


def grpc_server_credentials(settings: Any):
    """``grpc.ServerCredentials`` from SQ_GRPC_TLS_CERT/KEY (+ SQ_GRPC_TLS_CLIENT_CA: client
    certificates required), or None when gRPC TLS is off."""
    import grpc

    if not grpc_tls_enabled(settings):
        return None
    cert = read_pem(settings.grpc_tls_cert, "SQ_GRPC_TLS_CERT")
    key = read_pem(settings.grpc_tls_key, "SQ_GRPC_TLS_KEY")
    client_ca = read_pem(settings.grpc_tls_client_ca, "SQ_GRPC_TLS_CLIENT_CA") if settings.grpc_tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def grpc_channel_credentials(settings: Any):
    """``grpc.ChannelCredentials`` for a client: SQ_GRPC_TLS_CA verifies the server, and
    SQ_GRPC_TLS_CERT/KEY (when set) are presented as the client certificate (mutual TLS).
    None when SQ_GRPC_TLS_CA is empty (plaintext channel)."""
    import grpc

    ca_path = getattr(settings, "grpc_tls_ca", "")
    if not ca_path:
        return None
    ca = read_pem(ca_path, "SQ_GRPC_TLS_CA")
    cert = key = None
    if getattr(settings, "grpc_tls_cert", ""):
        cert = read_pem(settings.grpc_tls_cert, "SQ_GRPC_TLS_CERT")
        key = read_pem(settings.grpc_tls_key, "SQ_GRPC_TLS_KEY")
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def nats_tls_context(settings: Any) -> ssl.SSLContext | None:
    """Client ``SSLContext`` for NATS from SQ_NATS_TLS_CA (+ SQ_NATS_TLS_CERT/KEY for mutual
    TLS); None when neither is set. Server certificates are always verified (hostname too)."""
    ca = getattr(settings, "nats_tls_ca", "")
    cert = getattr(settings, "nats_tls_cert", "")
    if not (ca or cert):
        return None
    if ca:
        read_pem(ca, "SQ_NATS_TLS_CA")  # a readable, PEM-looking file: a clear error otherwise
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca or None)
    except ssl.SSLError as e:
        raise ConfigError(f"SQ_NATS_TLS_CA={ca!r}: not a usable CA bundle: {e.reason or e}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        read_pem(cert, "SQ_NATS_TLS_CERT")
        read_pem(settings.nats_tls_key, "SQ_NATS_TLS_KEY")
        try:
            ctx.load_cert_chain(cert, settings.nats_tls_key)
        except ssl.SSLError as e:
            raise ConfigError(
                f"SQ_NATS_TLS_CERT={cert!r} / SQ_NATS_TLS_KEY: certificate and key do not load: {e.reason or e}"
            ) from None
    return ctx
