"""Training data in: sources -> records -> the text each trainer learns from.

Sources (any mix, one ``--data`` each):

* local files: ``.jsonl`` / ``.json`` (one object per line) / ``.parquet``;
* local directories: every ``.parquet`` / ``.jsonl`` file below it, in name order (a run's
  directory or its ``shards/``, an export);
* ``s3://bucket/prefix/file.parquet`` (one object) or ``s3://bucket/prefix`` (every ``.parquet`` /
  ``.jsonl`` under it, e.g. ``s3://bucket/data/runs/RUN_ID``), through
  :func:`libs.storage.objectstore.open_store`;
* ``run:<RUN_ID>`` (or ``--run RUN_ID``): the run's shards in the store given by ``--store``;
* a Hugging Face dataset id (``org/name`` or ``org/name:split``), only when hub access is
  allowed (``HF_HUB_OFFLINE`` unset).

Formats (METHOD §1, §2, §6), all rendered with the trained model's own chat template:

* QFT: ``text`` = template prefix up to the user's text + question + end-of-turn marker;
* QPO: ``prompt`` = the same empty prefix, ``chosen`` / ``rejected`` = question + end-of-turn
  marker (the prompt recorded in the pairs is checked against it, not trusted);
* SFT: ``prompt`` = the chat-templated question (solver instruction by default),
  ``completion`` = solution + the assistant turn's end marker; the loss covers the completion only.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from libs.benchmarks import QUESTION_FIELDS
from libs.engines.templates import chat_prompt, end_of_turn_stops, scratch_prefix
from libs.errors import ConfigError
from libs.storage.objectstore import ObjectStore, open_store

log = logging.getLogger("scalequest.trainer")

DATA_SUFFIXES = (".parquet", ".jsonl", ".json")
#: What a directory or prefix is scanned for: a run's prefix also holds manifest.json / status.json.
SCAN_SUFFIXES = (".parquet", ".jsonl")
PROMPT_STYLES = ("solver", "plain")
_SENTINEL = "SQSENTINELANSWER9C1E"


# --------------------------------------------------------------------------------------------
# reading


def _rows_from_bytes(name: str, data: bytes) -> list[dict[str, Any]]:
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(data)).to_pylist()
    text = data.decode("utf-8")
    if name.endswith(".json") and text.lstrip().startswith("["):  # a JSON array of rows
        try:
            return [r for r in json.loads(text) if isinstance(r, dict)]
        except json.JSONDecodeError as e:
            raise ConfigError(f"{name}: not valid JSON ({e.msg})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ConfigError(f"{name}:{n}: not a JSON line ({e.msg})") from None
    return rows


def _local_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(SCAN_SUFFIXES) and not p.name.startswith("."))


def _store_rows(store: ObjectStore, keys: Iterable[str]) -> Iterator[dict[str, Any]]:
    for key in keys:
        yield from _rows_from_bytes(key, store.get_bytes(key))


def run_records(store: ObjectStore, run_id: str) -> Iterator[dict[str, Any]]:
    """Every record of a run's shards, shard by shard (sorted by key)."""
    from libs.storage.shards import list_shards, read_shard

    keys = list_shards(store, run_id)
    if not keys:
        raise ConfigError(f"run {run_id!r} has no shards in {store.url}")
    for key in keys:
        yield from read_shard(store, key)


def read_source(source: str, store_url: str | None = None) -> Iterator[dict[str, Any]]:
    """Rows of one source (see the module docstring for the forms accepted)."""
    if source.startswith("run:"):
        if not store_url:
            raise ConfigError(f"{source}: reading a run needs --store")
        yield from run_records(open_store(store_url), source[4:])
        return
    if source.startswith("s3://"):
        uri = source.rstrip("/")
        if uri.endswith(DATA_SUFFIXES):
            parent, name = uri.rsplit("/", 1)
            yield from _rows_from_bytes(name, open_store(parent).get_bytes(name))
            return
        store = open_store(uri)
        keys = [k for k in store.list("") if k.endswith(SCAN_SUFFIXES)]
        if not keys:
            raise ConfigError(f"no .parquet/.jsonl files under {uri}")
        yield from _store_rows(store, keys)
        return
    path = Path(source.removeprefix("file://")).expanduser()
    if path.exists():
        files = _local_files(path)
        if not files:
            raise ConfigError(f"no .parquet/.jsonl files under {path}")
        for f in files:
            yield from _rows_from_bytes(f.name, f.read_bytes())
        return
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ConfigError(
            f"data source {source!r} is not a local path, s3:// URI or run:ID, and dataset ids need hub "
            "access (HF_HUB_OFFLINE is set)"
        )
    import datasets

    name, _, split = source.partition(":")
    yield from datasets.load_dataset(name, split=split or "train")


def load_rows(sources: list[str], *, run_id: str | None = None, store_url: str | None = None,
              limit: int | None = None) -> list[dict[str, Any]]:
    """All rows of ``sources`` (+ the run's shards), the first ``limit`` if given."""
    srcs = list(sources) + ([f"run:{run_id}"] if run_id else [])
    if not srcs:
        raise ConfigError("no training data: give --data PATH|URI (repeatable) or --run RUN_ID")
    out: list[dict[str, Any]] = []
    for src in srcs:
        for row in read_source(src, store_url):
            out.append(row)
            if limit is not None and len(out) >= limit:
                return out
    if not out:
        raise ConfigError(f"the training data is empty ({', '.join(srcs)})")
    return out


# --------------------------------------------------------------------------------------------
# template pieces


