"""benchmarks/peer.py without a model: the job spec, the peer's selection rule and its time
accounting, the result parsing of a child process."""

from __future__ import annotations

import argparse
import json
import sys

import pytest

from benchmarks import peer


def test_job_spec_follows_scalequest_run_defaults():
    spec = peer.job_spec(argparse.Namespace(questions=8, n_candidates=4, mode=None))
    assert spec["questions"] == 8 and spec["n_candidates"] == 4
    assert spec["mode"] == "instructed" and spec["solver_prompt"] == "one_shot"
    assert spec["question_sampling"] == {"temperature": 1.0, "top_p": 0.99, "max_tokens": 256}
    assert spec["solution_sampling"] == {"temperature": 0.7, "top_p": 0.95, "max_tokens": 512}
    assert peer.job_spec(argparse.Namespace(questions=8, n_candidates=2, mode="scratch"))["mode"] == "scratch"


def test_peer_command_carries_the_job():
    spec = peer.job_spec(argparse.Namespace(questions=8, n_candidates=4, mode=None))
    cmd = peer.peer_cmd(spec, "/m", argparse.Namespace(peer_batch_size=32, peer_load_groups="together"))
    args = dict(zip(cmd[2::2], cmd[3::2]))
    assert args["--model"] == "/m" and args["--questions"] == "8" and args["--n-candidates"] == "4"
    assert args["--question-top-p"] == "0.99" and args["--solution-max-tokens"] == "512"
    assert args["--solver-prompt"] == "one_shot" and args["--batch-size"] == "32"


def test_choose_solution_majority_then_agreement():
    chosen = peer.choose_solution(["so \\boxed{7}", "no box", "\\boxed{1/2}", "thus \\boxed{7.0}"])
    assert chosen is not None
    assert chosen["answers"] == ["7", "", "1/2", "7.0"]
    assert chosen["selected"] == 0 and chosen["answer"] == "7" and chosen["agreement"] == pytest.approx(0.5)


def test_choose_solution_rejects_when_no_answer():
    assert peer.choose_solution(["no box", None, "\\boxed{"]) is None


def test_interval_union_merges_and_clips():
    assert peer.interval_union([]) == 0
    assert peer.interval_union([(0, 2), (1, 3), (5, 6)]) == pytest.approx(4)
    assert peer.interval_union([(0, 2), (1, 3), (5, 6)], lo=1, hi=5.5) == pytest.approx(2.5)


def test_peer_times_takes_loading_out_of_the_run():
    # two engines loading together, then work; a third load in the middle (sequential groups)
    events = [
        {"kind": "load", "start": 1, "end": 5},
        {"kind": "load", "start": 2, "end": 6},
        {"kind": "generate", "start": 7, "end": 10},
        {"kind": "load", "start": 10, "end": 12},
        {"kind": "generate", "start": 12, "end": 20},
        {"kind": "keep", "start": 10, "end": 10},
        {"kind": "select", "start": 20.5, "end": 20.5},
    ]
    t = peer.peer_times(events, t_start=0, t_end=24)
    assert t["load_seconds"] == pytest.approx(7)
    assert t["run_seconds"] == pytest.approx(20.5 - 7 - 2)
    assert t["startup_seconds"] == pytest.approx(7 - 5)
    assert t["teardown_seconds"] == pytest.approx(24 - 20.5)
    assert t["pipeline_seconds"] == pytest.approx(24)


def test_rates_and_ratio():
    r = {"accepted": 8, "questions_generated": 16, "generated_tokens": 4000, "run_seconds": 40.0}
    got = peer.rates(r, total=80.0)
    assert got == {"accepted_per_s": 0.2, "accepted_per_s_total": 0.1, "questions_per_s": 0.4, "tokens_per_s": 100.0}
    assert peer.rates(None, 1.0) == {} and peer.rates({"run_seconds": 0}, 1.0) == {}
    assert peer.ratio(0.2, 0.1) == pytest.approx(2) and peer.ratio(None, 1) is None and peer.ratio(1, 0) is None


def test_run_child_reads_the_last_json_line(tmp_path):
    code = "import json; print('noise {'); print(json.dumps({'accepted': 3})); print('bye')"
    result, wall, rc = peer.run_child([sys.executable, "-c", code], tmp_path / "log", 30, {})
    assert result == {"accepted": 3} and rc == 0 and wall > 0
    assert "bye" in (tmp_path / "log").read_text()


def test_run_child_kills_on_timeout(tmp_path):
    result, wall, rc = peer.run_child([sys.executable, "-c", "import time; time.sleep(30)"], tmp_path / "log", 0.5, {})
    assert result is None and rc != 0 and wall < 20
    assert "killed" in (tmp_path / "log").read_text()


def test_main_json_parsing_ignores_broken_lines(tmp_path):
    code = f"print('{{broken'); print({json.dumps(json.dumps({'a': 1}))})"
    result, _, _ = peer.run_child([sys.executable, "-c", code], tmp_path / "log", 30, {})
    assert result == {"a": 1}
