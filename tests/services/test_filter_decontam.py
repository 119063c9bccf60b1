"""Decontamination: index building from local JSONL / JSON / Parquet (and a stubbed `datasets`),
the shared index in the object store, the filter check and its settings. No network."""

from __future__ import annotations

import json
import sys
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from libs.errors import ConfigError
from libs.service import Infra
from libs.settings import load_settings
from libs.storage.objectstore import open_store
from services.filter import main as filter_main
from services.filter.decontam import (
    DecontamIndex,
    index_key,
    load_or_build,
    parse_sources,
    tokens,
)
from services.filter.settings import FilterSettings
from services.filter.stage import FilterStage

MATH_Q = (
    "Let $f(x) = x^3 + 3x^2 - 9x + 7$. Find the sum of all real numbers $x$ such that the tangent line "
    "to the graph of $f$ at $x$ is horizontal."
)
GSM_Q = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)


@pytest.fixture
def bench(tmp_path):
    """Two small benchmark files: JSONL with 'problem', Parquet with 'question'."""
    math_path = tmp_path / "math_test.jsonl"
    math_path.write_text("\n".join(json.dumps(r) for r in [
        {"problem": MATH_Q, "answer": "-2"},
        {"problem": "Compute the number of ordered pairs of positive integers whose product is 36.", "answer": "9"},
        {"problem": "Find x.", "answer": "1"},  # too short to index
    ]) + "\n")  # fmt: skip
    gsm_path = tmp_path / "gsm8k_test.parquet"
    pq.write_table(pa.table({"question": [GSM_Q], "answer": ["72"]}), gsm_path)
    return math_path, gsm_path


def test_tokens_strip_case_punctuation_latex_and_accents():
    assert tokens("Let $f(x) = x^3$, Zoë!") == ["let", "f", "x", "x", "3", "zoe"]


def test_index_finds_a_13_gram_and_names_benchmark_and_ngram(bench):
    math_path, gsm_path = bench
    index = DecontamIndex.build(parse_sources([str(math_path), str(gsm_path)]), 13)
    assert [s["name"] for s in index.sources] == ["math_test", "gsm8k_test"]
    # a generated question that copies a stretch of a benchmark question (other casing/LaTeX)
    hit = index.check("Consider f(x)=x^3+3x^2-9x+7. Find the sum of all real numbers x such that the TANGENT line is flat.")
    assert hit is not None and hit.benchmark == "math_test"
    assert len(hit.ngram.split()) == 13 and hit.ngram.startswith("f x x 3 3x 2 9x 7 find")
    hit = index.check(
        "In April, Natalia gave clips to 48 friends, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether?"
    )
    assert hit.benchmark == "gsm8k_test" and "sold half as many clips" in hit.ngram
    # sharing 12 words in a row is not enough; neither is the same topic
    assert index.check("Natalia sold clips to 48 of her friends in April, and then gave up.") is None
    assert index.check("Natalia sold 48 clips in April and half as many in May. How many in total?") is None


def test_unicode_math_and_latex_compare_alike(tmp_path):
    path = tmp_path / "bench.jsonl"
    path.write_text(json.dumps({"question": "If 3 × 4 ≤ x and x ≤ 20, find the number of integers x such that 2x − 1 is prime."}))
    index = DecontamIndex.build(parse_sources([str(path)]), 13)
    hit = index.check(r"If $3 \times 4 \le x$ and $x \le 20$, find the number of integers $x$ such that $2x - 1$ is odd.")
    assert hit is not None and hit.ngram.startswith("if 3 times 4 le x")


def test_short_benchmark_questions_are_indexed_whole(bench):
    math_path, _ = bench
    index = DecontamIndex.build(parse_sources([str(math_path)]), 13)
    q = "Please compute the number of ordered pairs of positive integers whose product is 36, then double it."
    assert index.check(q).ngram == "compute the number of ordered pairs of positive integers whose product is 36"
    assert index.check("Find x if 2x = 4.") is None  # "Find x." (2 tokens) is too short to be indexed


