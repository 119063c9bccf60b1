"""Parquet shards and run manifests (LocalStore and S3 via the any_store fixture)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from libs.storage import (
    OPTIONAL_FIELDS,
    RECORD_SCHEMA,
    REQUIRED_FIELDS,
    LocalStore,
    Manifest,
    ObjectStore,
    ShardInfo,
    ShardWriter,
    StoreError,
    existing_item_ids,
    list_shards,
    manifest_key,
    next_seq,
    parquet_to_records,
    read_manifest,
    read_shard,
    records_to_parquet,
    shard_key,
    write_manifest,
)


def make_record(i: int, run_id: str = "run1", n_candidates: int = 2) -> dict[str, Any]:
    # float values are exactly representable in float32 so round trips compare equal
    return {
        "item_id": f"{run_id}/t{i // 10}/{i}",
        "run_id": run_id,
        "question": f"What is {i} + {i}?",
        "solution": f"{i} + {i} = {2 * i}. The answer is \\boxed{{{2 * i}}}.",
        "answer": str(2 * i),
        "difficulty": 0.25,
        "answered": 4,
        "distinct_answers": 2,
        "predicted_difficulty": 0.5,
        "agreement": 0.75,
        "selection_reason": "majority",
        "scorer": "agreement",
        "selected": 1,
        "generator_model": "smollm2-135m-qgen",
        "solver_model": "smollm2-135m",
        "judge_model": "",
        "seed": 1_000_000_007 + i,
        "question_sampling": {"temperature": 1.0, "top_p": 0.9375, "max_tokens": 256},
        "solution_sampling": {"temperature": 0.5, "top_p": 1.0, "max_tokens": 512},
        "filter_verdicts": [
            {"check": "language", "passed": True, "reason": "", "detail": "en"},
            {"check": "dedup", "passed": True, "reason": "", "detail": ""},
        ],
        "candidates": [
            {
                "text": f"candidate {c} for {i}",
                "answer": str(2 * i + (c % 2)),
                "num_tokens": 40 + c,
                "finish_reason": "stop",
                "judge_score": 0.5,
                "agreement": 0.75,
                "reward": -1.5,
                "seed": 7 * i + c,
                "rm_score": 0.25,
            }
            for c in range(n_candidates)
        ],
        "created_at": 1_760_000_000.125 + i,
    }


# --------------------------------------------------------------------------------------------
# records <-> parquet


def test_roundtrip_exact() -> None:
    recs = [make_record(i) for i in range(5)] + [make_record(99, n_candidates=0)]
    data = records_to_parquet(recs)
    assert parquet_to_records(data) == recs


def test_optional_columns_may_be_absent() -> None:
    rec = make_record(1)
    for name in ("answered", "distinct_answers", "predicted_difficulty"):
        del rec[name]
    (back,) = parquet_to_records(records_to_parquet([rec]))
    assert back["answered"] is None and back["predicted_difficulty"] is None and back["question"] == rec["question"]


def test_candidate_rm_score_may_be_absent() -> None:
    rec = make_record(1)
    for c in rec["candidates"]:
        del c["rm_score"]
    (back,) = parquet_to_records(records_to_parquet([rec]))
    assert all(c["rm_score"] is None for c in back["candidates"]) and back["candidates"][0]["reward"] == -1.5


def test_parquet_schema_and_compression() -> None:
    data = records_to_parquet([make_record(0)])
    pf = pq.ParquetFile(io.BytesIO(data))
    assert pf.schema_arrow.equals(RECORD_SCHEMA)
    assert pf.schema_arrow.metadata[b"scalequest.schema_version"] == b"1"
    assert pf.metadata.row_group(0).column(0).compression == "ZSTD"
    assert set(REQUIRED_FIELDS) == set(RECORD_SCHEMA.names) - OPTIONAL_FIELDS


def test_optional_values_default() -> None:
    rec = make_record(1)
    del rec["created_at"]
    rec.update(difficulty=None, judge_model=None, candidates=None, filter_verdicts=None, question_sampling=None)
    (out,) = parquet_to_records(records_to_parquet([rec]))
    assert out["created_at"] > 1_700_000_000
    assert out["candidates"] == [] and out["filter_verdicts"] == []
    assert out["difficulty"] is None and out["question_sampling"] is None


@pytest.mark.parametrize("key", ["item_id", "question", "solution", "answer", "candidates", "seed"])
def test_missing_key_is_named(key: str) -> None:
    recs = [make_record(0), make_record(1)]
    del recs[1][key]
    with pytest.raises(ValueError, match=f"record 1 .*missing required key '{key}'"):
        records_to_parquet(recs)


def test_bad_records_rejected() -> None:
    rec = make_record(0)
    rec["extra_column"] = 1
    with pytest.raises(ValueError, match="extra_column"):
        records_to_parquet([rec])
    rec = make_record(0)
    rec["question"] = None
    with pytest.raises(ValueError, match="'question'"):
        records_to_parquet([rec])
    rec = make_record(3)
    rec["selected"] = "not-an-int"
    with pytest.raises(ValueError, match=r"record 0 \(item_id='run1/t0/3'\)"):
        records_to_parquet([rec])
    with pytest.raises(ValueError, match="not a readable Parquet"):
        parquet_to_records(b"definitely not parquet")


# --------------------------------------------------------------------------------------------
# keys and manifest


def test_keys() -> None:
    assert shard_key("run1", 7) == "runs/run1/shards/w0-000007.parquet"
    assert shard_key("r-2.x", 123456, writer="sink-1") == "runs/r-2.x/shards/sink-1-123456.parquet"
    assert manifest_key("run1") == "runs/run1/manifest.json"
    for bad in ["", "../x", "a/b", ".hidden", "a b"]:
        with pytest.raises(ValueError):
            shard_key(bad, 0)
        with pytest.raises(ValueError):
            manifest_key(bad)
    with pytest.raises(ValueError):
        shard_key("run1", -1)
    with pytest.raises(ValueError):
        shard_key("run1", 0, writer="w/0")


def test_manifest_json_roundtrip() -> None:
    m = Manifest(run_id="run1", config={"target": 1000, "models": {"gen": "x"}})
    m.add_shard(ShardInfo("runs/run1/shards/w0-000001.parquet", 10, 1, "ab" * 32, 1.5, 100, "w0"))
    m.add_shard(ShardInfo("runs/run1/shards/w0-000000.parquet", 5, 0, "cd" * 32, 1.0, 50, "w0"))
    m.add_shard(ShardInfo("runs/run1/shards/w0-000001.parquet", 10, 1, "ab" * 32, 1.5, 100, "w0"))  # idempotent
    assert m.accepted == 15 and [s.seq for s in m.shards] == [0, 1]
    back = Manifest.from_json(m.to_json())
    assert back == m
    # tolerant of unknown (newer) fields
    d = json.loads(m.to_json())
    d["new_field"] = 1
    d["shards"][0]["new_shard_field"] = "x"
    assert Manifest.from_json(json.dumps(d)) == m
    with pytest.raises(ValueError):
        Manifest.from_json("[1, 2]")


def test_manifest_store_roundtrip(any_store: ObjectStore) -> None:
    assert read_manifest(any_store, "run1") is None
    m = Manifest(run_id="run1", config={"target": 10})
    write_manifest(any_store, m)
    assert read_manifest(any_store, "run1") == m
    m.state = "completed"
    m.add_shard(ShardInfo("runs/run1/shards/w0-000000.parquet", 3, 0, "0" * 64, 2.0))
    write_manifest(any_store, m)
    got = read_manifest(any_store, "run1")
    assert got == m and got.state == "completed" and got.accepted == 3
    any_store.put_bytes(manifest_key("run2"), b"{not json")
    with pytest.raises(StoreError, match="corrupt manifest"):
        read_manifest(any_store, "run2")


# --------------------------------------------------------------------------------------------
# ShardWriter


def test_shard_writer(any_store: ObjectStore) -> None:
    w = ShardWriter(any_store, "run1")
    recs0 = [make_record(i) for i in range(3)]
    recs1 = [make_record(i) for i in range(3, 10)]
    info0 = w.write(recs0)
    info1 = w.write(recs1)
    assert (info0.key, info0.seq, info0.records) == ("runs/run1/shards/w0-000000.parquet", 0, 3)
    assert (info1.key, info1.seq, info1.records) == ("runs/run1/shards/w0-000001.parquet", 1, 7)
    data = any_store.get_bytes(info1.key)
    assert info1.sha256 == hashlib.sha256(data).hexdigest() and info1.size == len(data)
    assert read_shard(any_store, info0.key) == recs0
    assert list_shards(any_store, "run1") == [info0.key, info1.key]
    with pytest.raises(ValueError):
        w.write([])
    with pytest.raises(ValueError, match="run_id"):
        w.write([make_record(50, run_id="other")])
    assert w.seq == 2


def test_existing_item_ids_and_next_seq(any_store: ObjectStore) -> None:
    assert existing_item_ids(any_store, "run1") == set()
    assert next_seq(any_store, "run1", "w1") == 0
    w1 = ShardWriter(any_store, "run1", writer="w1")
    w10 = ShardWriter(any_store, "run1", writer="w10", start_seq=41)
    w1.write([make_record(i) for i in range(4)])
    w1.write([make_record(i) for i in range(4, 6)])
    w10.write([make_record(i) for i in range(6, 9)])
    ShardWriter(any_store, "run2").write([make_record(100, run_id="run2")])  # other run
    any_store.put_bytes("runs/run1/shards/README.txt", b"not a shard")
    assert existing_item_ids(any_store, "run1") == {make_record(i)["item_id"] for i in range(9)}
    assert ShardWriter.existing_item_ids(any_store, "run2") == {"run2/t10/100"}
    assert next_seq(any_store, "run1", "w1") == 2
    assert ShardWriter.next_seq(any_store, "run1", "w10") == 42
    assert next_seq(any_store, "run1", "w0") == 0
    resumed = ShardWriter.resume(any_store, "run1", "w1")
    assert resumed.write([make_record(20)]).key == "runs/run1/shards/w1-000002.parquet"


def test_writer_never_overwrites_and_retries_are_idempotent(any_store: ObjectStore) -> None:
    recs = [make_record(i) for i in range(3)]
    first = ShardWriter(any_store, "run1").write(recs)
    # a restarted writer that was not resumed: same items again -> recognised, nothing rewritten
    again = ShardWriter(any_store, "run1").write(recs)
    assert again.key == first.key and again.sha256 == first.sha256
    # different items on a taken number -> next free number, the old shard is kept
    other = ShardWriter(any_store, "run1").write([make_record(7)])
    assert other.key == shard_key("run1", 1)
    assert read_shard(any_store, first.key) == recs
    assert list_shards(any_store, "run1") == [shard_key("run1", 0), shard_key("run1", 1)]


# --------------------------------------------------------------------------------------------
# interoperability


def test_datasets_reads_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets

    store = LocalStore(tmp_path / "store")
    w = ShardWriter(store, "run1")
    w.write([make_record(i) for i in range(4)])
    w.write([make_record(i) for i in range(4, 6)])
    files = [store.uri(k) for k in list_shards(store, "run1")]
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == 6
    assert set(ds.column_names) == set(RECORD_SCHEMA.names)
    feats = ds.features
    assert feats["question"].dtype == "string" and feats["seed"].dtype == "int64"
    assert feats["question_sampling"]["max_tokens"].dtype == "int32"
    row = ds[5]
    assert row["item_id"] == make_record(5)["item_id"]
    assert row["question_sampling"] == {"temperature": 1.0, "top_p": 0.9375, "max_tokens": 256}
    assert [c["answer"] for c in row["candidates"]] == ["10", "11"]
    assert row["candidates"][1]["num_tokens"] == 41
    assert row["filter_verdicts"][0] == {"check": "language", "passed": True, "reason": "", "detail": "en"}
    # glob over the run directory works too (what a trainer would point at)
    ds2 = datasets.load_dataset(
        "parquet",
        data_files=str(tmp_path / "store" / "runs" / "run1" / "shards" / "*.parquet"),
        split="train",
        cache_dir=str(tmp_path / "cache2"),
    )
    assert sorted(ds2["item_id"]) == sorted(ds["item_id"])
