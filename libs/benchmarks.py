"""Benchmark problems from local files: question text and gold final answer.

Reads JSONL or Parquet rows in the common math-benchmark shapes and returns
:class:`Problem` objects; the gold answer is taken, in order, from

- ``final_answer`` (OlympiadBench: a list rendered as a string, e.g. ``"['2']"``),
- ``answer`` when it is a GSM8K solution (the number after ``####``),
- ``answer`` as is (AIME, AMC, College Math: ``"204"``, ``"$10-4 n$"``),
- the last ``\\boxed{}`` of ``solution`` (MATH style).

Questions come from ``question``, ``problem`` or ``input``. The project ships no benchmark
data; users pass paths to their own copies.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

from libs.answers import extract_boxed

QUESTION_FIELDS = ("question", "problem", "input")


@dataclass(frozen=True)
class Problem:
    question: str
    gold: str
    source: str = ""
    index: int = 0


def _read_rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not a JSON line ({e.msg})") from None
    return rows


def gold_answer(row: dict) -> str:
    """The gold final answer of one benchmark row ("" when none can be found)."""
    final = row.get("final_answer")
    if final not in (None, "", "None"):
        if isinstance(final, str) and final.startswith("["):
            try:
                parts = ast.literal_eval(final)
                return ", ".join(str(p) for p in parts)
            except (ValueError, SyntaxError):
                pass
        if isinstance(final, list):
            return ", ".join(str(p) for p in final)
        return str(final)
    answer = row.get("answer")
    if isinstance(answer, str) and "####" in answer:
        return answer.rsplit("####", 1)[1].strip().replace(",", "")
    if answer not in (None, ""):
        return str(answer).strip()
    solution = row.get("solution")
    if isinstance(solution, str):
        return extract_boxed(solution) or ""
    return ""


def load_problems(path: str | Path, limit: int | None = None, question_field: str | None = None) -> list[Problem]:
    """Problems of one benchmark file (the first ``limit``); raises ValueError on a file
    without a recognizable question field or gold answer."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"benchmark file not found: {p}")
    rows = _read_rows(p)
    if limit is not None:
        rows = rows[:limit]
    out = []
    for i, row in enumerate(rows):
        fields = (question_field,) if question_field else QUESTION_FIELDS
        q = next((row[f] for f in fields if isinstance(row.get(f), str) and row[f].strip()), None)
        if q is None:
            raise ValueError(f"{p}: row {i} has none of the question fields {', '.join(fields)}")
        gold = gold_answer(row)
        if not gold:
            raise ValueError(f"{p}: row {i} has no gold answer (final_answer, answer or a boxed solution)")
        out.append(Problem(question=q.strip(), gold=gold, source=p.parent.name or p.stem, index=i))
    return out
