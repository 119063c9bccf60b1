"""Side-by-side A/B of the end-to-end orchestration run: two commits, alternating, one machine.

This machine's speed drifts by tens of percent within an hour and between sessions, so a
before/after is only meaningful as pairs measured back to back. For each of ``--pairs`` pairs
this runs ``benchmarks.orchestration --steps e2e --repeats 1`` once from a checkout of
``--before`` and once from ``--after`` (which one goes first alternates), each in its own
process and with its own code (the service processes start from that checkout), and reports
per pair and as medians: items/s, CPU milliseconds per item of every process, the ratios.

Checkouts are ``git worktree``s made under a temporary folder and removed at the end; ``--after``
defaults to the working tree itself (uncommitted changes included). Both sides use this
interpreter and its installed packages.

    python -m benchmarks.ab --before ece6662 --pairs 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import RESULTS_DIR, median, table, write_result

NAME = "ab"
REPO = Path(__file__).resolve().parents[1]


def _rev(ref: str) -> str:
    return subprocess.run(["git", "rev-parse", "--short", ref], cwd=REPO, check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip


def _side(checkout: Path, args, out: Path) -> dict:
    """One end-to-end run from ``checkout``: its figures, CPU per item in ms."""
    cmd = [sys.executable, "-m", "benchmarks.orchestration", "--steps", "e2e", "--repeats", "1",
           "--filter-variants", "--items", str(args.items), "--out", str(out), *args.extra]  # fmt: skip
    subprocess.run(cmd, cwd=checkout, check=True, stdout=subprocess.DEVNULL)
    e2e = json.loads(out.read_text())["results"]["repeats"][0]["e2e"]["default"]
    n = e2e["finished"] or 1
    cpu_ms = {p: round(s * 1000 / n, 4) for p, s in e2e["cpu_seconds"].items()}
    return {"items_per_s": round(e2e["items_per_s"]), "finished": e2e["finished"], "accepted": e2e["accepted"],
            "cpu_ms": cpu_ms, "cpu_total": round(sum(cpu_ms.values()), 4),
            "util": round(e2e["cpu_utilization"], 3)}  # fmt: skip


def run(args) -> dict:
    before_rev = _rev(args.before)
    after_rev = _rev(args.after) if args.after else f"{_rev('HEAD')}+worktree"
    pairs = []
    with tempfile.TemporaryDirectory(prefix="sq-ab-") as tmp:
        tmpd = Path(tmp)
        checkouts = {}
        made = []
        for side, ref in (("before", args.before), ("after", args.after)):
            if ref is None:
                checkouts[side] = REPO
                continue
            wt = tmpd / side
            subprocess.run(["git", "worktree", "add", "--detach", str(wt), ref], cwd=REPO, check=True,
                           capture_output=True)  # fmt: skip
            made.append(wt)
            checkouts[side] = wt
        try:
            for k in range(args.pairs):
                order = ("before", "after") if k % 2 == 0 else ("after", "before")
                pair: dict = {}
                for side in order:
                    print(f"[pair {k + 1}/{args.pairs}] {side} ...", flush=True)
                    pair[side] = _side(checkouts[side], args, tmpd / f"{side}-{k}.json")
                    print(f"    {pair[side]['items_per_s']} items/s, {pair[side]['cpu_total']:.3f} ms CPU/item", flush=True)
                pair["items_ratio"] = round(pair["after"]["items_per_s"] / pair["before"]["items_per_s"], 3)
                pair["cpu_ratio"] = round(pair["after"]["cpu_total"] / pair["before"]["cpu_total"], 3)
                pairs.append(pair)
        finally:
            for wt in made:
                subprocess.run(["git", "worktree", "remove", "--force", str(wt)], cwd=REPO, capture_output=True, check=False)
    return {"before_commit": before_rev, "after_commit": after_rev, "items": args.items, "pairs": pairs,
            "summary": summarize(pairs)}  # fmt: skip


def summarize(pairs: list[dict]) -> dict:
    procs = list(pairs[0]["before"]["cpu_ms"])
    return {
        "items_ratio": median(p["items_ratio"] for p in pairs),
        "items_ratio_range": [min(p["items_ratio"] for p in pairs), max(p["items_ratio"] for p in pairs)],
        "cpu_ratio": median(p["cpu_ratio"] for p in pairs),
        "cpu_ratio_range": [min(p["cpu_ratio"] for p in pairs), max(p["cpu_ratio"] for p in pairs)],
        **{side: {"items_per_s": median(p[side]["items_per_s"] for p in pairs),
                  "cpu_ms": {q: median(p[side]["cpu_ms"][q] for p in pairs) for q in procs},
                  "cpu_total": median(p[side]["cpu_total"] for p in pairs)}
           for side in ("before", "after")},
    }  # fmt: skip


def report(res: dict) -> None:
    s, pairs = res["summary"], res["pairs"]
    b, a = res["before_commit"], res["after_commit"]
    print()
    print(table(["pair", f"{b} items/s", f"{a} items/s", "items/s ratio", "CPU/item ratio"],
                [[k + 1, p["before"]["items_per_s"], p["after"]["items_per_s"], f"{p['items_ratio']:.2f}",
                  f"{p['cpu_ratio']:.2f}"] for k, p in enumerate(pairs)],
                title=f"End to end, {res['items']} items, alternating pairs"))  # fmt: skip
    print()
    print(table(["process", f"CPU ms/item, {b}", f"CPU ms/item, {a}"],
                [[q, f"{s['before']['cpu_ms'][q]:.3f}", f"{s['after']['cpu_ms'][q]:.3f}"] for q in s["before"]["cpu_ms"]]
                + [["total", f"{s['before']['cpu_total']:.3f}", f"{s['after']['cpu_total']:.3f}"]]))  # fmt: skip
    print()
    lo, hi = s["items_ratio_range"]
    clo, chi = s["cpu_ratio_range"]
    print(f"items/s x{s['items_ratio']:.2f} ({lo:.2f}-{hi:.2f}), CPU per item x{s['cpu_ratio']:.2f} "
          f"({clo:.2f}-{chi:.2f}), medians of {len(pairs)} pairs")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{NAME}", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--out", type=Path, default=RESULTS_DIR / f"{NAME}.json", help="JSON result file")
    p.add_argument("--before", required=True, help="git ref of the 'before' side")
    p.add_argument("--after", default=None, help="git ref of the 'after' side (default: this working tree)")
    p.add_argument("--pairs", type=int, default=5, help="alternating before/after pairs")
    p.add_argument("--items", type=int, default=20_000, help="tasks admitted in each run")
    p.add_argument("extra", nargs="*", help="more arguments for benchmarks.orchestration (after --)")
    args = p.parse_args(argv)
    res = run(args)
    report(res)
    write_result(args.out, NAME, args, res)


if __name__ == "__main__":
    main()
