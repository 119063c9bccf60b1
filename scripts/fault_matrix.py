"""Repeat every fault scenario of libs/chaos.py and print the table of the reliability report:
fault x runs x items lost x duplicates x recovery time.

    .venv/bin/python scripts/fault_matrix.py --runs 3 [--json out.json] [--only kills,nats,s3,poison]

Each run starts its own processes, nats-server and (for the S3 scenario) SeaweedFS in a temp dir.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from libs.chaos import (
    scenario_kills,
    scenario_nats_restart,
    scenario_poison,
    scenario_s3_outage,
)

SCENARIOS = {
    "kills": lambda d, i: scenario_kills(d, seed=1000 + i),
    "nats": lambda d, i: scenario_nats_restart(d),
    "s3": lambda d, i: scenario_s3_outage(d),
    "poison": lambda d, i: scenario_poison(d),
}


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default=",".join(SCENARIOS))
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()
    console = Console(width=170)
    rows = []
    for name in args.only.split(","):
        results = []
        for i in range(args.runs):
            t0 = time.monotonic()
            with tempfile.TemporaryDirectory(prefix=f"sq-fault-{name}-") as d:
                res = await SCENARIOS[name](Path(d), i)
            results.append(res)
            rep = res.report
            console.print(f"{name} run {i + 1}/{args.runs}: {res.faults} fault(s), admitted {rep.admitted}, "
                          f"lost {rep.lost}, duplicates {len(rep.duplicates)}, recovery {res.recovery_s}, "
                          f"{'OK' if rep.ok else rep.problems} ({time.monotonic() - t0:.0f}s) {res.detail}")  # fmt: skip
        rec = [r for res in results for r in res.recovery_s]
        rows.append({
            "fault": results[0].fault, "runs": len(results), "faults": sum(r.faults for r in results),
            "items": sum(r.report.admitted for r in results),
            "lost": sum(r.report.lost for r in results),
            "duplicates": sum(len(r.report.duplicates) for r in results),
            "audits_ok": sum(r.report.ok for r in results),
            "recovery_median_s": round(statistics.median(rec), 2) if rec else None,
            "recovery_max_s": round(max(rec), 2) if rec else None,
        })  # fmt: skip
    t = Table(title="fault injection (real processes, nats-server, SeaweedFS S3)")
    for col in ("fault or bad input", "runs", "faults", "items", "lost", "duplicates", "audit OK",
                "recovery median (s)", "recovery max (s)"):  # fmt: skip
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(r["fault"], str(r["runs"]), str(r["faults"]), str(r["items"]), str(r["lost"]), str(r["duplicates"]),
                  f"{r['audits_ok']}/{r['runs']}", str(r["recovery_median_s"] or "-"), str(r["recovery_max_s"] or "-"))  # fmt: skip
    console.print(t)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0 if all(r["audits_ok"] == r["runs"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
