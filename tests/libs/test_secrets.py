"""Secrets never reach logs, error messages, reprs or CLI output: code paths that hold
credentials (S3 keys against a real S3 server, NATS passwords in SQ_NATS_PASSWORD and in
URLs) are driven into failure while every log line is captured, then the output is searched
for the secret values."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from libs.logging import (
    HumanFormatter,
    JsonFormatter,
    RedactSecretsFilter,
    setup_logging,
)
from libs.queue.server import free_port
from libs.settings import CommonSettings, load_settings

CLI = str(Path(sys.executable).with_name("scalequest"))


def secret(tag: str) -> str:
    return f"{tag}-{secrets.token_urlsafe(12)}"


@pytest.fixture
def captured(caplog, restore_root_logging):
    """All log output three ways: caplog (the raw records, no redaction filter: proves the
    code itself does not put the secret in a message) and our JSON and human formatters."""
    caplog.set_level(logging.DEBUG)
    outs = {"json": io.StringIO(), "human": io.StringIO()}
    root = logging.getLogger()
    handlers = []
    for kind, fmt in (("json", JsonFormatter("t")), ("human", HumanFormatter("t"))):
        h = logging.StreamHandler(outs[kind])
        h.setFormatter(fmt)
        h.addFilter(RedactSecretsFilter())
        root.addHandler(h)
        handlers.append(h)
    yield lambda: {"caplog": caplog.text, **{k: v.getvalue() for k, v in outs.items()}}
    for h in handlers:
        root.removeHandler(h)


@pytest.fixture
def restore_root_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def assert_absent(values: list[str], **texts: str) -> None:
    for name, text in texts.items():
        for v in values:
            assert v not in text, f"secret {v[:6]}... found in {name}:\n{text[-2000:]}"


def cli(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SQ_", "AWS_"))}
    return subprocess.run([CLI, *args], env={**base, **env}, capture_output=True, text=True, timeout=timeout, check=False)


# ------------------------------------------------------------------------------ settings


def test_settings_never_show_the_nats_password(monkeypatch):
    pw = secret("natspw")
    monkeypatch.setenv("SQ_NATS_USER", "filter")
    monkeypatch.setenv("SQ_NATS_PASSWORD", pw)
    s = load_settings(CommonSettings)
    assert s.nats_password.get_secret_value() == pw
    assert_absent([pw], repr=repr(s), str=str(s), json=s.model_dump_json(), dump=str(s.model_dump()))
    monkeypatch.setenv("SQ_NATS_USER", "")
    with pytest.raises(Exception) as e:  # ConfigError; the point is its text
        load_settings(CommonSettings)
    assert "SQ_NATS_USER" in str(e.value)
    assert_absent([pw], error=str(e.value))


def test_redaction_filter_masks_url_passwords_without_env(restore_root_logging):
    out = io.StringIO()
    setup_logging("INFO", json=True, service="t", stream=out)
    pw = secret("urlpw")
    try:
        raise ConnectionError(f"cannot reach nats://coordinator:{pw}@nats:4222")
    except ConnectionError:
        logging.getLogger("t").exception("connect to %s failed", f"nats://coordinator:{pw}@nats:4222")
    text = out.getvalue()
    assert_absent([pw], json=text)
    assert "nats://coordinator:***@nats:4222" in text


# ------------------------------------------------------------------------------ S3


@pytest.mark.s3
def test_s3_bad_credentials_do_not_leak(s3_server, monkeypatch, captured):
    """Wrong S3 keys against a real S3 server: the failure names the endpoint and the error
    code, never the secret key nor the access key id, in the exception, a log line or a repr."""
    from libs.storage.objectstore import StoreError, open_store

    access, key = secret("AKIAFAKE"), secret("s3secret")
    monkeypatch.setenv("SQ_S3_ENDPOINT", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key)
    store = open_store(f"s3://bucket-{secrets.token_hex(4)}/p")
    log = logging.getLogger("scalequest.test")
    with pytest.raises(StoreError) as e:
        store.put_bytes("a/b.txt", b"x")
    log.error("store write failed: %s", e.value)
    log.exception("store write failed", exc_info=e.value)
    log.info("store is %r", store)
    assert s3_server.endpoint.split("://")[1] in str(e.value)  # the message is useful
    assert_absent([access, key], error=str(e.value), repr=repr(e.value) + repr(store), **captured())


@pytest.mark.s3
def test_cli_store_check_with_bad_credentials(s3_server, nats_server):
    """`scalequest bootstrap --check-store` with bad S3 keys and a password in SQ_NATS_URL:
    exits 1 with a one-line error; stderr (JSON and human logs) holds none of the secrets."""
    access, key, pw, user_pw = secret("AKIAFAKE"), secret("s3secret"), secret("urlpw"), secret("userpw")
    url = nats_server.url.replace("nats://", f"nats://admin:{pw}@")  # a server without auth accepts any
    for json_logs in ("1", "0"):
        out = cli(["bootstrap", "--check-store", "--connect-timeout", "20"], {
            "SQ_NATS_URL": url, "SQ_NATS_USER": "admin", "SQ_NATS_PASSWORD": user_pw,
            "SQ_STORE_URL": f"s3://bucket-{secrets.token_hex(4)}/p", "SQ_S3_ENDPOINT": s3_server.endpoint,
            "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": key, "SQ_LOG_JSON": json_logs,
            "SQ_LOG_LEVEL": "DEBUG"})
        assert out.returncode == 1, out.stderr[-2000:]
        assert "JetStream topology ready on nats://***@127.0.0.1" in out.stdout
        assert "scalequest: error: S3" in out.stderr and "Traceback" not in out.stderr
        assert_absent([access, key, pw, user_pw], stdout=out.stdout, stderr=out.stderr)


# ------------------------------------------------------------------------------ NATS


async def test_failing_nats_connect_with_password_does_not_leak(captured):
    from libs.queue.topology import connect

    pw, url_pw = secret("natspw"), secret("urlpw")
    os.environ["SQ_NATS_PASSWORD"] = pw  # as a pod has it; removed below
    try:
        url = f"nats://filter:{url_pw}@127.0.0.1:{free_port()}"
        with pytest.raises(Exception) as e:  # whatever nats-py raises; its text is checked
            await asyncio.wait_for(connect(url, "pytest-leak", user="filter", password=pw, allow_reconnect=False,
                                           connect_timeout=1), 10)
        logging.getLogger("scalequest.test").exception("connect failed: %s", e.value)
    finally:
        del os.environ["SQ_NATS_PASSWORD"]
    assert_absent([pw, url_pw], error=str(e.value), **captured())


async def test_cli_errors_with_nats_secrets(nats_server, js, tmp_path):
    """The CLI's error paths that name the NATS URL: an unreachable server (bootstrap) and an
    unknown run (status, which puts --nats-url in its message)."""
    pw, url_pw = secret("natspw"), secret("urlpw")
    dead = f"nats://admin:{url_pw}@127.0.0.1:{free_port()}"
    out = await asyncio.to_thread(cli, ["bootstrap", "--connect-timeout", "2"], {"SQ_NATS_URL": dead, "SQ_NATS_USER": "admin",
                                                       "SQ_NATS_PASSWORD": pw, "SQ_LOG_LEVEL": "DEBUG"})
    assert out.returncode == 1 and "cannot connect to NATS at SQ_NATS_URL=nats://***@127.0.0.1" in out.stderr
    assert_absent([pw, url_pw], stdout=out.stdout, stderr=out.stderr)

    live = nats_server.url.replace("nats://", f"nats://trainer:{url_pw}@")
    out = await asyncio.to_thread(cli, ["status", "no-such-run", "--nats-url", live, "--store", str(tmp_path)],
                                  {"SQ_NATS_PASSWORD": pw, "SQ_NATS_USER": "trainer", "SQ_LOG_JSON": "0"})
    assert out.returncode == 1 and "no-such-run not found" in out.stderr, out.stderr[-2000:]
    assert "nats://trainer:***@127.0.0.1" in out.stderr
    assert_absent([pw, url_pw], stdout=out.stdout, stderr=out.stderr)


def test_redaction_knows_secret_names_from_look_alikes(monkeypatch):
    from libs.logging import redact

    monkeypatch.setenv("SQ_NATS_PASSWORD_TRAINER", "trainer-pw-123")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA1234567")
    monkeypatch.setenv("SQ_GEN_MAX_TOKENS", "2048")  # a number in many lines, not a secret
    monkeypatch.setenv("SQ_GRPC_TLS_KEY", "/etc/scalequest/tls/grpc/tls.key")  # a path, not the key
    text = redact("pw trainer-pw-123 key AKIA1234567 max 2048 file /etc/scalequest/tls/grpc/tls.key")
    assert text == "pw *** key *** max 2048 file /etc/scalequest/tls/grpc/tls.key"