def test_field_selection_and_bad_sources(tmp_path, bench):
    math_path, _ = bench
    other = tmp_path / "custom.json"
    other.write_text(json.dumps([{"prompt": GSM_Q}]))
    with pytest.raises(ConfigError, match="SQ_DECONTAM_SOURCES.*question, problem, input"):
        DecontamIndex.build(parse_sources([str(other)]), 13)
    index = DecontamIndex.build(parse_sources([f"{other}#prompt"]), 13)
    assert index.check(GSM_Q).benchmark == "custom"
    index = DecontamIndex.build(parse_sources([str(other)], default_field="prompt"), 13)  # SQ_DECONTAM_FIELD
    assert index.check(GSM_Q) is not None
    with pytest.raises(ConfigError, match="no field 'prompt'"):
        DecontamIndex.build(parse_sources([f"{math_path}#prompt"]), 13)
    with pytest.raises(ConfigError, match="no such file"):
        DecontamIndex.build(parse_sources([str(tmp_path / "missing.jsonl")]), 13)
    bad = tmp_path / "bench.csv"
    bad.write_text("question\nx\n")
    with pytest.raises(ConfigError, match=r"\.jsonl, \.json or \.parquet"):
        DecontamIndex.build(parse_sources([str(bad)]), 13)


def test_hf_dataset_source_through_datasets_load_dataset(monkeypatch):
    calls = []

    def load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return [{"question": GSM_Q, "answer": "72"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    index = DecontamIndex.build(parse_sources(["hf:openai/gsm8k:main", "hf:some/bench@validation#question"]), 13)
    assert calls == [("openai/gsm8k", "main", "test"), ("some/bench", None, "validation")]
    assert index.check(GSM_Q).benchmark == "openai/gsm8k:main"


def test_index_is_built_once_and_shared_through_the_store(tmp_path, bench):
    math_path, gsm_path = bench
    store = open_store(str(tmp_path / "store"))
    sources = [str(math_path), str(gsm_path)]
    first = load_or_build(store, sources, 13)
    key = index_key(parse_sources(sources), 13)
    assert key.startswith("indexes/decontam/") and key.endswith(".json.gz") and store.exists(key)
    stored = store.get_bytes(key)
    # another replica: loads it (the sources need not even be reachable any more)
    math_path.unlink()
    gsm_path.unlink()
    second = load_or_build(store, sources, 13)
    assert second.check(GSM_Q).benchmark == "gsm8k_test" and len(second.hashes) == len(first.hashes)
    assert store.get_bytes(key) == stored
    # another n is another index
    assert index_key(parse_sources(sources), 8) != key
    # rebuilding is deterministic (byte-identical), so racing builders write the same object
    assert first.to_bytes() == DecontamIndex.from_bytes(stored).to_bytes()


def test_settings_validate_and_name_the_variable(monkeypatch):
    monkeypatch.setenv("SQ_DECONTAM_NGRAM", "2")
    with pytest.raises(ConfigError, match="SQ_DECONTAM_NGRAM"):
        load_settings(FilterSettings)
    monkeypatch.setenv("SQ_DECONTAM_NGRAM", "10")
    monkeypatch.setenv("SQ_DECONTAM_SOURCES", "a.jsonl,,b.jsonl")
    with pytest.raises(ConfigError, match="SQ_DECONTAM_SOURCES"):
        load_settings(FilterSettings)
    monkeypatch.setenv("SQ_DECONTAM_SOURCES", " a.jsonl , hf:x/y@test#problem ")
    s = load_settings(FilterSettings)
    assert s.decontam_source_list == ["a.jsonl", "hf:x/y@test#problem"] and s.decontam_ngram == 10


async def test_filter_build_loads_the_index_and_rejects_contaminated(nats_server, tmp_path, bench, monkeypatch):
    from libs.queue.topology import connect, ensure_topology

    math_path, gsm_path = bench
    nc, js = await connect(nats_server.url, "filter", max_reconnect_attempts=5)
    try:
        kv = await ensure_topology(js)
        settings = FilterSettings(
            engine="fake", store_url=str(tmp_path / "store"), decontam_sources=f"{math_path},{gsm_path}",
            grpc_port=0, worker_enabled=False,
        )  # fmt: skip
        svc = await filter_main.build(settings, Infra(nc=nc, js=js, kv=kv), engine=object())
        stage: FilterStage = svc.worker_spec.handler.__self__
        res = await stage.check("Quick one: " + GSM_Q, "run1", "run1-0", judge=False)
        assert res.failed.check == "decontam" and res.failed.reason == "contaminated"
        assert res.failed.detail.startswith("benchmark=gsm8k_test ngram='")
        farm = "A farmer has 12 cows and 18 chickens. How many legs are there?"
        ok = await stage.check(farm, "run1", "run1-1", judge=False)
        assert [v.check for v in ok.verdicts] == ["length", "language", "decontam", "dedup"] and ok.failed is None
        assert open_store(str(tmp_path / "store")).list("indexes/decontam/")
    finally:
        await nc.close()
