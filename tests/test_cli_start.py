"""`scalequest start`: a run started and followed through a running coordinator's gRPC API
(as against a coordinator in Kubernetes), here the embedded pipeline with the scripted engine."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from contextlib import AsyncExitStack
from pathlib import Path

from libs.engines.scripted import math_engine
from scalequest_cli.embedded import start_pipeline
from tests.services.test_pipeline_fake import OVERRIDES

CLI = str(Path(sys.executable).with_name("scalequest"))


async def scalequest(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=os.environ.copy()
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode(), err.decode()


async def test_start_and_follow_a_run(nats_server, tmp_path):
    engine = math_engine()
    await engine.start()
    async with AsyncExitStack() as stack:
        pipe = await start_pipeline(nats_url=nats_server.url, store_url=str(tmp_path), overrides=OVERRIDES,
                                    stack=stack, engine=engine)
        addr = f"127.0.0.1:{pipe.port('coordinator')}"
        code, out, err = await scalequest("start", "--coordinator", addr, "--target", "6", "--n-candidates", "4",
                                          "--seed", "11", "--json")
        assert code == 0, err
        final = json.loads(out.strip().splitlines()[-1])
        assert final["state"] == "completed" and int(final["accepted"]) == 6
        assert (tmp_path / "runs" / final["run_id"] / "manifest.json").exists()
        # flags left out take the coordinator's defaults; bad ones are refused with a message
        code, out, err = await scalequest("start", "--coordinator", addr, "--target", "2", "--difficulty-keep", "0:9")
        assert code == 1 and "refused" in err and "difficulty_keep" in err and "Traceback" not in err


async def test_no_coordinator_is_a_clear_error():
    code, _, err = await scalequest("start", "--coordinator", "127.0.0.1:1", "--target", "1", "--connect-timeout", "1")
    assert code == 1 and "no coordinator answers" in err and "Traceback" not in err
