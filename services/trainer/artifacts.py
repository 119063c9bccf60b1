"""Trained models and trainer checkpoints in the object store.

Layout under the store (``--store``), for a job named ``<name>``::

    models/<name>/config.json, model.safetensors, tokenizer*, chat_template.jinja, ...
    models/<name>/training_config.json      the resolved training settings
    models/<name>/metrics.json              final metrics + the log history
    models/<name>/adapter/...               the LoRA adapter (LoRA runs; the top level is merged)
    models/<name>/scalequest-model.json     sha256 + size of every file above; written last
    models/<name>/checkpoints/checkpoint-<step>/...   resumable trainer state (optional)

:func:`libs.models.resolve.resolve_model` downloads ``s3://.../models/<name>`` into the local
model cache; a local store's ``models/<name>`` is loadable in place.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

from libs.fileutil import sha256_file
from libs.models.resolve import MODEL_MANIFEST
from libs.storage.objectstore import ObjectStore

log = logging.getLogger("scalequest.trainer")

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CKPT_RE = re.compile(r"checkpoint-(\d+)")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"invalid model name {name!r}: 1-128 chars of letters, digits, '.', '_' or '-'")
    return name


def model_prefix(name: str) -> str:
    """``models/<name>/``"""
    return f"models/{check_name(name)}/"


_sha256 = sha256_file


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


def upload_dir(store: ObjectStore, directory: Path, prefix: str) -> dict[str, dict]:
    """Upload every file of ``directory`` under ``prefix``; returns {relpath: {sha256, size}}."""
    files: dict[str, dict] = {}
    for path in _files(directory):
        rel = path.relative_to(directory).as_posix()
        store.put_file(prefix + rel, path)
        files[rel] = {"sha256": _sha256(path), "size": path.stat().st_size}
    return files


def publish_model(store: ObjectStore, directory: Path, name: str, extra: dict | None = None) -> str:
    """Upload a finished model directory to ``models/<name>/`` and commit it with the manifest.

    Files of an earlier model under the same name that the new one does not have are removed
    (checkpoints are kept). Returns the store URI of the prefix.
    """
    prefix = model_prefix(name)
    started = time.monotonic()
    # The manifest goes first out of the way, so a reader never pairs the old manifest with new files.
    store.delete(prefix + MODEL_MANIFEST)
    files = upload_dir(store, directory, prefix)
    for key in store.list(prefix):
        rel = key[len(prefix):]
        if rel not in files and rel != MODEL_MANIFEST and not rel.startswith("checkpoints/"):
            store.delete(key)
    manifest = {"name": name, "files": files, "created_at": time.time(), **(extra or {})}
    store.put_bytes(prefix + MODEL_MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode(), "application/json")
    uri = store.uri(prefix.rstrip("/"))
    log.info("model published to %s (%d files, %.1fs)", uri, len(files), time.monotonic() - started)
    return uri


# --------------------------------------------------------------------------------------------
# checkpoints


def checkpoint_prefix(name: str) -> str:
    return model_prefix(name) + "checkpoints/"


def stored_checkpoints(store: ObjectStore, name: str) -> list[tuple[int, str]]:
    """Complete checkpoints in the store, oldest first: (step, prefix). A checkpoint is complete
    when its ``.complete`` marker (written after its files) exists."""
    base = checkpoint_prefix(name)
    out: dict[int, str] = {}
    for key in store.list(base):
        rel = key[len(base):]
        head, _, tail = rel.partition("/")
        m = _CKPT_RE.fullmatch(head)
        if m and tail == ".complete":
            out[int(m.group(1))] = f"{base}{head}/"
    return sorted(out.items())


def upload_checkpoint(store: ObjectStore, name: str, ckpt_dir: Path, keep: int | None) -> None:
    """Mirror a local ``checkpoint-<step>`` directory and prune older stored ones to ``keep``."""
    prefix = f"{checkpoint_prefix(name)}{ckpt_dir.name}/"
    started = time.monotonic()
    upload_dir(store, ckpt_dir, prefix)
    store.put_bytes(prefix + ".complete", json.dumps({"at": time.time()}).encode(), "application/json")
    if keep:
        done = stored_checkpoints(store, name)
        for _, old in done[:-keep]:
            # marker first: a half-deleted checkpoint must not look complete
            store.delete(old + ".complete")
            for key in store.list(old):
                store.delete(key)
    log.info("checkpoint %s stored (%.1fs)", ckpt_dir.name, time.monotonic() - started)


def download_latest_checkpoint(store: ObjectStore, name: str, output_dir: Path) -> Path | None:
    """Bring the newest complete stored checkpoint into ``output_dir``; None when there is none."""
    done = stored_checkpoints(store, name)
    if not done:
        return None
    step, prefix = done[-1]
    dest = output_dir / f"checkpoint-{step}"
    for key in store.list(prefix):
        rel = key[len(prefix):]
        if rel == ".complete":
            continue
        target = dest.joinpath(*rel.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        store.get_file(key, target)
    log.info("resuming from stored checkpoint %s", store.uri(prefix.rstrip("/")))
    return dest
