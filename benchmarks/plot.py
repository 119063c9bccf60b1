"""One PNG of the benchmark results: ``python -m benchmarks.plot [--results DIR] [--out PNG]``.

Reads whichever of ``orchestration.json``, ``scaling.json``, ``efficiency.json``, ``peer.json``
and ``memory.json`` exist in the results directory and draws one panel per benchmark.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR


def load(results: Path) -> dict[str, Any]:
    out = {}
    for name in PANELS:
        f = results / f"{name}.json"
        if f.exists():
            out[name] = json.loads(f.read_text())
    return out


def panel_orchestration(ax, doc: dict) -> None:
    s = doc["results"]["summary"]
    labels, values = [], []
    raw, stages = s.get("raw", {}), s.get("stages", {})  # absent in a --steps e2e run
    for k, v in raw.items():
        labels.append(f"raw {k.replace('_per_s', '')}")
        values.append(v)
    relay = s.get("relay", {})
    for name, v in relay.items():
        labels.append(f"queue layer alone ({name})")
        values.append(v["items_per_s"])
    for name, v in stages.items():
        labels.append(f"{name} alone")
        values.append(v["items_per_s"])
    for name, v in s["e2e"].items():
        labels.append(f"end to end ({name})")
        values.append(v["items_per_s"])
    colors = (["#999999"] * len(raw) + ["#55a868"] * len(relay) + ["#4c72b0"] * len(stages)
              + ["#dd8452"] * len(s["e2e"]))  # fmt: skip
    ax.barh(labels[::-1], values[::-1], color=colors[::-1])
    ax.axvline(5000, color="red", linestyle="--", linewidth=1, label="target 5,000 items/s")
    ax.set_xscale("log")
    # Bars span about one decade: label a few round values, not matplotlib's crowded minor ticks.
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks([1000, 2000, 5000, 10000, 20000])
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:g}k"))
    ax.set_xlabel("messages or items per second (log)")
    ax.set_title("Orchestration, zero-cost engine")
    ax.legend(loc="lower right", fontsize=7)


def panel_scaling(ax, doc: dict) -> None:
    s = doc["results"]["summary"]
    for engine, by_n in s.items():
        ns = sorted(by_n, key=int)
        ax.plot([int(n) for n in ns], [by_n[n]["items_per_s"] for n in ns], marker="o", label=f"{engine} engine")
    ax.set_xlabel("solver processes")
    ax.set_ylabel("items/s")
    ax.set_xticks([int(n) for n in next(iter(s.values()))])
    ax.set_title("Solver replica scaling")
    ax.legend(fontsize=7)


def _get(doc: dict, path: str):
    cur: Any = doc
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def panel_ratio(ax, doc: dict, title: str, paths: list[tuple[str, str]], target: float) -> None:
    """Bars of the headline ratios a benchmark reports (dotted paths into its JSON)."""
    pairs = [(label, _get(doc, path)) for label, path in paths]
    pairs = [(label, v) for label, v in pairs if isinstance(v, (int, float))]
    ax.bar([p[0] for p in pairs], [p[1] for p in pairs], color="#55a868")
    ax.axhline(target, color="red", linestyle="--", linewidth=1, label=f"target {target:g}")
    for i, (_, v) in enumerate(pairs):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")


def panel_memory(ax, doc: dict) -> None:
    """Peak RSS per process: the embedded run, and each service as its own process (real engine,
    and zero-cost engine)."""
    res = doc["results"]
    res = res.get("summary", res)
    labels, values, colors = [], [], []
    emb = _get(res, "embedded.embedded.peak_sum_rss_mib")
    if emb:
        labels.append("embedded run (all)")
        values.append(emb)
        colors.append("#8172b2")
    for group, color, suffix in (("processes", "#4c72b0", "vLLM"), ("fake", "#999999", "zero-cost")):
        for name, v in (res.get(group) or {}).items():
            if isinstance(v, dict) and "peak_sum_rss_mib" in v:
                labels.append(f"{name} ({suffix})")
                values.append(v["peak_sum_rss_mib"])
                colors.append(color)
    if not values:
        ax.set_axis_off()
        return
    ax.barh(labels[::-1], values[::-1], color=colors[::-1])
    ax.set_xlabel("peak RSS incl. engine processes (MiB)")
    ax.set_title("Memory")


PANELS = ("orchestration", "scaling", "efficiency", "peer", "memory")  # the order main() draws them in


def _where(doc: dict) -> str:
    m = doc.get("machine", {})
    cpu = str(m.get("cpu", "?")).replace("(R)", "").replace(" Processor", "").strip()
    return f"{cpu}, {str(m.get('date', ''))[:10]}"


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=RESULTS_DIR)
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.png"))
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs = load(args.results)
    if not docs:
        raise SystemExit(f"no benchmark results in {args.results}; run the benchmarks first (docs/benchmarks.md)")
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    axes = axes.ravel()
    i = 0
    if "orchestration" in docs:
        panel_orchestration(axes[i], docs["orchestration"])
        i += 1
    if "scaling" in docs:
        panel_scaling(axes[i], docs["scaling"])
        i += 1
    if "efficiency" in docs:
        panel_ratio(axes[i], docs["efficiency"], "Pipeline / direct engine (generated tok/s)",
                    [("engine busy window", "results.ratio_busy_median"),
                     ("run wall time", "results.ratio_run_median")], 0.9)  # fmt: skip
        i += 1
    if "peer" in docs:
        panel_ratio(axes[i], docs["peer"], "Ours / distilabel (accepted pairs/s)",
                    [("run", "results.ratio_median.accepted_per_s"),
                     ("incl. load", "results.ratio_median.accepted_per_s_total"),
                     ("tokens/s", "results.ratio_median.tokens_per_s")], 1.0)  # fmt: skip
        i += 1
    if "memory" in docs:
        panel_memory(axes[i], docs["memory"])
        i += 1
    for ax in axes[i:]:
        ax.set_axis_off()
    # This machine kind's speed differs up to 2x between draws: when the results come from
    # several machines or days, every panel says which one it was measured on.
    runs = {_where(doc) for doc in docs.values()}
    m = next(iter(docs.values()))["machine"]
    if len(runs) == 1:
        fig.suptitle(f"scalequest benchmarks, {m['date'][:10]}, {m['cores']} cores, {m['cpu']}", fontsize=11)
    else:
        fig.suptitle(f"scalequest benchmarks, {m['cores']} cores; machine and date per panel", fontsize=11)
        for ax, doc in zip(axes, [docs[n] for n in PANELS if n in docs]):
            ax.set_title(f"{ax.get_title()}\n({_where(doc)})", fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
