"""Model locations -> local directories that vLLM and transformers can load.

A model may be named as

* a local directory (``/models/qft``, ``./out/final``) or ``file:///models/qft``: used in place;
* ``default`` (or ""): the packaged SmolLM2-135M-Instruct (:func:`ensure_default_model`);
* an object-store prefix, ``s3://bucket/prefix/models/<name>`` (endpoint and keys from the
  environment, as for :func:`libs.storage.objectstore.open_store`): downloaded once into the
  local model cache and reused while the stored model is unchanged;
* anything else (a hub id such as ``Qwen/Qwen2-Math-7B-Instruct``): returned unchanged, for the
  loader to resolve (offline unless hub access is allowed).

Stored models written by the trainer (:mod:`services.trainer.artifacts`) carry
``scalequest-model.json``: the sha256 and size of every file, written last, so its presence
means the upload is complete. A prefix without it (uploaded by other tools) is fingerprinted by
its listing alone. The cache directory for a URI is
``<cache>/store/<name>-<sha256(uri)[:12]>``; it is replaced (temp dir + rename, under a file
lock) whenever the stored manifest or listing differs from the cached copy's, and each file is
checked against the manifest's sha256 after download.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from libs.fileutil import replace_dir, sha256_file
from libs.models.default_model import default_cache_dir, ensure_default_model

__all__ = ["MODEL_MANIFEST", "ModelResolveError", "is_store_uri", "model_cache_dir", "resolve_model"]

#: Written last into a stored model prefix: {"files": {relpath: {"sha256", "size"}}, ...}.
MODEL_MANIFEST = "scalequest-model.json"
#: Written into a cached copy: which remote state it mirrors.
_CACHE_STAMP = ".scalequest-resolved.json"
#: Sub-prefixes of a stored model that a loader never needs (resumable trainer state).
SKIP_PREFIXES = ("checkpoints/",)


class ModelResolveError(RuntimeError):
    """The model location cannot be turned into a usable local directory."""


def _log(message: str) -> None:
    print(f"[resolve-model] {message}", file=sys.stderr, flush=True)


def is_store_uri(location: str) -> bool:
    """Whether ``location`` names an object-store prefix that must be downloaded."""
    return isinstance(location, str) and location.strip().lower().startswith("s3://")


def model_cache_dir(uri: str, cache_dir: str | Path | None = None) -> Path:
    """The local directory that mirrors the stored model at ``uri``."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    uri = uri.strip().rstrip("/")
    name = uri.rsplit("/", 1)[-1] or "model"
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:64]
    return cache / "store" / f"{safe}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"


_sha256 = sha256_file


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remote_state(store) -> tuple[dict, list[str]]:
    """(fingerprint, keys to download) of a stored model prefix."""
    from libs.storage.objectstore import ObjectNotFound

    keys = [k for k in store.list("") if not k.startswith(SKIP_PREFIXES)]
    if not keys:
        raise ModelResolveError(f"no model at {store.url}: the prefix is empty")
    try:
        manifest = json.loads(store.get_bytes(MODEL_MANIFEST))
    except ObjectNotFound:
        manifest = None
    except ValueError as e:
        raise ModelResolveError(f"corrupt {MODEL_MANIFEST} at {store.url}: {e}") from e
    if manifest is not None:
        files = manifest.get("files") or {}
        if not isinstance(files, dict) or not files:
            raise ModelResolveError(f"{MODEL_MANIFEST} at {store.url} lists no files")
        missing = sorted(set(files) - set(keys))
        if missing:
            raise ModelResolveError(f"model at {store.url} is incomplete: missing {missing[:5]}")
        fingerprint = {"manifest": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()}
        return fingerprint | {"files": files}, sorted(files)
    listing = [k for k in keys if k != MODEL_MANIFEST]
    return {"listing": hashlib.sha256("\n".join(listing).encode()).hexdigest(), "files": {}}, listing


def _cached_ok(local: Path, fingerprint: dict) -> bool:
    stamp = local / _CACHE_STAMP
    if not stamp.is_file():
        return False
    try:
        cached = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    if {k: v for k, v in cached.items() if k != "resolved_at"} != {k: v for k, v in fingerprint.items()}:
        return False
    # cheap integrity check on reuse: every file present with the recorded size
    for rel, meta in (fingerprint.get("files") or {}).items():
        p = local / rel
        if not p.is_file() or (meta.get("size") is not None and p.stat().st_size != meta["size"]):
            return False
    return True


def _download(store, keys: list[str], files: dict, dest: Path) -> None:
    for key in keys:
        target = dest.joinpath(*key.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        store.get_file(key, target)
        want = (files.get(key) or {}).get("sha256")
        if want and _sha256(target) != want:
            raise ModelResolveError(f"checksum mismatch for {store.uri(key)} after download")


def resolve_model(location: str | os.PathLike[str], cache_dir: str | Path | None = None) -> str:
    """Return a local directory (as ``str``) holding the model named by ``location``.

    Idempotent and safe to call from several processes: a stored model is downloaded once
    per change of its manifest (or listing), and concurrent callers wait for one download.
    Hub ids and other names that are neither local nor ``s3://`` come back unchanged.
    """
    loc = os.fspath(location).strip()
    if loc in ("", "default"):
        return str(ensure_default_model(cache_dir))
    if loc.lower().startswith("file://"):
        parts = urlsplit(loc)
        loc = unquote(parts.path)
    if not is_store_uri(loc):
        path = Path(loc).expanduser()
        if path.is_dir():
            return str(path)
        if path.exists():
            raise ModelResolveError(f"model path {path} is not a directory")
        return loc  # a hub id (or a path that does not exist: the loader reports it)

    from libs.storage.objectstore import open_store

    uri = loc.rstrip("/")
    store = open_store(uri)
    fingerprint, keys = _remote_state(store)
    local = model_cache_dir(uri, cache_dir)
    if _cached_ok(local, fingerprint):
        return str(local)
    with _locked(local.parent / f".{local.name}.lock"):
        if _cached_ok(local, fingerprint):
            return str(local)
        started = time.monotonic()
        _log(f"downloading {uri} -> {local}")
        tmp = Path(tempfile.mkdtemp(prefix=f".{local.name}.tmp-", dir=local.parent))
        try:
            _download(store, keys, fingerprint.get("files") or {}, tmp)
            (tmp / _CACHE_STAMP).write_text(json.dumps({**fingerprint, "resolved_at": time.time()}, indent=1))
            os.chmod(tmp, 0o755)
            replace_dir(tmp, local)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _log(f"model ready at {local} ({len(keys)} files, {time.monotonic() - started:.1f}s)")
    return str(local)
