"""Fault injection with real processes: the five services as separate ``scalequest serve``
processes, a real nats-server with a file store, a real S3 server (SeaweedFS), the zero-cost
scripted engine with a per-call delay so faults land while work is in flight
(``libs/chaos.py``; ``scripts/fault_matrix.py`` repeats these and prints the table).

After each fault the run must complete and the audit must find every admitted item exactly
once: accepted (one shard row), rejected with a reason or dead-lettered (the ledger), nothing
lost, nothing duplicated, and the coordinator's counters equal to what is durable.
"""

from __future__ import annotations

import pytest

from libs.chaos import (
    SERVICES,
    scenario_kills,
    scenario_nats_restart,
    scenario_s3_outage,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]


def check(res, target: int) -> None:
    rep = res.report
    print(res.fault, res.faults, res.recovery_s, res.detail, rep.as_dict())
    assert rep.ok, "\n".join(rep.problems)
    assert rep.state == "completed" and rep.unique_rows == target == rep.rows
    assert rep.lost == 0 and not rep.duplicates
    assert rep.unique_rows + rep.rejected == rep.admitted


async def test_kill9_of_every_service_during_a_run(tmp_path):
    res = await scenario_kills(tmp_path, target=100)
    assert res.faults >= 5, f"the run ended after {res.faults} kills: make it longer"
    assert {v for v, _ in res.detail["kills"]} == set(SERVICES)
    check(res, 100)


async def test_nats_server_restart_during_a_run(tmp_path):
    res = await scenario_nats_restart(tmp_path, target=60)
    assert res.detail["during_run"]
    check(res, 60)


@pytest.mark.s3
async def test_s3_unavailable_for_30s_while_shards_are_written(tmp_path):
    res = await scenario_s3_outage(tmp_path, target=48, seconds=30.0)
    assert res.detail["failed_shard_writes"] > 0, "the outage did not hit a shard write"
    check(res, 48)
