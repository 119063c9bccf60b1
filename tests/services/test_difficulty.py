"""Difficulty signal on every record (fail rate among the solver's candidates) and the target
difficulty mix (seeded per item, so redeliveries and reruns decide the same)."""

from __future__ import annotations

import pytest
from scalequest.common.v1 import items_pb2 as pb

from libs.errors import ConfigError
from libs.settings import load_settings
from services.reward.difficulty import (
    KeepBin,
    fail_rate,
    keep_for_mix,
    keep_probability,
    parse_keep,
    unit_draw,
)
from services.reward.settings import RewardSettings
from tests.services.test_pipeline_fake import run_pipeline


def test_parse_keep():
    assert parse_keep("") == ()
    assert parse_keep("0.25:0.5, 0:0") == (KeepBin(0.0, 0.0), KeepBin(0.25, 0.5))
    for bad in ("0.5", "a:b", "0:1.5", "2:0.5", "0:0.5,0:0.2"):
        with pytest.raises(ValueError):
            parse_keep(bad)


def test_bad_mix_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv("SQ_DIFFICULTY_KEEP", "easy:half")
    with pytest.raises(ConfigError, match="SQ_DIFFICULTY_KEEP"):
        load_settings(RewardSettings)


def test_keep_probability_first_matching_bin():
    bins = parse_keep("0:0.1,0.5:0.6")
    assert keep_probability(0.0, bins) == 0.1
    assert keep_probability(0.25, bins) == 0.6
    assert keep_probability(0.5, bins) == 0.6
    assert keep_probability(0.75, bins) == 1.0


def test_mix_is_deterministic_and_hits_the_rate():
    bins = parse_keep("0:0.3")
    ids = [f"run-{i}" for i in range(4000)]
    kept = [keep_for_mix(i, 0.0, bins) for i in ids]
    assert kept == [keep_for_mix(i, 0.0, bins) for i in ids]
    assert 0.27 < sum(kept) / len(kept) < 0.33
    assert all(keep_for_mix(i, 0.4, bins) for i in ids)  # harder than every bin: always kept
    assert all(0 <= unit_draw(i) < 1 for i in ids[:100])


def test_fail_rate():
    assert fail_rate([0, 0, 0, 0], 1) == 0.0
    assert fail_rate([0, 0, 1, -1], 0) == 0.5  # one wrong, one without an answer
    assert fail_rate([0, 1, 2, 3], 2) == 0.75
    assert fail_rate([], 0) == 1.0 and fail_rate([0], -1) == 1.0


async def test_run_records_difficulty_and_applies_the_mix(nats_server, tmp_path):
    # The scripted solver gets one of 4 candidates wrong (seed % 4 == 3): difficulty 0.25 for
    # every question, so a 0.25:0.5 mix drops about half of the solved questions.
    final, rows = await run_pipeline(nats_server.url, str(tmp_path / "store"), target=10, difficulty_keep="0.25:0.5")
    assert final.accepted == 10 and len(rows) == 10
    reasons = {(r.stage, r.reason): r.count for r in final.rejections}
    assert reasons.get(("reward", "difficulty_mix"), 0) >= 2
    for r in rows:
        assert r["difficulty"] == pytest.approx(0.25)
        assert r["answered"] == 4 and r["distinct_answers"] == 2
        assert r["predicted_difficulty"] is None
        assert keep_for_mix(r["item_id"], r["difficulty"], parse_keep("0.25:0.5"))


async def test_invalid_mix_in_a_run_config_is_rejected(nats_server, tmp_path):
    import grpc

    with pytest.raises(grpc.aio.AioRpcError) as e:
        await run_pipeline(nats_server.url, str(tmp_path / "store"), target=2, difficulty_keep="0:2")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "difficulty_keep" in e.value.details()


def test_final_record_fields_exist():
    rec = pb.FinalRecord(answered=3, distinct_answers=1)
    assert rec.answered == 3 and not pb.Question().HasField("predicted_difficulty")
