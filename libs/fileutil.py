"""File helpers shared by the model cache (default model, models from the object store) and
the trainer's artifacts: content hashes and replacing a directory in one rename."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def replace_dir(tmp: Path, target: Path) -> None:
    """Put the complete directory ``tmp`` at ``target``: readers see the old directory or the
    new one, never a half-written one (an existing ``target`` is moved aside, then removed)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