def question_end(tokenizer: Any) -> str:
    """What closes a user turn in the template (``<|im_end|>`` in ChatML)."""
    stops = end_of_turn_stops(tokenizer)
    if not stops:
        raise ConfigError("the tokenizer's template has no end-of-turn marker and no EOS token")
    return stops[0]


def answer_end(tokenizer: Any) -> str:
    """What closes an assistant turn in the template (the first special token after its text)."""
    try:
        text = chat_prompt(
            tokenizer,
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _SENTINEL}],
            add_generation_prompt=False,
        )
    except Exception:
        text = ""
    cut = text.find(_SENTINEL)
    if cut >= 0:
        rest = text[cut + len(_SENTINEL):].lstrip()
        specials = sorted(set(getattr(tokenizer, "all_special_tokens", None) or []), key=len, reverse=True)
        for tok in specials:
            if tok and rest.startswith(tok):
                return tok
    eos = getattr(tokenizer, "eos_token", None)
    if not eos:
        raise ConfigError("cannot find the end of an assistant turn: no special token follows it and no EOS token")
    return eos


def _question(row: dict[str, Any], field: str | None) -> str | None:
    fields = (field,) if field else (*QUESTION_FIELDS, "text")
    for f in fields:
        v = row.get(f)
        if isinstance(v, str) and v.strip():
            return v.strip()
    return None


def prompt_messages(question: str, style: str = "solver") -> list[dict[str, str]]:
    """The chat turn an SFT example is trained on and an evaluation question is asked with:
    ``solver`` = the solver's zero-shot instruction (step by step, final answer in \\boxed{}),
    ``plain`` = the bare question."""
    if style not in PROMPT_STYLES:
        raise ConfigError(f"unknown prompt style {style!r}; expected one of {', '.join(PROMPT_STYLES)}")
    if style == "solver":
        from services.solver.stage import solve_messages

        return solve_messages(question, "zero_shot")
    return [{"role": "user", "content": question}]


def sft_prompt(tokenizer: Any, question: str, style: str = "solver") -> str:
    """The chat-templated prompt of an SFT example."""
    return chat_prompt(tokenizer, prompt_messages(question, style), add_generation_prompt=True)


# --------------------------------------------------------------------------------------------
# per-trainer formats


def qft_examples(rows: Iterable[dict[str, Any]], tokenizer: Any, question_field: str | None = None) -> list[dict[str, str]]:
    """``{"text": prefix + question + end}`` per row with a question."""
    prefix, end = scratch_prefix(tokenizer), question_end(tokenizer)
    out, skipped = [], 0
    for row in rows:
        q = _question(row, question_field)
        if q is None:
            skipped += 1
            continue
        out.append({"text": prefix + q + end})
    if skipped:
        log.warning("qft: %d rows without a question field were skipped", skipped)
    if not out:
        raise ConfigError(f"qft: no row has a question field ({question_field or ', '.join(QUESTION_FIELDS)})")
    return out


def qpo_examples(rows: Iterable[dict[str, Any]], tokenizer: Any) -> list[dict[str, str]]:
    """``{"prompt", "chosen", "rejected"}`` per preference pair (METHOD §2)."""
    prefix, end = scratch_prefix(tokenizer), question_end(tokenizer)
    out, other_prompt = [], 0
    for i, row in enumerate(rows):
        chosen, rejected = row.get("chosen"), row.get("rejected")
        if not (isinstance(chosen, str) and isinstance(rejected, str)):
            raise ConfigError(f"qpo: row {i} has no string 'chosen' and 'rejected' (QPO pairs come from `scalequest run --type qpo`)")
        if row.get("prompt") not in (None, "", prefix):
            other_prompt += 1
        out.append({"prompt": prefix, "chosen": chosen.strip() + end, "rejected": rejected.strip() + end})
    if other_prompt:
        log.warning("qpo: %d pairs were recorded with another prompt than this model's empty-prompt template; "
                    "training uses the model's template", other_prompt)
    if not out:
        raise ConfigError("qpo: no preference pairs")
    return out


def sft_example(row: dict[str, Any], tokenizer: Any, *, style: str, end: str, question_field: str | None = None,
                solution_field: str = "solution") -> dict[str, str] | None:
    q = _question(row, question_field)
    sol = row.get(solution_field)
    if q is None or not isinstance(sol, str) or not sol.strip():
        return None
    return {"prompt": sft_prompt(tokenizer, q, style), "completion": sol.strip() + end}


def sft_examples(rows: Iterable[dict[str, Any]], tokenizer: Any, *, style: str = "solver",
                 question_field: str | None = None, solution_field: str = "solution") -> list[dict[str, str]]:
    """``{"prompt", "completion"}`` per accepted pair (METHOD §6)."""
    end = answer_end(tokenizer)
    out = []
    for row in rows:
        ex = sft_example(row, tokenizer, style=style, end=end, question_field=question_field, solution_field=solution_field)
        if ex is not None:
            out.append(ex)
    if not out:
        raise ConfigError(f"sft: no row has both a question and a {solution_field!r}")
    return out


def tokenize_sft(example: dict[str, str], tokenizer: Any, max_length: int | None) -> dict[str, list[int]]:
    """Token ids and labels of one prompt/completion example, the prompt masked with -100 (what
    TRL's preparation does; used for streamed data that skips it)."""
    prompt_ids = tokenizer(example["prompt"], add_special_tokens=False)["input_ids"]
    ids = tokenizer(example["prompt"] + example["completion"], add_special_tokens=False)["input_ids"]
    n = 0
    while n < min(len(prompt_ids), len(ids)) and prompt_ids[n] == ids[n]:
        n += 1
    labels = [-100] * n + ids[n:]
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels}
