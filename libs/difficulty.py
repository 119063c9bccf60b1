"""Learned difficulty: a regression head (``*ForSequenceClassification``, ``num_labels=1``,
``problem_type="regression"``) that reads the bare question text and predicts its *fail rate*,
the share of solver candidates that do not agree with the selected answer
(services/reward/difficulty.py computes the observed one on every record). METHOD §4 filters on
difficulty; a learned scorer predicts it before any solving is spent.

* :class:`DifficultyScorer` runs on a :class:`~libs.engines.pooling.ScoringEngine` (vLLM
  pooling runner or transformers) and clips the raw output to [0, 1].
* :func:`build_difficulty_scorer` makes one from filter settings (``SQ_DIFFICULTY_MODEL``,
  ``SQ_DIFFICULTY_MODEL_RUNNER``, ``SQ_DIFFICULTY_MODEL_MAX_LEN``; the fields are in
  :class:`DifficultyModelSettings`, a mixin for the filter's settings class).
* :func:`train_difficulty_head` fine-tunes one from any causal-LM or sequence-classification
  checkpoint on (question, observed fail rate) pairs, e.g. from a run's records.

Input format, identical in training and scoring: the question text exactly as stored, no chat
template, scored at its last token.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.engines.pooling import ScoringEngine, get_scorer, last_token_outputs, tokenize
from libs.settings import ENV_PREFIX

log = logging.getLogger(__name__)


class DifficultyModelSettings(BaseSettings):
    """Settings of the learned difficulty scorer; mix into the filter's settings class
    (``class FilterSettings(CommonSettings, DifficultyModelSettings)``) to read them from
    ``SQ_DIFFICULTY_MODEL*``."""

    # The same as CommonSettings': pydantic merges the bases' configs, later bases winning.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)

    difficulty_model: str = Field("", description="Difficulty regression model directory; empty = none.")
    difficulty_model_runner: Literal["vllm", "transformers"] = Field(
        "vllm", description="vllm: pooling runner in process; transformers: AutoModelForSequenceClassification."
    )
    difficulty_model_max_len: int = Field(1024, ge=16, description="Longest question in tokens the scorer reads.")


class DifficultyScorer:
    """Predicted fail rate in [0, 1] per question (None for a question longer than the model's
    context). Safe to call concurrently; the engine batches."""

    def __init__(self, engine: ScoringEngine) -> None:
        self.engine = engine

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    async def predict(self, questions: Sequence[str]) -> list[float | None]:
        raw = await self.engine.score(list(questions), skip_overlong=True)
        return [None if math.isnan(x) else min(1.0, max(0.0, x)) for x in raw]

    async def predict_one(self, question: str) -> float | None:
        (value,) = await self.predict([question])
        return value


async def build_difficulty_scorer(settings: Any) -> DifficultyScorer | None:
    """The scorer named by `settings` (``difficulty_model``, ``difficulty_model_runner``,
    ``difficulty_model_max_len``; absent fields take :class:`DifficultyModelSettings`'
    defaults), its engine shared through the registry; None when no model is set."""
    defaults = DifficultyModelSettings.model_fields
    model = getattr(settings, "difficulty_model", "") or ""
    if not model:
        return None
    runner = getattr(settings, "difficulty_model_runner", defaults["difficulty_model_runner"].default)
    max_len = getattr(settings, "difficulty_model_max_len", defaults["difficulty_model_max_len"].default)
    kwargs: dict[str, Any] = {"max_model_len": max_len}
    gpu_share = getattr(settings, "difficulty_model_gpu_memory_utilization", None)
    if gpu_share is not None:
        kwargs["gpu_memory_utilization"] = gpu_share
    return DifficultyScorer(await get_scorer(model, runner, **kwargs))


# -- training --------------------------------------------------------------------------------------


@dataclass
class TrainReport:
    out_dir: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def first_loss(self) -> float:
        return self.losses[0]

    @property
    def final_loss(self) -> float:
        return self.losses[-1]


def train_difficulty_head(
    base_model_dir: str | Path,
    questions: Sequence[str],
    fail_rates: Sequence[float],
    out_dir: str | Path,
    steps: int = 100,
    *,
    batch_size: int = 8,
    lr: float = 2e-5,
    head_lr: float | None = None,
    freeze_base: bool = False,
    max_len: int = 512,
    seed: int = 0,
    save_dtype: str = "auto",
) -> TrainReport:
    """Fine-tune a regression head on (question, fail rate) with MSE and save it to `out_dir`.

    `base_model_dir` is a causal LM (its LM head is replaced by a fresh one-output head) or a
    sequence-classification checkpoint (trained further). Training runs in float32 on CPU or the
    first GPU; the saved model (``problem_type="regression"``, ``num_labels=1``, tokenizer
    included) loads in both scoring runners. `head_lr` (default ``lr * 10``) is the new head's
    learning rate; ``freeze_base`` trains the head alone. `save_dtype` "auto" keeps the base
    checkpoint's dtype. Questions longer than `max_len` tokens are cut to their last `max_len`.
    """
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    if len(questions) != len(fail_rates) or not questions:
        raise ValueError(f"need as many fail rates as questions (got {len(questions)} and {len(fail_rates)}), at least one")
    if any(not 0.0 <= float(y) <= 1.0 for y in fail_rates):
        raise ValueError("fail rates must lie in [0, 1]")
    if steps < 1 or batch_size < 1:
        raise ValueError("steps and batch_size must be >= 1")
    started = time.monotonic()
    base = Path(base_model_dir)
    out = Path(out_dir)
    torch.manual_seed(seed)
    rng = random.Random(seed)

    tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    base_config = AutoConfig.from_pretrained(str(base), local_files_only=True)
    base_dtype = getattr(base_config, "dtype", None) or getattr(base_config, "torch_dtype", None) or torch.float32
    if isinstance(base_dtype, str):
        base_dtype = getattr(torch, base_dtype)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base), num_labels=1, problem_type="regression", dtype=torch.float32, local_files_only=True
    )
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if config.pad_token_id is None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        config.pad_token_id = pad
        model.config.pad_token_id = pad
    model.config.id2label = {0: "fail_rate"}
    model.config.label2id = {"fail_rate": 0}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).train()

    head = [p for n, p in model.named_parameters() if n.split(".")[0] in ("score", "classifier", "v_head")]
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    if not head:  # unknown head name: train everything at one rate
        head, body = list(model.parameters()), []
    if freeze_base:
        for p in body:
            p.requires_grad_(False)
    groups = [{"params": head, "lr": head_lr if head_lr is not None else lr * 10}]
    if body and not freeze_base:
        groups.append({"params": body, "lr": lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)

    encoded = [tokenize(tokenizer, q)[-max_len:] for q in questions]
    targets = [float(y) for y in fail_rates]
    order: list[int] = []
    losses: list[float] = []
    for _ in range(steps):
        batch: list[int] = []
        while len(batch) < min(batch_size, len(encoded)):
            if not order:
                order = list(range(len(encoded)))
                rng.shuffle(order)
            batch.append(order.pop())
        preds = last_token_outputs(model, [encoded[i] for i in batch]).float().reshape(-1)
        target = torch.tensor([targets[i] for i in batch], dtype=torch.float32, device=preds.device)
        loss = torch.nn.functional.mse_loss(preds, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))

    model.eval()
    dtype = base_dtype if save_dtype == "auto" else getattr(torch, save_dtype)
    model.to("cpu", dtype=dtype)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    seconds = time.monotonic() - started
    log.info("difficulty head trained from %s in %.1fs: loss %.4f -> %.4f, saved to %s", base, seconds, losses[0], losses[-1], out)
    return TrainReport(out_dir=out, steps=steps, losses=losses, seconds=seconds)
