"""Model locations -> local directories (libs/models/resolve.py), models published to a store
(services/trainer/artifacts.py), and training data sources (services/trainer/data.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from libs.errors import ConfigError
from libs.models.resolve import (
    MODEL_MANIFEST,
    ModelResolveError,
    model_cache_dir,
    resolve_model,
)
from libs.storage.objectstore import LocalStore, open_store
from libs.storage.shards import ShardWriter
from services.trainer.artifacts import publish_model
from services.trainer.data import load_rows
from tests.trainer.conftest import write_jsonl
from tests.trainer.helpers import make_record


def test_local_paths_and_ids_pass_through(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    assert resolve_model(str(d)) == str(d)
    assert resolve_model(f"file://{d}") == str(d)
    assert resolve_model("Qwen/Qwen2-Math-7B-Instruct") == "Qwen/Qwen2-Math-7B-Instruct"
    (tmp_path / "f").write_text("x")
    with pytest.raises(ModelResolveError, match="not a directory"):
        resolve_model(str(tmp_path / "f"))


def test_published_model_layout(tmp_path):
    src = tmp_path / "final"
    (src / "adapter").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "adapter" / "a.bin").write_bytes(b"a")
    store = LocalStore(tmp_path / "store")
    store.put_bytes("models/m1/checkpoints/checkpoint-1/x", b"keep")
    store.put_bytes("models/m1/stale.bin", b"old")
    uri = publish_model(store, src, "m1")
    assert uri == str(tmp_path / "store" / "models" / "m1")
    keys = set(store.list("models/m1/"))
    assert "models/m1/stale.bin" not in keys and "models/m1/checkpoints/checkpoint-1/x" in keys
    manifest = json.loads(store.get_bytes(f"models/m1/{MODEL_MANIFEST}"))
    assert set(manifest["files"]) == {"config.json", "adapter/a.bin"}
    # a local store's model prefix is a loadable directory as it is
    assert resolve_model(uri) == uri


@pytest.mark.s3
def test_s3_model_is_cached_and_refreshed_when_it_changes(tmp_path, s3_store_url):
    store = open_store(s3_store_url)
    src = tmp_path / "final"
    src.mkdir()
    (src / "config.json").write_text('{"v": 1}')
    (src / "model.safetensors").write_bytes(b"w1")
    uri = publish_model(store, src, "gen")
    cache = tmp_path / "cache"
    local = resolve_model(uri, cache_dir=cache)
    assert local == str(model_cache_dir(uri, cache)) and json.loads(Path(local, "config.json").read_text()) == {"v": 1}
    assert resolve_model(uri, cache_dir=cache) == local  # unchanged: reused
    (src / "config.json").write_text('{"v": 2}')
    publish_model(store, src, "gen")
    assert json.loads(Path(resolve_model(uri, cache_dir=cache), "config.json").read_text()) == {"v": 2}
    # a corrupted object is caught by the manifest's checksum
    store.put_bytes("models/gen/model.safetensors", b"XX")
    with pytest.raises(ModelResolveError, match="checksum"):
        resolve_model(uri, cache_dir=tmp_path / "cache2")
    # a prefix without a manifest (uploaded by other tools) is fingerprinted by its listing
    store.put_bytes("models/plain/config.json", b"{}")
    assert Path(resolve_model(f"{s3_store_url}/models/plain", cache_dir=cache), "config.json").read_text() == "{}"
    with pytest.raises(ModelResolveError, match="empty"):
        resolve_model(f"{s3_store_url}/models/nothing", cache_dir=cache)


def test_sources_files_dirs_runs_and_limits(tmp_path):
    rows = [{"question": f"q{i}"} for i in range(5)]
    jsonl = write_jsonl(tmp_path / "a" / "x.jsonl", rows[:2])
    pq.write_table(pa.Table.from_pylist(rows[2:]), tmp_path / "a" / "y.parquet")
    assert [r["question"] for r in load_rows([str(jsonl)])] == ["q0", "q1"]
    assert [r["question"] for r in load_rows([str(tmp_path / "a")])] == [f"q{i}" for i in range(5)]
    assert len(load_rows([str(tmp_path / "a")], limit=3)) == 3
    store = LocalStore(tmp_path / "store")
    w = ShardWriter(store, "run1")
    w.write([make_record("run1", i) for i in range(3)])
    w.write([make_record("run1", i) for i in range(3, 4)])
    got = load_rows([], run_id="run1", store_url=str(tmp_path / "store"))
    assert [r["item_id"] for r in got] == [f"run1-{i:07d}" for i in range(4)]
    assert len(load_rows(["run:run1", str(jsonl)], store_url=str(tmp_path / "store"))) == 6
    # a run's directory (manifest.json beside shards/) works as a plain directory too
    (tmp_path / "store" / "runs" / "run1" / "manifest.json").write_text('{\n  "run_id": "run1"\n}\n')
    assert len(load_rows([str(tmp_path / "store" / "runs" / "run1")])) == 4
    (tmp_path / "rows.json").write_text('[{"question": "x"}, {"question": "y"}]')
    assert [r["question"] for r in load_rows([str(tmp_path / "rows.json")])] == ["x", "y"]


def test_bad_sources_are_config_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="hub"):
        load_rows(["openai/gsm8k"])
    with pytest.raises(ConfigError, match="--data"):
        load_rows([])
    with pytest.raises(ConfigError, match="no shards"):
        load_rows([], run_id="nope", store_url=str(tmp_path))
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ConfigError, match="bad.jsonl:1"):
        load_rows([str(tmp_path / "bad.jsonl")])


@pytest.mark.s3
def test_s3_sources(tmp_path, s3_store_url):
    store = open_store(s3_store_url)
    store.put_bytes("data/q1.jsonl", b'{"question": "a"}\n{"question": "b"}\n')
    store.put_bytes("data/sub/q2.jsonl", b'{"question": "c"}\n')
    store.put_bytes("data/manifest.json", b'{\n "run_id": "x"\n}')  # not data: skipped when scanning
    assert [r["question"] for r in load_rows([f"{s3_store_url}/data"])] == ["a", "b", "c"]
    assert [r["question"] for r in load_rows([f"{s3_store_url}/data/sub/q2.jsonl"])] == ["c"]
