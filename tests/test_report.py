"""`scalequest report`: the computations on hand-made rows, and the command on a real run (the
embedded pipeline with the scripted engine, a real nats-server and a local object store)."""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path

import pytest

from libs.queue.server import EmbeddedNats
from scalequest_cli.main import main
from scalequest_cli.report import (
    Report,
    build_funnel,
    build_report,
    distribution,
    filter_steps,
    histogram,
    parse_rejections,
    render_png,
    report_tables,
)
from tests.services.test_pipeline_fake import run_pipeline

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# ------------------------------------------------------------------------------ computations


def row(i: int, *, difficulty=0.25, agreement=0.75, question="What is 2 + 3?", solution="2 + 3 = \\boxed{5}",
        tokens=(20, 22, 24, 30), selected=1, checks=("length", "language", "dedup", "solvability")) -> dict:
    return {
        "item_id": f"r-{i:07d}",
        "question": question,
        "solution": solution,
        "difficulty": difficulty,
        "agreement": agreement,
        "selected": selected,
        "candidates": [{"num_tokens": t, "answer": "5"} for t in tokens],
        "filter_verdicts": [{"check": c, "passed": True, "reason": "", "detail": ""} for c in checks],
    }


STATUS = {
    "run_id": "r",
    "state": "completed",
    "started_at": 1000.0,
    "ended_at": 1010.0,
    "admitted": 25,
    "finished": 20,
    "accepted": 4,
    "shards": 1,
    "target": 4,
    "rejections": {
        "questiongen/gen_truncated": 2,
        "filter/non_english_script": 3,
        "filter/too_short": 1,
        "filter/duplicate": 2,
        "filter/judge_unsolvable": 1,
        "filter/toxic": 1,  # a reason this report does not know: a step of its own
        "solver/no_answer": 2,
        "reward/insufficient_agreement": 3,
        "coordinator/over_target": 1,
    },
    "processed": {"questiongen": 22, "filter": 18, "solver": 9, "reward": 7},
    "tokens": {"questiongen": 1000, "filter": 500, "solver": 3000, "reward": 0},
    "config": {"target": 4, "n_candidates": 4, "run_type": "RUN_TYPE_SYNTHESIS"},
}


def test_funnel_follows_stage_attribution():
    rows = [row(i) for i in range(4)]
    rep = build_report(STATUS, None, rows)
    labels = [s.label for s in rep.funnel]
    assert labels == [
        "generated", "filter: length", "filter: language", "filter: dedup", "filter: solvability",
        "filter: toxic", "solved", "selected", "accepted",
    ]
    steps = {s.label: s for s in rep.funnel}
    assert steps["generated"].entered == 20 and steps["generated"].passed == 18
    assert steps["filter: length"].rejected == {"too_short": 1}
    assert steps["filter: language"].entered == 17 and steps["filter: language"].passed == 14
    assert steps["solved"].rejected == {"no_answer": 2}
    assert steps["accepted"].rejected == {"over_target": 1} and steps["accepted"].passed == 4
    # each step hands on what it did not reject; the rejections add up to every finished non-accepted task
    for a, b in zip(rep.funnel, rep.funnel[1:]):
        assert b.entered == a.passed
    assert sum(s.rejected_total for s in rep.funnel) == rep.finished - rep.accepted
    assert rep.in_flight == 5 and rep.rows == 4 and not rep.notes


def test_throughput_and_distributions():
    rows = [row(0, difficulty=0.0, agreement=1.0), row(1), row(2), row(3, difficulty=1.0, agreement=0.25)]
    rep = build_report(STATUS, None, rows)
    assert rep.wall_seconds == 10.0
    assert rep.accepted_per_s == pytest.approx(0.4)
    assert rep.tokens == 4500 and rep.tokens_per_s == pytest.approx(450.0)
    assert rep.tokens_per_accepted == pytest.approx(1125.0)
    solver = next(s for s in rep.stages if s.stage == "solver")
    assert solver.items_per_s == pytest.approx(0.9) and solver.tokens_per_s == pytest.approx(300.0)
    assert rep.difficulty.n == 4 and rep.difficulty.hist.counts[0] == 1 and rep.difficulty.hist.counts[-1] == 1
    assert rep.difficulty.hist.counts[2] == 2  # 0.25 falls in [0.2, 0.3)
    assert rep.agreement.mean == pytest.approx((1.0 + 0.75 + 0.75 + 0.25) / 4)
    assert rep.lengths["question chars"].p50 == len("What is 2 + 3?")
    assert rep.lengths["solution tokens"].min == 22  # the selected candidate's tokens
    assert rep.lengths["candidate tokens"].n == 16
    assert rep.predicted_difficulty is None


