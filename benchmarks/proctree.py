"""A process and its descendants, read from /proc: names, CPU seconds and memory, and a
sampler that follows a process tree while it runs (children come and go: vLLM's engine core,
nats-server). Linux only, like the rest of the benchmarks."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from benchmarks.common import cpu_seconds
from libs.chaos import proc_memory_kb


def _parents() -> dict[int, int]:
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
                out[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return out


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    return children


def descendants(pid: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """`pid` and every process below it (breadth first)."""
    children = _children() if children is None else children
    out, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(sorted(children.get(p, [])))
    return out


def process_name(pid: int) -> str:
    """A short label: nats-server, vllm engine core / worker (their process titles), the
    scalequest command, else the executable."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"
    if "nats-server" in cmd or comm == "nats-server":
        return "nats-server"
    if "EngineCore" in cmd or "EngineCore" in comm:
        return "vllm engine core"
    if "Worker" in cmd or "Worker" in comm:
        return "vllm worker"
    if "resource_tracker" in cmd:
        return "multiprocessing resource tracker"
    if "scalequest_cli.main" in cmd or "/scalequest " in cmd:
        args = cmd.split("scalequest_cli.main", 1)[-1].split()
        return "scalequest " + " ".join(args[:2])
    if "-m benchmarks." in cmd:
        return "benchmark: " + cmd.split("-m benchmarks.", 1)[1].split()[0]
    if comm.startswith("python"):
        parts = cmd.split()
        for flag in ("-m", "-c"):
            if flag in parts[:-1]:
                i = parts.index(flag)
                return f"python {flag} " + " ".join(parts[i + 1 : i + 4])[:60]
    return comm or cmd[:60]


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds so far of `pid` and each descendant: {pid: (name, seconds)}."""
    return {p: (process_name(p), cpu_seconds(p)) for p in descendants(pid)}


def cpu_delta(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds spent between two `tree_cpu` readings, summed by process name (processes
    that started in between count from zero; ones that ended in between are lost)."""
    out: dict[str, float] = {}
    for pid, (name, secs) in after.items():
        prev = before.get(pid, (name, 0.0))[1]
        out[name] = out.get(name, 0.0) + max(0.0, secs - prev)
    return out


@dataclass
class ProcPeak:
    pid: int
    name: str
    group: str
    peak_rss_kb: int = 0  # VmHWM, the last reading while the process was alive


@dataclass
class TreeSampler:
    """Follows process trees in a background thread, every `interval` s.

    roots: {group: pid}, or a callable returning it at each sample (processes started later);
    every descendant of a root belongs to its group. Keeps per process the
    last VmHWM read (the kernel's own peak RSS, which never decreases, so the last reading is
    the peak unless the process grew after it and exited before the next sample), and per
    group the highest sum of current VmRSS and of PSS (proportional set size: shared pages
    split between the processes sharing them) seen at one sample. Sum of peaks >= peak of sums:
    the processes need not peak at the same moment, and RSS counts shared pages in each."""

    roots: dict[str, int] | Callable[[], dict[str, int]]
    interval: float = 0.25
    pss: bool = True
    procs: dict[int, ProcPeak] = field(default_factory=dict)
    peak_sum_rss_kb: dict[str, int] = field(default_factory=dict)
    peak_sum_pss_kb: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        children = _children()
        roots = self.roots() if callable(self.roots) else self.roots
        for group, root in list(roots.items()):
            rss_sum = pss_sum = 0
            for pid in descendants(root, children):
                rss, hwm = proc_memory_kb(pid)
                if not hwm:
                    continue
                peak = self.procs.get(pid)
                if peak is None:
                    peak = self.procs[pid] = ProcPeak(pid, process_name(pid), group)
                else:  # the last name seen: a child has its parent's until exec / its process title
                    peak.name = process_name(pid)
                peak.peak_rss_kb = max(peak.peak_rss_kb, hwm)
                rss_sum += rss
                if self.pss:
                    pss_sum += _pss_kb(pid)
            self.peak_sum_rss_kb[group] = max(self.peak_sum_rss_kb.get(group, 0), rss_sum)
            self.peak_sum_pss_kb[group] = max(self.peak_sum_pss_kb.get(group, 0), pss_sum)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            self.sample()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - t0)))

    def start(self) -> Self:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def group(self, group: str) -> dict:
        """Per-process peaks (MiB) of one group, their sum, and the sampled peak sums."""
        procs = sorted((p for p in self.procs.values() if p.group == group), key=lambda p: p.pid)
        return {
            "processes": [{"pid": p.pid, "name": p.name, "peak_rss_mib": round(p.peak_rss_kb / 1024, 1)} for p in procs],
            "sum_of_peaks_mib": round(sum(p.peak_rss_kb for p in procs) / 1024, 1),
            "peak_sum_rss_mib": round(self.peak_sum_rss_kb.get(group, 0) / 1024, 1),
            "peak_sum_pss_mib": round(self.peak_sum_pss_kb.get(group, 0) / 1024, 1) if self.pss else None,
        }
