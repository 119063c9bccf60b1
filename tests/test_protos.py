"""The checked-in generated code must be exactly what scripts/gen_protos.sh produces."""

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_is_up_to_date(tmp_path):
    subprocess.run(
        ["bash", str(ROOT / "scripts/gen_protos.sh"), str(tmp_path)],
        check=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated, "generator produced nothing"
    checked_in = sorted(
        p.relative_to(ROOT / "protos")
        for p in (ROOT / "protos").rglob("*")
        if p.is_file() and p.suffix in (".py", ".pyi")
    )
    assert generated == checked_in, "generated file set differs: run scripts/gen_protos.sh"
    stale = [str(p) for p in generated if not filecmp.cmp(tmp_path / p, ROOT / "protos" / p, shallow=False)]
    assert not stale, f"stale generated code: {stale}; run scripts/gen_protos.sh"


def test_every_service_proto_is_versioned():
    for proto in (ROOT / "protos").rglob("*.proto"):
        text = proto.read_text()
        assert "package scalequest." in text and ".v1;" in text, proto