def test_missing_columns_and_counters():
    """Old records (no candidates, no difficulty) and a run with only a manifest still report."""
    rows = [{"item_id": "x-1", "question": "Q?", "solution": "S"}]
    manifest = {"run_id": "x", "state": "running", "accepted": 1, "shards": [{"key": "k", "records": 1}],
                "config": {"target": 8}}
    rep = build_report({"run_id": "x"}, manifest, rows)
    assert rep.accepted == 1 and rep.target == 8 and rep.shards == 1 and rep.state == "running"
    assert [s.label for s in rep.funnel] == ["accepted"] and rep.funnel[0].passed == 1
    assert rep.difficulty is None and rep.agreement is None and "solution tokens" not in rep.lengths
    assert rep.stages == [] and rep.accepted_per_s == 0.0
    assert any("no stage counters" in n for n in rep.notes)
    assert any("no candidates column" in n for n in rep.notes)
    assert any("no difficulty column" in n for n in rep.notes)
    json.dumps(rep.to_dict())  # serialisable even when sections are empty
    assert report_tables(rep)


def test_qpo_pairs_report():
    status = {**STATUS, "accepted": 2, "finished": 4, "admitted": 4,
              "rejections": {"questiongen/rewrite_unchanged": 2}, "processed": {"questiongen": 4},
              "tokens": {"questiongen": 400}, "config": {"run_type": "RUN_TYPE_QPO", "target": 2}}
    rows = [{"item_id": "q-1", "prompt": "p", "chosen": "longer question?", "rejected": "question?", "goal": "difficulty"}] * 2
    rep = build_report(status, None, rows)
    assert rep.run_type == "qpo"
    assert [s.label for s in rep.funnel] == ["generated", "accepted"]  # no filter/solver/reward in QPO
    assert set(rep.lengths) == {"generated (rejected) chars", "rewrite (chosen) chars"}
    assert rep.difficulty is None


def test_running_run_uses_now_for_wall_time():
    st = {**STATUS, "state": "running", "ended_at": 0.0}
    rep = build_report(st, None, [], now=1020.0)
    assert rep.wall_seconds == 20.0
    assert any("0 rows in the shards but 4 accepted" in n for n in rep.notes)


def test_helpers():
    h = histogram([0.0, 0.1, 0.55, 1.0, 1.0], 0.0, 1.0, 10)
    assert h.counts == [1, 1, 0, 0, 0, 1, 0, 0, 0, 2] and h.edges[0] == 0.0 and h.edges[-1] == pytest.approx(1.0)
    d = distribution([3, 1, 2, 4, None])
    assert (d.n, d.min, d.p50, d.max, d.mean) == (4, 1, 2.5, 4, 2.5) and sum(d.hist.counts) == 4
    assert distribution([]) is None
    assert parse_rejections({"filter/duplicate": 2, "odd": 1}) == {("filter", "duplicate"): 2, ("unknown", "odd"): 1}
    # a check seen in the records' verdicts keeps its place; rejected reasons are grouped by check
    steps = filter_steps({"too_long": 1, "too_short": 2, "contaminated": 1}, ["length", "language", "decontam"])
    assert steps == [("length", {"too_long": 1, "too_short": 2}), ("language", {}), ("decontam", {"contaminated": 1})]
    # a known check the records do not show yet goes after its predecessor in the filter's order
    steps = filter_steps({"contaminated": 1}, ["length", "language", "dedup", "solvability"])
    assert [c for c, _ in steps] == ["length", "language", "decontam", "dedup", "solvability"]
    # exact and near duplicates are one check (one verdict) with two reasons
    steps = filter_steps({"near_duplicate": 1, "duplicate": 2}, ["length", "language", "dedup", "solvability"])
    assert ("dedup", {"duplicate": 2, "near_duplicate": 1}) in steps
    # a stage this report has never heard of goes before the sink
    f = build_funnel(5, {("dedupsvc", "x"): 1, ("coordinator", "over_target"): 1}, {}, [])
    assert [s.stage for s in f] == ["dedupsvc", "coordinator"] and f[-1].passed == 3


def test_png_renders_without_data(tmp_path):
    rep = build_report({"run_id": "empty", "state": "running"}, None, [])
    path = tmp_path / "empty.png"
    render_png(rep, str(path))
    w, h = png_size(path)
    assert w >= 800 and h >= 600


