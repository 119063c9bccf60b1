"""`scalequest report`: what a run produced and what it cost.

:func:`build_report` turns a run's status (``runs/<id>/status.json`` or the live KV view), its
manifest and its accepted rows into a :class:`Report` (pure: no I/O, so it is unit-testable);
:func:`report_tables` renders it for the terminal in the style of the end-of-run summary and
:func:`render_png` draws it as one PNG (matplotlib's Agg canvas, no display needed).

The funnel is derived from the sink's outcome counters: every finished task ends in exactly
one outcome, accepted or rejected as ``<stage>/<reason>``, so starting from the finished tasks
and subtracting each stage's rejections in pipeline order gives what survived every step, and
the last step equals the accepted count. The filter stage is split into its checks (they run in
order and stop at the first failure); which check a reason belongs to is the filter's own
knowledge (:data:`FILTER_CHECKS`), and a reason not listed there shows as a check of its own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.table import Table

from services.filter.checks import CHECK_REASONS

#: Pipeline order of the stages that end tasks; the coordinator's sink is last (over_target).
STAGE_ORDER = ("questiongen", "filter", "solver", "reward", "coordinator")
SINK_STAGE = "coordinator"

#: What the items that pass each stage are called in the funnel.
STAGE_PASSED = {
    "questiongen": "generated",
    "filter": "passed filter",
    "solver": "solved",
    "reward": "selected",
    "coordinator": "accepted",
}

#: Filter checks in the order services/filter/stage.py runs them, with the reasons each one
#: ends an item with. Only used to group filter rejections; unknown reasons get a step each.
FILTER_CHECKS: tuple[tuple[str, tuple[str, ...]], ...] = CHECK_REASONS

#: Text columns whose lengths are reported (synthesis records, then QPO preference pairs).
TEXT_FIELDS = ("question", "solution", "rejected", "chosen")

UNIT_BINS = 10  # difficulty and agreement are shares in [0, 1]
LENGTH_BINS = 12


# ---------------------------------------------------------------------------------- data


@dataclass
class FunnelStep:
    """One step of the funnel: `entered` items reached it, `rejected` (by reason) ended there."""

    stage: str
    check: str  # filter check name; "" for a whole stage
    label: str
    entered: int
    rejected: dict[str, int]
    passed: int

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


@dataclass
class Histogram:
    edges: list[float]  # len(counts) + 1 bin edges; the last bin includes its right edge
    counts: list[int]


@dataclass
class Distribution:
    n: int
    min: float
    p50: float
    mean: float
    p90: float
    max: float
    hist: Histogram


@dataclass
class StageThroughput:
    stage: str
    processed: int
    tokens: int
    items_per_s: float
    tokens_per_s: float


@dataclass
class Report:
    run_id: str
    state: str
    run_type: str
    target: int
    admitted: int
    finished: int
    accepted: int
    rows: int  # accepted rows found in the shards
    shards: int
    in_flight: int  # admitted tasks without an outcome when the counters were taken
    started_at: float
    ended_at: float
    wall_seconds: float
    funnel: list[FunnelStep]
    rejections: dict[str, int]  # "<stage>/<reason>" -> n
    difficulty: Distribution | None
    agreement: Distribution | None
    predicted_difficulty: Distribution | None
    lengths: dict[str, Distribution]  # "question chars", "solution tokens", ...
    accepted_per_s: float
    tokens: int
    tokens_per_s: float
    tokens_per_accepted: float
    stages: list[StageThroughput]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for step, s in zip(d["funnel"], self.funnel):
            step["rejected_total"] = s.rejected_total
        return d


# ---------------------------------------------------------------------------------- computations


def histogram(values: list[float], lo: float, hi: float, bins: int) -> Histogram:
    """Equal-width bins over [lo, hi]; values outside are clamped into the end bins."""
    if hi <= lo:
        hi = lo + 1.0
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in values:
        i = int((v - lo) / width) if v < hi else bins - 1
        counts[min(max(i, 0), bins - 1)] += 1
    return Histogram(edges=[lo + i * width for i in range(bins + 1)], counts=counts)


def _quantile(sorted_vals: list[float], q: float) -> float:
    """Linear interpolation between closest ranks."""
    pos = (len(sorted_vals) - 1) * q
    i = math.floor(pos)
    j = min(i + 1, len(sorted_vals) - 1)
    return sorted_vals[i] + (sorted_vals[j] - sorted_vals[i]) * (pos - i)


def distribution(values: list[float], *, unit: bool = False) -> Distribution | None:
    """Summary statistics and a histogram (over [0, 1] for shares, else over the data's range)."""
    vals = sorted(float(v) for v in values if v is not None and math.isfinite(float(v)))
    if not vals:
        return None
    if unit:
        hist = histogram(vals, 0.0, 1.0, UNIT_BINS)
    else:
        lo, hi = math.floor(vals[0]), math.ceil(vals[-1])
        hist = histogram(vals, lo, max(hi, lo + 1), LENGTH_BINS)
    return Distribution(
        n=len(vals), min=vals[0], p50=_quantile(vals, 0.5), mean=sum(vals) / len(vals),
        p90=_quantile(vals, 0.9), max=vals[-1], hist=hist,
    )


def parse_rejections(raw: Mapping[str, int] | Iterable) -> dict[tuple[str, str], int]:
    """``{"stage/reason": n}`` (status.json) or RunStatus ``rejections`` -> ``{(stage, reason): n}``."""
    out: dict[tuple[str, str], int] = {}
    if isinstance(raw, Mapping):
        for key, n in raw.items():
            stage, _, reason = str(key).partition("/")
            if not reason:  # a key without a stage: attribute it to an unknown stage
                stage, reason = "unknown", stage
            out[(stage, reason)] = out.get((stage, reason), 0) + int(n)
    else:
        for r in raw:
            out[(r.stage, r.reason)] = out.get((r.stage, r.reason), 0) + int(r.count)
    return out


def _merge_order(observed: list[str], default: list[str]) -> list[str]:
    """`observed` as is, each default name it lacks inserted after its default predecessor."""
    out = list(observed)
    for i, name in enumerate(default):
        if name in out:
            continue
        prev = next((default[j] for j in range(i - 1, -1, -1) if default[j] in out), None)
        out.insert(out.index(prev) + 1 if prev else 0, name)
    return out


def filter_steps(reasons: Mapping[str, int], observed_checks: list[str]) -> list[tuple[str, dict[str, int]]]:
    """Filter rejections grouped into checks in run order: (check, {reason: n}). A check shows
    when it rejected something or when accepted records carry its verdict."""
    check_of = {r: c for c, rs in FILTER_CHECKS for r in rs}
    order = _merge_order(observed_checks, [c for c, _ in FILTER_CHECKS])
    grouped: dict[str, dict[str, int]] = {}
    for reason, n in sorted(reasons.items()):
        grouped.setdefault(check_of.get(reason, reason), {})[reason] = n
    order += [c for c in grouped if c not in order]
    return [(c, grouped.get(c, {})) for c in order if c in grouped or c in observed_checks]


def _stage_order(stages: Iterable[str]) -> list[str]:
    """Known stages in pipeline order; others (a newer service) just before the sink."""
    known = [s for s in STAGE_ORDER if s != SINK_STAGE]
    extra = sorted(s for s in set(stages) if s not in STAGE_ORDER)
    return known + extra + [SINK_STAGE]


def build_funnel(
    finished: int,
    rejections: Mapping[tuple[str, str], int],
    processed: Mapping[str, int],
    observed_checks: list[str],
) -> list[FunnelStep]:
    """Finished tasks minus each step's rejections, in pipeline order (see the module doc)."""
    by_stage: dict[str, dict[str, int]] = {}
    for (stage, reason), n in rejections.items():
        by_stage.setdefault(stage, {})[reason] = n
    steps: list[FunnelStep] = []
    left = finished
    for stage in _stage_order(by_stage):
        ran = stage in by_stage or processed.get(stage, 0) > 0 or stage == SINK_STAGE
        if not ran:
            continue  # e.g. QPO runs end at questiongen: no filter/solver/reward steps
        if stage == "filter":
            for check, rej in filter_steps(by_stage.get(stage, {}), observed_checks):
                n = sum(rej.values())
                steps.append(FunnelStep(stage, check, f"filter: {check}", left, rej, left - n))
                left -= n
            continue
        rej = dict(sorted(by_stage.get(stage, {}).items()))
        n = sum(rej.values())
        steps.append(FunnelStep(stage, "", STAGE_PASSED.get(stage, f"passed {stage}"), left, rej, left - n))
        left -= n
    return steps


def _observed_checks(verdicts: Any) -> list[str]:
    out: list[str] = []
    for v in verdicts or []:
        c = v.get("check") if isinstance(v, Mapping) else None
        if c and c not in out:
            out.append(c)
    return out


def _selected_tokens(row: Mapping[str, Any]) -> int | None:
    cands = row.get("candidates")
    sel = row.get("selected")
    if not cands or sel is None or not 0 <= int(sel) < len(cands):
        return None
    n = cands[int(sel)].get("num_tokens") if isinstance(cands[int(sel)], Mapping) else None
    return int(n) if n is not None else None


def build_report(
    status: Mapping[str, Any],
    manifest: Mapping[str, Any] | None,
    rows: Iterable[Mapping[str, Any]],
    *,
    now: float | None = None,
) -> Report:
    """A run's report from its status dict (status.json / RunManager.status shape), its manifest
    (as a dict; may be None) and its accepted rows (consumed once, so a generator over shards
    works). Missing counters or columns give empty sections and a note, never an error."""
    notes: list[str] = []
    manifest = manifest or {}
    config = dict(manifest.get("config") or {})
    config.update(status.get("config") or {})
    run_id = str(status.get("run_id") or manifest.get("run_id") or "")

    # one pass over the rows
    difficulty: list[float] = []
    agreement: list[float] = []
    predicted: list[float] = []
    chars: dict[str, list[float]] = {f: [] for f in TEXT_FIELDS}
    sol_tokens: list[float] = []
    cand_tokens: list[float] = []
    observed_checks: list[str] = []
    columns: set[str] = set()
    n_rows = 0
    for r in rows:
        n_rows += 1
        columns.update(k for k, v in r.items() if v is not None)
        for key, out in (("difficulty", difficulty), ("agreement", agreement), ("predicted_difficulty", predicted)):
            if r.get(key) is not None:
                out.append(float(r[key]))
        for f in TEXT_FIELDS:
            if isinstance(r.get(f), str):
                chars[f].append(len(r[f]))
        t = _selected_tokens(r)
        if t is not None:
            sol_tokens.append(t)
        for c in r.get("candidates") or []:
            if isinstance(c, Mapping) and c.get("num_tokens") is not None:
                cand_tokens.append(int(c["num_tokens"]))
        checks = _observed_checks(r.get("filter_verdicts"))
        if len(checks) > len(observed_checks):
            observed_checks = checks

    rejections = parse_rejections(status.get("rejections") or {})
    accepted = int(status.get("accepted", manifest.get("accepted", n_rows)) or 0)
    finished = int(status.get("finished") or 0) or accepted + sum(rejections.values())
    admitted = int(status.get("admitted") or 0) or finished
    processed = {k: int(v) for k, v in (status.get("processed") or {}).items()}
    tokens = {k: int(v) for k, v in (status.get("tokens") or {}).items()}
    if not status.get("rejections") and not processed:
        notes.append("no stage counters (status.json missing: run still running or lost?); pass --nats-url for live counters")

    if processed and 0 < processed.get("questiongen", finished) < finished:
        # every finished task went through questiongen: its counter is behind the outcome counters
        notes.append(f"stage counters lag the outcomes (questiongen processed {processed['questiongen']} < "
                     f"{finished} finished): per-stage rates are low; --nats-url reads the exact ones while NATS is up")
    funnel = build_funnel(finished, rejections, processed, observed_checks)
    if funnel and funnel[-1].passed != accepted:
        notes.append(f"funnel ends at {funnel[-1].passed} but {accepted} accepted: counters taken mid-update")
    if n_rows != accepted:
        notes.append(f"{n_rows} rows in the shards but {accepted} accepted in the counters")
    if n_rows and "candidates" not in columns:
        notes.append("rows have no candidates column: no token lengths")
    if n_rows and "difficulty" not in columns and "question" in columns:
        notes.append("rows have no difficulty column")

    started = float(status.get("started_at") or 0.0)
    ended = float(status.get("ended_at") or 0.0)
    if started and not ended and status.get("state") == "running":
        ended_for_wall = now if now is not None else time.time()
    else:
        ended_for_wall = ended
    wall = max(ended_for_wall - started, 0.0) if started and ended_for_wall else 0.0
    if not wall:
        notes.append("no start/end times: throughput not available")
    per_s = (lambda x: x / wall) if wall else (lambda x: 0.0)
    total_tokens = sum(tokens.values())
    stages = [
        StageThroughput(s, processed.get(s, 0), tokens.get(s, 0), per_s(processed.get(s, 0)), per_s(tokens.get(s, 0)))
        for s in _stage_order(set(processed) | set(tokens))
        if s in processed or s in tokens
    ]

    labels = {"question": "question", "solution": "solution", "rejected": "generated (rejected)", "chosen": "rewrite (chosen)"}
    lengths: dict[str, Distribution] = {}
    for f in TEXT_FIELDS:
        d = distribution(chars[f])
        if d:
            lengths[f"{labels[f]} chars"] = d
    for name, vals in (("solution tokens", sol_tokens), ("candidate tokens", cand_tokens)):
        d = distribution(vals)
        if d:
            lengths[name] = d

    run_type = str(config.get("run_type", "RUN_TYPE_SYNTHESIS")).removeprefix("RUN_TYPE_").lower()
    return Report(
        run_id=run_id,
        state=str(status.get("state") or manifest.get("state") or "unknown"),
        run_type=run_type,
        target=int(status.get("target") or config.get("target") or 0),
        admitted=admitted,
        finished=finished,
        accepted=accepted,
        rows=n_rows,
        shards=int(status.get("shards") or len(manifest.get("shards") or [])),
        in_flight=max(admitted - finished, 0),
        started_at=started,
        ended_at=ended,
        wall_seconds=wall,
        funnel=funnel,
        rejections={f"{s}/{r}": n for (s, r), n in sorted(rejections.items())},
        difficulty=distribution(difficulty, unit=True),
        agreement=distribution(agreement, unit=True),
        predicted_difficulty=distribution(predicted, unit=True),
        lengths=lengths,
        accepted_per_s=per_s(accepted),
        tokens=total_tokens,
        tokens_per_s=per_s(total_tokens),
        tokens_per_accepted=total_tokens / accepted if accepted else 0.0,
        stages=stages,
        notes=notes,
    )


# ---------------------------------------------------------------------------------- terminal


def _pct(n: int, of: int) -> str:
    return f"{100 * n / of:.1f}%" if of else "-"


def _bar(n: int, peak: int, width: int = 24) -> str:
    return "█" * max(1 if n else 0, round(width * n / peak)) if peak else ""


def _num(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 100 or float(x).is_integer() else f"{x:.2f}"


def report_tables(rep: Report) -> list[Table]:
    """The report as rich tables: overview, funnel, distributions, histograms, throughput."""
    out: list[Table] = []

    t = Table(title=f"run {rep.run_id}: {rep.state} ({rep.run_type})", show_header=True)
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("accepted", f"{rep.accepted} / {rep.target}")
    t.add_row("rows in shards", f"{rep.rows} in {rep.shards} shards")
    t.add_row("tasks admitted", str(rep.admitted))
    t.add_row("finished (accepted + rejected)", str(rep.finished))
    if rep.in_flight:
        t.add_row("without an outcome", str(rep.in_flight))
    t.add_row("acceptance rate", _pct(rep.accepted, rep.finished))
    t.add_row("wall time", f"{rep.wall_seconds:.1f} s")
    out.append(t)

    t = Table(title="funnel", show_header=True)
    t.add_column("step")
    t.add_column("in", justify="right")
    t.add_column("rejected", justify="right")
    t.add_column("out", justify="right")
    t.add_column("of finished", justify="right")
    t.add_column("rejection reasons")
    t.add_row("finished tasks", "", "", str(rep.finished), _pct(rep.finished, rep.finished), "")
    for s in rep.funnel:
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(s.rejected.items(), key=lambda kv: -kv[1]))
        t.add_row(s.label, str(s.entered), str(s.rejected_total), str(s.passed), _pct(s.passed, rep.finished), reasons)
    out.append(t)

    dists = [("difficulty", rep.difficulty), ("agreement", rep.agreement),
             ("predicted difficulty", rep.predicted_difficulty), *rep.lengths.items()]
    dists = [(name, d) for name, d in dists if d is not None]
    if dists:
        t = Table(title="distributions (accepted rows)", show_header=True)
        t.add_column("metric")
        for col in ("n", "min", "p50", "mean", "p90", "max"):
            t.add_column(col, justify="right")
        for name, d in dists:
            t.add_row(name, str(d.n), _num(d.min), _num(d.p50), _num(d.mean), _num(d.p90), _num(d.max))
        out.append(t)

    hists = [(name, d) for name, d in (("difficulty", rep.difficulty), ("agreement", rep.agreement)) if d]
    if hists:
        # both are shares in [0, 1] over the same UNIT_BINS bins: one table, a column pair each
        t = Table(title=" / ".join(name for name, _ in hists) + " histogram", show_header=True)
        t.add_column("bin")
        for name, _ in hists:
            t.add_column(name, justify="right")
            t.add_column("")
        edges = hists[0][1].hist.edges
        for i in range(len(edges) - 1):
            cells = [f"{edges[i]:.1f}-{edges[i + 1]:.1f}"]
            for _, d in hists:
                n = d.hist.counts[i]
                cells += [str(n), _bar(n, max(d.hist.counts), 16)]
            t.add_row(*cells)
        out.append(t)

    t = Table(title="throughput", show_header=True)
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("accepted/s", f"{rep.accepted_per_s:.3f}")
    t.add_row("generated tokens/s (all stages)", f"{rep.tokens_per_s:.1f}")
    t.add_row("generated tokens per accepted pair", f"{rep.tokens_per_accepted:.0f}")
    for s in rep.stages:
        t.add_row(f"{s.stage}: items/s | tokens/s", f"{s.items_per_s:.2f} | {s.tokens_per_s:.1f}")
    out.append(t)

    if rep.notes:
        t = Table(title="notes", show_header=False)
        t.add_column("note")
        for n in rep.notes:
            t.add_row(n)
        out.append(t)
    return out


# ---------------------------------------------------------------------------------- PNG


def render_png(rep: Report, path: str) -> None:
    """Six panels: funnel, rejection reasons, difficulty, agreement, lengths, throughput."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(16, 9.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(f"scalequest run {rep.run_id}: {rep.state}, {rep.accepted}/{rep.target} accepted "
                 f"in {rep.wall_seconds:.0f} s", fontsize=13)
    axes = fig.subplots(2, 3)

    def empty(ax, title: str, why: str = "no data") -> None:
        ax.set_title(title)
        ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_xticks([])
        ax.set_yticks([])

    # funnel: survivors after each step
    ax = axes[0][0]
    labels = ["finished"] + [s.label for s in rep.funnel]
    values = [rep.finished] + [s.passed for s in rep.funnel]
    ys = list(range(len(labels)))[::-1]
    ax.barh(ys, values, color=["#888888"] + ["#4c72b0"] * len(rep.funnel))
    ax.set_yticks(ys, labels)
    for y, v in zip(ys, values):
        ax.text(v, y, f" {v}", va="center", fontsize=8)
    ax.set_title("funnel (items left after each step)")
    ax.set_xlim(0, max(values + [1]) * 1.15)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))

    # rejection reasons
    ax = axes[0][1]
    if rep.rejections:
        items = sorted(rep.rejections.items(), key=lambda kv: kv[1])
        stages = sorted({k.split("/", 1)[0] for k, _ in items}, key=lambda s: (_stage_order([s]).index(s), s))
        palette = ["#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]
        colour = {s: palette[i % len(palette)] for i, s in enumerate(stages)}
        ax.barh(range(len(items)), [n for _, n in items], height=0.7,
                color=[colour[k.split("/", 1)[0]] for k, _ in items])
        ax.set_ylim(len(items) - 0.25 - max(len(items), 6), len(items) - 0.25)  # few reasons: normal bars, at the top
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_yticks(range(len(items)), [k for k, _ in items], fontsize=8)
        for y, (_, n) in enumerate(items):
            ax.text(n, y, f" {n}", va="center", fontsize=8)
        ax.set_xlim(0, max(n for _, n in items) * 1.15)
        ax.set_title("rejections by stage/reason")
    else:
        empty(ax, "rejections by stage/reason", "no rejections")

    for ax, name, d in ((axes[0][2], "difficulty (1 - agreement of the selected answer)", rep.difficulty),
                        (axes[1][0], "agreement of the selected answer", rep.agreement)):
        if d is None:
            empty(ax, name)
            continue
        e = d.hist.edges
        ax.bar(e[:-1], d.hist.counts, width=[e[i + 1] - e[i] for i in range(len(e) - 1)], align="edge",
               edgecolor="white", color="#4c72b0")
        ax.set_xlim(e[0], e[-1])
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{name}\nn={d.n}, mean={d.mean:.2f}", fontsize=10)
        ax.set_ylabel("records")

    # lengths: character histograms, token medians in the legend
    ax = axes[1][1]
    char_dists = [(k, d) for k, d in rep.lengths.items() if k.endswith(" chars")]
    if char_dists:
        tok = rep.lengths.get("solution tokens")
        for (name, d), colour in zip(char_dists, ("#4c72b0", "#dd8452", "#55a868", "#c44e52")):
            e = d.hist.edges
            mids = [(e[i] + e[i + 1]) / 2 for i in range(len(e) - 1)]
            label = f"{name} (p50 {d.p50:.0f})"
            if name == "solution chars" and tok:
                label += f"; tokens p50 {tok.p50:.0f}"
            ax.bar(mids, d.hist.counts, width=(e[1] - e[0]), alpha=0.55, color=colour, label=label)
        ax.legend(fontsize=8)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("characters")
        ax.set_ylabel("records")
        ax.set_title("lengths")
    else:
        empty(ax, "lengths")

    # throughput per stage
    ax = axes[1][2]
    if rep.stages:
        names = [s.stage for s in rep.stages]
        ax.bar(names, [s.tokens_per_s for s in rep.stages], color="#55a868")
        for i, s in enumerate(rep.stages):
            ax.text(i, s.tokens_per_s, f"{s.tokens_per_s:.0f} tok/s\n{s.items_per_s:.2f} items/s",
                    ha="center", va="bottom", fontsize=8)
        top = max(s.tokens_per_s for s in rep.stages)
        ax.set_ylim(0, (top or 1) * 1.3)
        ax.set_ylabel("generated tokens/s")
        ax.set_title(f"throughput: {rep.accepted_per_s:.3f} accepted/s, {rep.tokens_per_s:.0f} tokens/s")
    else:
        empty(ax, "throughput", "no stage counters")

    fig.savefig(path, format="png")
