"""What every benchmark shares: machine description, medians over repeats, tables, JSON output.

A benchmark is a command (``python -m benchmarks.<name>``) that prints tables and writes one JSON
document (``--out``, default ``benchmarks/results/<name>.json``). Figures are medians of
``--repeats`` runs; ratios are computed inside one run (both sides measured back to back on the
same machine state), then the median of the ratios is reported. Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, Any]:
    """Where the figures come from (goes into every JSON document)."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    commit = ""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False,
                                cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gib": mem_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": commit,
    }


def median(values: Iterable[float]) -> float:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else float("nan")


def spread(values: Sequence[float]) -> str:
    """``median (min-max)`` for a table cell."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    m = statistics.median(vals)
    if len(vals) == 1:
        return fmt(m)
    return f"{fmt(m)} ({fmt(min(vals))}-{fmt(max(vals))})"


def fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], title: str = "") -> str:
    """A GitHub-flavoured markdown table (readable in a terminal and pasteable into docs)."""
    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    out = []
    if title:
        out.append(f"\n{title}")
    out.append("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    return "\n".join(out)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def peak_rss_mib(pid: int | None = None) -> float:
    """VmHWM (peak resident set) of a process in MiB; this process by default."""
    from libs.chaos import proc_memory_kb

    return proc_memory_kb(pid or os.getpid())[1] / 1024


def base_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=(doc or "").split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--repeats", type=int, default=3, help="runs per configuration; medians are reported")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / f"{name}.json", help="JSON result file")
    return p


def write_result(path: Path, name: str, args: argparse.Namespace | dict, results: dict[str, Any]) -> Path:
    """One JSON document per benchmark: machine, command, arguments, results."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "machine": machine(),
        "command": " ".join([Path(sys.executable).name, "-m", f"benchmarks.{name}", *sys.argv[1:]]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in (vars(args) if not isinstance(args, dict) else args).items()},
        "results": results,
    }
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"\nwrote {path}")
    return path