# ------------------------------------------------------------------------------ command on a real run


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A 12-record run of the whole pipeline (scripted engine); its NATS server stays up."""
    base = tmp_path_factory.mktemp("report")
    nats = EmbeddedNats(store_dir=base / "nats").start()
    try:
        store = str(base / "store")
        final, rows = asyncio.run(run_pipeline(nats.url, store, target=12))
        yield nats, store, final, rows
    finally:
        nats.close()


def run_report(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["report", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_report_matches_the_run_counters(real_run, capsys, tmp_path):
    _, store, final, rows = real_run
    # the counters as the run left them (outcomes still in flight at the end are counted after GetRun)
    saved = json.loads((Path(store) / "runs" / final.run_id / "status.json").read_text())
    png = tmp_path / "report.png"
    code, out, err = run_report(capsys, final.run_id, "--store", store, "--png", str(png), "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["run_id"] == final.run_id and rep["state"] == "completed"
    assert rep["accepted"] == final.accepted == saved["accepted"] == rep["rows"] == len(rows) == 12
    assert rep["funnel"][-1]["label"] == "accepted" and rep["funnel"][-1]["passed"] == 12
    # rejections per reason: as the run counted them, each in exactly one funnel step
    counted = saved["rejections"]
    assert rep["rejections"] == counted and counted.get("filter/non_english_script", 0) >= 1
    in_funnel = {f"{s['stage']}/{r}": n for s in rep["funnel"] for r, n in s["rejected"].items()}
    assert in_funnel == counted
    assert rep["funnel"][0]["entered"] == saved["finished"] == 12 + sum(counted.values())
    assert [s["label"] for s in rep["funnel"]][:2] == ["generated", "filter: length"]
    assert {"filter: language", "filter: dedup", "filter: solvability", "solved", "selected"} <= {
        s["label"] for s in rep["funnel"]}
    # the scripted solver gets one of 4 candidates wrong: difficulty 0.25, agreement 0.75
    assert rep["difficulty"]["n"] == 12 and rep["difficulty"]["mean"] == pytest.approx(0.25)
    assert rep["agreement"]["mean"] == pytest.approx(0.75)
    assert rep["lengths"]["question chars"]["n"] == 12 and rep["lengths"]["solution tokens"]["min"] > 0
    assert rep["accepted_per_s"] > 0 and rep["tokens"] == sum(final.tokens.values())
    assert {s["stage"] for s in rep["stages"]} >= {"questiongen", "filter", "solver"}
    assert rep["png"] == str(png) and f"report PNG: {png}" in err
    w, h = png_size(png)
    assert 1000 <= w <= 4000 and 600 <= h <= 3000 and png.stat().st_size > 20_000


def test_report_terminal_tables_and_default_png(real_run, capsys, tmp_path, monkeypatch):
    _, store, final, _ = real_run
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "160")
    code, out, err = run_report(capsys, final.run_id, "--store", store)
    assert code == 0, err
    for needle in ("funnel", "generated", "filter: language", "non_english_script", "accepted",
                   "difficulty / agreement histogram", "throughput", "accepted/s", "solution tokens"):
        assert needle in out
    png_size(tmp_path / f"runs_{final.run_id}_report.png")


def test_report_live_counters_from_nats(real_run, capsys):
    nats, store, final, _ = real_run
    code, out, err = run_report(capsys, final.run_id, "--store", store, "--nats-url", nats.url, "--json", "--no-png")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["png"] is None and rep["accepted"] == 12 and rep["funnel"][-1]["passed"] == 12
    saved = json.loads((Path(store) / "runs" / final.run_id / "status.json").read_text())
    assert rep["rejections"] == saved["rejections"] and rep["finished"] == saved["finished"]
    processed = {s["stage"]: s["processed"] for s in rep["stages"]}
    assert processed["questiongen"] >= rep["finished"] and processed["solver"] >= 12


def test_unknown_run_is_one_line_error(capsys, tmp_path):
    code, out, err = run_report(capsys, "no-such-run", "--store", str(tmp_path), "--no-png")
    assert code == 1 and out == ""
    assert "no-such-run" in err and "not found" in err and "Traceback" not in err
    code, _, err = run_report(capsys, "../etc", "--store", str(tmp_path))
    assert code == 1 and "invalid run_id" in err and "Traceback" not in err


def test_unwritable_png_is_one_line_error(real_run, capsys, tmp_path):
    _, store, final, _ = real_run
    code, _, err = run_report(capsys, final.run_id, "--store", store, "--png", str(tmp_path / "no" / "dir" / "r.png"))
    assert code == 1 and "cannot write the report PNG" in err and "Traceback" not in err


def test_report_dataclass_round_trips_to_json():
    rep = build_report(STATUS, None, [row(0)])
    assert isinstance(rep, Report)
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["funnel"][0]["rejected_total"] == 2 and d["rejections"]["coordinator/over_target"] == 1
