"""Terminal views: live per-stage progress bars and the end-of-run summary."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

STAGE_ROWS = (
    ("admitted", "tasks admitted"),
    ("questiongen", "generated"),
    ("filter", "filtered"),
    ("solver", "solved"),
    ("reward", "scored"),
    ("accepted", "accepted"),
)


class ProgressView:
    """Per-stage bars driven by RunStatus snapshots (dicts or protobufs)."""

    def __init__(self, console: Console, target: int) -> None:
        self.console = console
        self.target = target
        self.progress = Progress(
            TextColumn("{task.description:>15}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.tasks = {}
        self.t0 = time.monotonic()

    def __enter__(self):
        self.progress.__enter__()
        for key, label in STAGE_ROWS:
            self.tasks[key] = self.progress.add_task(label, total=self.target if key == "accepted" else None, rate="")
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def update(self, st) -> None:
        elapsed = max(time.monotonic() - self.t0, 1e-6)
        admitted = st.admitted
        vals = {
            "admitted": admitted,
            "questiongen": st.processed.get("questiongen", 0),
            "filter": st.processed.get("filter", 0),
            "solver": st.processed.get("solver", 0),
            "reward": st.processed.get("reward", 0),
            "accepted": st.accepted,
        }
        for key, v in vals.items():
            total = self.target if key == "accepted" else max(admitted, 1)
            self.progress.update(self.tasks[key], completed=v, total=total, rate=f"{v / elapsed:5.2f}/s")


def summary_table(st, wall: float) -> Table:
    t = Table(title=f"run {st.run_id}: {st.state}", show_header=True)
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("accepted", f"{st.accepted} / {st.target}")
    t.add_row("tasks admitted", str(st.admitted))
    t.add_row("finished (accepted + rejected)", str(st.finished))
    for r in st.rejections:
        t.add_row(f"rejected: {r.stage}/{r.reason}", str(r.count))
    tokens = sum(st.tokens.values())
    for stage, n in sorted(st.tokens.items()):
        t.add_row(f"tokens: {stage}", str(n))
    t.add_row("generated tokens/s (all stages)", f"{tokens / max(wall, 1e-6):.1f}")
    t.add_row("shards", str(st.shards))
    t.add_row("wall time", f"{wall:.1f} s")
    return t


def samples_table(rows: list[dict], k: int = 3) -> Table:
    if rows and "chosen" in rows[0]:
        return pairs_table(rows, k)
    t = Table(title="sample records", show_lines=True)
    t.add_column("question", ratio=3)
    t.add_column("answer")
    t.add_column("agree")
    t.add_column("selection")
    for r in rows[:k]:
        t.add_row(r["question"][:400], r["answer"][:40], f"{r['agreement']:.2f}", r["selection_reason"][:60])
    return t


def pairs_table(rows: list[dict], k: int = 3) -> Table:
    """Sample QPO preference pairs: the rewrite goal, the original (rejected) and the rewrite (chosen)."""
    t = Table(title="sample preference pairs", show_lines=True)
    t.add_column("goal")
    t.add_column("rejected (generated)", ratio=1)
    t.add_column("chosen (rewritten)", ratio=1)
    for r in rows[:k]:
        t.add_row(r["goal"], r["rejected"][:300], r["chosen"][:300])
    return t
