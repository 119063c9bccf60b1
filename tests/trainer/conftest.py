"""Fixtures for the trainer tests: a tiny Llama with the default model's tokenizer, run shards
written and announced like the coordinator does, and one torch thread (the CI box has 2 cores
shared with other tests; two threads contend and run ~4x slower than one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.trainer.helpers import make_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer Llama (hidden 128, head dim 64: vLLM's CPU attention supports it) with the
    default model's tokenizer and chat template, randomly initialized and saved."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def sft_rows() -> list[dict]:
    return [
        {"question": f"What is {i} + {i + 1}?", "solution": f"{i} + {i + 1} = {2 * i + 1}. The final answer is \\boxed{{{2 * i + 1}}}."}
        for i in range(12)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
