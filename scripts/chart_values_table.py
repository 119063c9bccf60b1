#!/usr/bin/env python3
"""Write the values table of charts/scalequest/README.md from values.yaml.

Each value's description is the comment block directly above it in values.yaml (``# --``
starts a description, ``#`` lines continue it). The table goes between the
``<!-- values-table:start -->`` and ``<!-- values-table:end -->`` markers of the README.

    python scripts/chart_values_table.py          # rewrite the README table
    python scripts/chart_values_table.py --check  # exit 1 if the README is out of date
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parents[1] / "charts" / "scalequest"
START, END = "<!-- values-table:start -->", "<!-- values-table:end -->"
# Keys whose content is a free-form Kubernetes object or map: one row for the whole value.
FREE_FORM = {"resources", "podSecurityContext", "securityContext", "tolerations", "inputs", "outputs", "buckets",
             "config", "secretEnv", "nodeSelector", "affinity", "podAnnotations", "podLabels", "annotations",
             "labels", "env", "grpcIngressFrom", "imagePullSecrets", "command", "args"}
KEY = re.compile(r"^(\s*)([A-Za-z][\w.-]*):(.*)$")


def rows(text: str) -> list[tuple[str, str, str]]:
    """(dotted key, default as JSON, description) for every documented leaf value."""
    values = yaml.safe_load(text)
    lines = text.splitlines()
    out: list[tuple[str, str, str]] = []
    stack: list[tuple[int, str]] = []
    skip_below: int | None = None
    for i, line in enumerate(lines):
        m = KEY.match(line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2)
        if skip_below is not None and indent > skip_below:
            continue
        skip_below = None
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        path = [k for _, k in stack]
        value = values
        for k in path:
            value = value[k]
        # a subchart's `config` is its own tree, not a settings map
        free = key in FREE_FORM and not (path[0] in ("nats", "minio") and key == "config")
        leaf = not (isinstance(value, dict) and value) or free
        if not leaf:
            continue
        if isinstance(value, (dict, list)):
            skip_below = indent
        comment: list[str] = []
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#"):
            comment.insert(0, lines[j].strip().lstrip("#").strip())
            j -= 1
        desc = " ".join(c.removeprefix("--").strip() for c in comment if c).strip()
        out.append((".".join(path), json.dumps(value), desc))
    return out


def table(text: str) -> str:
    lines = ["| Key | Default | Description |", "|---|---|---|"]
    for key, default, desc in rows(text):
        shown = default if len(default) <= 60 else default[:57] + "..."
        shown = shown.replace("|", "\\|")
        desc = desc.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        lines.append(f"| `{key}` | `{shown}` | {desc} |")
    return "\n".join(lines)


def render_readme(readme: str, values_text: str) -> str:
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table(values_text)}\n{END}{tail}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if the README table is out of date")
    args = ap.parse_args()
    readme_path = CHART / "README.md"
    readme = readme_path.read_text()
    new = render_readme(readme, (CHART / "values.yaml").read_text())
    if args.check:
        if new != readme:
            print("charts/scalequest/README.md values table is out of date: run scripts/chart_values_table.py",
                  file=sys.stderr)
            return 1
        return 0
    readme_path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
