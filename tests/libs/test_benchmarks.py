"""Benchmark files -> (question, gold answer) in each common shape (fixtures written here)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from libs.benchmarks import gold_answer, load_problems


@pytest.mark.parametrize(
    "row, gold",
    [
        ({"question": "q", "answer": "She makes 9 * 2 = 18.\n#### 1,800"}, "1800"),  # GSM8K
        ({"problem": "q", "answer": "204"}, "204"),  # AIME
        ({"question": "q", "answer": "$10-4 n$"}, "$10-4 n$"),  # College Math
        ({"question": "q", "final_answer": "['2']", "solution": "x"}, "2"),  # OlympiadBench
        ({"question": "q", "final_answer": "['1', '3']"}, "1, 3"),
        ({"problem": "q", "solution": "so \\boxed{\\frac{1}{2}} and done"}, "\\frac{1}{2}"),  # MATH
        ({"question": "q"}, ""),
    ],
)
def test_gold_answer(row, gold):
    assert gold_answer(row) == gold


def test_load_jsonl_and_parquet(tmp_path):
    rows = [{"question": f"What is {i}+1?", "answer": f"It is {i + 1}.\n#### {i + 1}"} for i in range(5)]
    p = tmp_path / "gsm8k" / "test.jsonl"
    p.parent.mkdir()
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    probs = load_problems(p, limit=3)
    assert [(x.question, x.gold, x.source, x.index) for x in probs] == [
        ("What is 0+1?", "1", "gsm8k", 0), ("What is 1+1?", "2", "gsm8k", 1), ("What is 2+1?", "3", "gsm8k", 2)
    ]
    pq.write_table(pa.Table.from_pylist([{"problem": "P?", "answer": "7"}]), tmp_path / "b.parquet")
    assert load_problems(tmp_path / "b.parquet")[0].gold == "7"


def test_errors_name_the_file_and_row(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_problems(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "1"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        load_problems(bad)
    noq = tmp_path / "noq.jsonl"
    noq.write_text('{"text": "q", "answer": "1"}\n')
    with pytest.raises(ValueError, match="row 0 has none of the question fields"):
        load_problems(noq)
    nogold = tmp_path / "nogold.jsonl"
    nogold.write_text('{"question": "q"}\n')
    with pytest.raises(ValueError, match="no gold answer"):
        load_problems(nogold)
