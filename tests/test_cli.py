"""CLI user errors: a clear one-line message and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = str(Path(sys.executable).with_name("scalequest"))


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["run", "--target", "0"], "--target must be >= 1"),
        (["run", "--target", "abc"], "--target must be an integer"),
        (["run"], "--target"),
        (["run", "--target", "4", "--store", "gs://x"], "--store must be a directory or s3://"),
        (["serve", "nope"], "invalid choice"),
        (["export", "r1", "--format", "csv", "--out", "x"], "invalid choice"),
    ],
)
def test_bad_flags(args, needle):
    p = cli(*args)
    assert p.returncode == 2
    assert needle in p.stderr and "Traceback" not in p.stderr


def test_bad_setting_is_named():
    p = cli("serve", "filter", env={"SQ_GRPC_PORT": "http"})
    assert p.returncode == 1
    assert "SQ_GRPC_PORT='http'" in p.stderr and "Traceback" not in p.stderr


def test_unknown_run(tmp_path):
    p = cli("status", "no-such-run", "--store", str(tmp_path))
    assert p.returncode == 1 and "no-such-run" in p.stderr and "Traceback" not in p.stderr
    p = cli("export", "no-such-run", "--store", str(tmp_path), "--format", "jsonl", "--out", str(tmp_path / "o"))
    assert p.returncode == 1 and "no shards" in p.stderr and "Traceback" not in p.stderr


def test_bootstrap_is_idempotent_and_reports_a_dead_server(nats_server, tmp_path):
    env = {"SQ_NATS_URL": nats_server.url, "SQ_STORE_URL": str(tmp_path / "store")}
    for _ in range(2):
        p = cli("bootstrap", "--check-store", env=env)
        assert p.returncode == 0, p.stderr
        assert "SQ_GENERATE" in p.stdout and "SQ_SINK" in p.stdout and "object store ready" in p.stdout
    p = cli("bootstrap", "--connect-timeout", "2", env={"SQ_NATS_URL": "nats://127.0.0.1:1"})
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "127.0.0.1:1" in p.stderr


def test_run_overrides_give_engine_stages_one_item_per_fetch():
    # The queue worker finishes a fetched batch before it fetches again: engine stages of the
    # embedded run take single items on as many loops as the run admits (benchmarks/efficiency.py).
    from libs.settings import load_settings
    from scalequest_cli.commands import run_overrides
    from scalequest_cli.main import build_parser
    from services.registry import ENGINE_SERVICES, service_module

    for outstanding, loops in (("32", 32), ("1000", 256)):
        overrides = run_overrides(build_parser().parse_args(["run", "--target", "4", "--max-outstanding", outstanding]))
        for name in ENGINE_SERVICES:
            settings = load_settings(service_module(name).Settings, **overrides[name])
            assert (settings.batch_size, settings.worker_concurrency, settings.envelope_max_items) == (1, loops, 1)
        assert overrides["coordinator"]["batch_size"] == 32  # the sink keeps its own batching
        # ... and admits tasks one message each: an envelope would put many in one loop
        assert load_settings(service_module("coordinator").Settings, **overrides["coordinator"]).envelope_max_items == 1
