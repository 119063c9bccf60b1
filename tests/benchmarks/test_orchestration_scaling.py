"""The orchestration and scaling benchmarks' own logic (no timing is asserted anywhere), and
one tiny end-to-end run of each command (marked slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks import common, scaling
from benchmarks.orchestration import summarize_profile

REPO = Path(__file__).resolve().parents[2]


def test_profile_summary_counts_main_thread_samples_by_innermost_known_frame(tmp_path):
    raw = tmp_path / "p.txt"
    main = "_run_module_as_main (<frozen runpy>:198);main (scalequest_cli/main.py:1)"
    raw.write_text(
        f"{main};BaseEventLoop._run_once (asyncio/base_events.py:1);EpollSelector.select (selectors.py:468) 6\n"
        f"{main};StageWorker._loop (libs/queue/worker.py:1);Client.request (nats/aio/client.py:1) 3\n"
        f"{main};FilterStage.check (services/filter/stage.py:1) 1\n"
        "Thread._bootstrap (threading.py:1);_worker (concurrent/futures/thread.py:81) 50\n"
    )
    shares = summarize_profile(raw)
    assert shares == {"idle (waiting in select)": 0.6, "NATS client": 0.3, "stage logic": 0.1}


def test_scaling_bound_says_cpu_bound_or_not():
    args = SimpleNamespace(replicas=[1, 2, 4])
    cpu_bound = {"cpu": {"1": {"items_per_s": 100, "speedup": 1, "cpu_used": 0.5},
                         "2": {"items_per_s": 180, "speedup": 1.8, "cpu_used": 0.95},
                         "4": {"items_per_s": 185, "speedup": 1.85, "cpu_used": 0.97}}}  # fmt: skip
    assert "stops growing after 2 replicas (4 add nothing)" in scaling.bounds(cpu_bound, args)["cpu"]
    assert "CPU bound" in scaling.bounds(cpu_bound, args)["cpu"]
    growing = {"latency": {"1": {"items_per_s": 100, "speedup": 1, "cpu_used": 0.1},
                           "2": {"items_per_s": 200, "speedup": 2, "cpu_used": 0.2},
                           "4": {"items_per_s": 400, "speedup": 4, "cpu_used": 0.4}}}  # fmt: skip
    assert scaling.bounds(growing, args)["latency"].startswith("still growing at 4")
    other = {"latency": {"1": {"items_per_s": 100, "speedup": 1, "cpu_used": 0.1},
                         "2": {"items_per_s": 105, "speedup": 1.05, "cpu_used": 0.2},
                         "4": {"items_per_s": 104, "speedup": 1.04, "cpu_used": 0.2}}}  # fmt: skip
    assert "not CPU" in scaling.bounds(other, args)["latency"]


def test_table_and_spread():
    t = common.table(["a", "b"], [["x", 1234.5], ["yy", 0.5]])
    assert t.splitlines()[0] == "| a  | b     |" and "1,234" in t and "0.50" in t
    assert common.spread([3.0, 1.0, 2.0]) == "2.00 (1.00-3.00)"
    assert common.spread([]) == "-"


@pytest.mark.slow
@pytest.mark.parametrize(
    "module,args",
    [
        ("orchestration", ["--items", "60", "--stage-items", "40", "--raw-messages", "400", "--relay-items", "300",
                           "--filter-variants"]),
        ("scaling", ["--items", "40", "--replicas", "1", "2", "--engines", "cpu"]),
    ],
)
def test_benchmark_command_runs_and_writes_json(tmp_path, module, args):
    out = tmp_path / f"{module}.json"
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", "--repeats", "1", "--out", str(out), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == module and doc["machine"]["cores"] >= 1
    assert "|" in proc.stdout  # printed a table
    if module == "orchestration":
        e2e = doc["results"]["summary"]["e2e"]["default"]
        assert e2e["items_per_s"] > 0
        assert set(doc["results"]["summary"]["stages"]) == {"questiongen", "filter", "solver", "reward", "coordinator"}
        relay = doc["results"]["repeats"][0]["relay"]
        assert set(relay) == {"envelopes", "single messages"} and relay["envelopes"]["items"] == 300
        # every item went through all five pass-through stages; envelopes carried several each
        assert relay["envelopes"]["messages"]["coordinator"] < 300 <= relay["single messages"]["messages"]["filter"] * 3
    else:
        assert set(doc["results"]["summary"]["cpu"]) == {"1", "2"}


def test_e2e_only_runs_summarize_report_and_plot(tmp_path, capsys):
    """``--steps e2e`` (a quick A/B of two checkouts): no raw, relay or per-stage figures, and
    the summary, the printed report and the plot panel cope without them."""
    import argparse

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks import orchestration, plot

    e2e = {"items_per_s": 2000.0, "accepted_per_s": 900.0, "cpu_utilization": 0.9, "seconds": 10.0,
           "cpu_seconds": {"filter": 5.0, "nats-server": 2.0}}  # fmt: skip
    reps = [{"e2e": {"default": dict(e2e, items_per_s=v)}} for v in (1900.0, 2000.0, 2100.0)]
    summary = orchestration.summarize(reps, ["default"])
    assert summary["e2e"]["default"]["items_per_s"] == 2000.0 and "raw" not in summary and "hop_ratio" not in summary
    res = {"repeats": reps, "profile": {}, "summary": summary}
    orchestration.report(res, argparse.Namespace(items=20000, outstanding=2048))
    out = capsys.readouterr().out
    assert "2,000 (1,900-2,100)" in out and "Raw JetStream" not in out
    fig, ax = plt.subplots()
    plot.panel_orchestration(ax, {"results": res})
    assert [t.get_text() for t in ax.get_yticklabels()] == ["end to end (default)"]
    plt.close(fig)


def test_process_pipeline_replicas_are_checked(tmp_path):
    from libs.chaos import ProcessPipeline

    with pytest.raises(ValueError, match="single replica"):
        ProcessPipeline(tmp_path, replicas={"coordinator": 2})
    with pytest.raises(ValueError, match="replicas"):
        ProcessPipeline(tmp_path, replicas={"solvr": 2})
    assert ProcessPipeline(tmp_path, replicas={"solver": 4}).replicas["solver"] == 4


def _side(items_per_s: float, filter_ms: float) -> dict:
    return {"items_per_s": items_per_s, "finished": 20000, "accepted": 9145, "util": 0.9,
            "cpu_ms": {"filter": filter_ms, "nats-server": 0.1}, "cpu_total": filter_ms + 0.1}  # fmt: skip


def test_ab_summary_takes_medians_of_pair_ratios(capsys):
    from benchmarks import ab

    pairs = []
    for before, after in ((1000, 1200), (900, 1170), (1100, 1210)):
        p = {"before": _side(before, 0.4), "after": _side(after, 0.3)}
        p["items_ratio"] = round(after / before, 3)
        p["cpu_ratio"] = round(p["after"]["cpu_total"] / p["before"]["cpu_total"], 3)
        pairs.append(p)
    s = ab.summarize(pairs)
    assert s["items_ratio"] == 1.2 and s["items_ratio_range"] == [1.1, 1.3]
    assert s["cpu_ratio"] == 0.8 and s["before"]["items_per_s"] == 1000 and s["after"]["cpu_ms"]["filter"] == 0.3
    ab.report({"before_commit": "aaa", "after_commit": "bbb", "items": 20000, "pairs": pairs, "summary": s})
    out = capsys.readouterr().out
    assert "items/s x1.20 (1.10-1.30), CPU per item x0.80 (0.80-0.80), medians of 3 pairs" in out
    assert "| filter      | 0.400" in out


@pytest.mark.slow
def test_ab_command_runs_two_checkouts(tmp_path):
    out = tmp_path / "ab.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.ab", "--before", "HEAD", "--pairs", "1", "--items", "60",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())["results"]
    (pair,) = res["pairs"]
    assert pair["before"]["finished"] == pair["after"]["finished"] == 60
    assert res["after_commit"].endswith("+worktree") and "items/s x" in proc.stdout
    listed = subprocess.run(["git", "worktree", "list"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "sq-ab-" not in listed  # its checkouts are removed


def test_plot_names_the_machine_of_each_panel_when_they_differ(tmp_path, monkeypatch):
    """Results measured on different machines or days (this machine kind's speed varies 2x)
    are drawn with the machine and date in every panel's title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks import plot

    e2e = {"items_per_s": 2000.0, "accepted_per_s": 900.0, "cpu_utilization": 0.9, "seconds": 10.0, "cpu_seconds": {}}
    orch = {"machine": {"cpu": "Intel(R) Xeon(R) Processor", "date": "2026-12-02T19:00", "cores": 2},
            "results": {"summary": {"e2e": {"default": e2e}}}}  # fmt: skip
    scal = {"machine": {"cpu": "AMD EPYC", "date": "2026-11-25T04:55", "cores": 2},
            "results": {"summary": {"cpu": {"1": {"items_per_s": 100}, "2": {"items_per_s": 180}}}}}  # fmt: skip
    (tmp_path / "orchestration.json").write_text(json.dumps(orch))
    (tmp_path / "scaling.json").write_text(json.dumps(scal))
    titles = {}
    monkeypatch.setattr(plt.Figure, "savefig", lambda fig, *a, **k: titles.update(
        sup=fig._suptitle.get_text(), axes=[ax.get_title() for ax in fig.axes if ax.get_title()]))
    monkeypatch.setattr(sys, "argv", ["plot", "--results", str(tmp_path), "--out", str(tmp_path / "p.png")])
    plot.main()
    assert "machine and date per panel" in titles["sup"]
    assert titles["axes"] == ["Orchestration, zero-cost engine\n(Intel Xeon, 2026-12-02)",
                              "Solver replica scaling\n(AMD EPYC, 2026-11-25)"]  # fmt: skip
