"""Scoring engines: one number per input from a model with a scalar head (a reward model over
(question, solution), a learned difficulty regressor over a question).

A scoring model is a ``*ForSequenceClassification`` checkpoint with ``num_labels=1`` (or a
reward model that vLLM serves with a per-token value head, such as InternLM2-7B-Reward). The
score is the model's **raw** output at the input's last token: no sigmoid or softmax is applied,
so reward-model logits and regression outputs come back as the model computed them, and callers
normalize (services/reward/stage.py) or clip (libs/difficulty.py) as their use needs.

Inputs are plain texts, or chat-message lists that are rendered with the model's own chat
template without a generation prompt (``[{"role": "user", "content": question},
{"role": "assistant", "content": solution}]`` is how reward models such as InternLM2-7B-Reward
score a response). Both runners tokenize with the model directory's Hugging Face tokenizer by
the same rule, so they see the same token ids.

Runners:

* :class:`VLLMScoringEngine`: vLLM's pooling runner in process (``AsyncLLM`` with
  ``runner="pooling"``, requests sent through ``AsyncLLM.encode`` with
  ``PoolingParams(task="classify", use_activation=False)``; models that only offer
  ``token_classify``, like InternLM2ForRewardModel, are scored at their last token). Concurrent
  callers share one continuous batch, as with generation.
* :class:`TransformersScoringEngine`: ``AutoModelForSequenceClassification`` under
  ``torch.inference_mode`` in one worker thread, batched by length (the fallback where vLLM cannot
  load a model, and the reference the tests compare vLLM with).
* :class:`FakeScoringEngine`: a function of the text (tests).

Stages get engines from :func:`libs.engines.registry.get_scoring_engine` (through
:func:`scoring_spec`), so one process loads one copy of each scoring model.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import hashlib
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from libs.engines import templates
from libs.errors import ConfigError, InvalidArgument, NotReady

log = logging.getLogger(__name__)

#: A text, or chat messages rendered with the model's template (no generation prompt).
ScoreInput = str | Sequence[Mapping[str, str]]

RUNNERS = ("vllm", "transformers")


class ScoringEngine(abc.ABC):
    """One float per input. Implementations are safe to call concurrently from many coroutines
    of the event loop that started them."""

    #: Model identifier recorded in provenance.
    model_name: str
    #: Longest input in tokens.
    max_model_len: int

    @abc.abstractmethod
    async def start(self) -> None:
        """Load weights. Idempotent."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release resources. Idempotent."""

    @property
    def ready(self) -> bool:
        return True

    @abc.abstractmethod
    async def score(self, inputs: Sequence[ScoreInput], *, skip_overlong: bool = False) -> list[float]:
        """Raw scalar output for each input, in order.

        An input longer than `max_model_len` tokens raises InvalidArgument (before anything is
        scored), or with ``skip_overlong=True`` scores as NaN.
        """

    async def score_one(self, item: ScoreInput) -> float:
        (value,) = await self.score([item])
        return value


# -- shared: templates, tokenization, last-token forward -----------------------------------------


def render_messages(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> str:
    """Chat messages as the model's template writes a finished conversation. A tokenizer
    without a chat template gets the messages' contents joined by blank lines."""
    msgs = [dict(m) for m in messages]
    if getattr(tokenizer, "chat_template", None) is None:
        return "\n\n".join(m.get("content", "") for m in msgs)
    return templates.chat_prompt(tokenizer, msgs, add_generation_prompt=False)


def tokenize(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text`; the tokenizer's special tokens are added unless the text already
    begins with BOS (a rendered template), the same rule the generation engine uses."""
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and text.startswith(bos))
    return list(tokenizer.encode(text, add_special_tokens=add_special))


def _render_inputs(tokenizer: Any, inputs: Sequence[ScoreInput]) -> list[str]:
    texts = []
    for i, item in enumerate(inputs):
        if isinstance(item, str):
            text = item
        elif isinstance(item, Sequence) and all(isinstance(m, Mapping) for m in item):
            text = render_messages(tokenizer, item)
        else:
            raise InvalidArgument(f"inputs[{i}] is a {type(item).__name__}, expected a str or a list of chat messages")
        if not text:
            raise InvalidArgument(f"inputs[{i}] is empty")
        texts.append(text)
    return texts


def last_token_outputs(model: Any, batch: Sequence[Sequence[int]]) -> Any:
    """The head's output at each sequence's last token, ``[len(batch), num_labels]``.

    Right-pads the batch with a filler id that occurs in none of its sequences and points the
    model's ``pad_token_id`` at it for the call, so transformers' sequence-classification
    pooling ("rightmost token that is not padding") lands on the last real token even when that
    token is the tokenizer's pad token (SmolLM2's pad is ``<|im_end|>``). That is the position
    vLLM's LAST pooling reads. Grad mode is the caller's choice (the trainer needs it).
    """
    import torch

    lengths = [len(s) for s in batch]
    width = max(lengths)
    used = {t for s in batch for t in s}
    vocab = model.get_input_embeddings().num_embeddings
    filler = next((i for i in range(vocab - 1, -1, -1) if i not in used), None)
    if filler is None:  # pragma: no cover - a batch that uses every token id
        raise InvalidArgument("cannot pad a batch that contains every token id")
    device = next(model.parameters()).device
    ids = torch.full((len(batch), width), filler, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, seq in enumerate(batch):
        ids[row, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, : len(seq)] = 1
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    saved = config.pad_token_id
    config.pad_token_id = filler
    try:
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device))
    finally:
        config.pad_token_id = saved
    return out.logits


class _TokenizingEngine(ScoringEngine):
    """Renders and tokenizes inputs, enforces `max_model_len`, and hands token ids to
    `_score_ids` (one runner per subclass)."""

    def __init__(self, model: str | Path, served_name: str | None, max_model_len: int, tokenizer: str | None) -> None:
        self.model_path = str(model)
        self.model_name = served_name or Path(self.model_path.rstrip("/")).name
        self.max_model_len = max_model_len
        self._tokenizer_path = tokenizer or self.model_path
        self._tokenizer: Any = None
        self._closed = False
        #: Seconds the last `start()` took.
        self.load_seconds: float | None = None

    def _load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self._tokenizer_path, local_files_only=True)

    def _require_tokenizer(self) -> Any:
        if self._tokenizer is None or self._closed:
            raise NotReady(f"scoring engine for {self.model_name} is not started" if not self._closed else "engine closed")
        return self._tokenizer

    def render(self, messages: Sequence[Mapping[str, str]]) -> str:
        """What `score` feeds the model for chat messages."""
        return render_messages(self._require_tokenizer(), messages)

    def encode(self, inputs: Sequence[ScoreInput]) -> list[list[int]]:
        tok = self._require_tokenizer()
        return [tokenize(tok, text) for text in _render_inputs(tok, inputs)]

    async def score(self, inputs: Sequence[ScoreInput], *, skip_overlong: bool = False) -> list[float]:
        if not self.ready:
            raise NotReady(f"scoring engine for {self.model_name} is not started" if not self._closed else "engine closed")
        if not inputs:
            return []
        big = sum(len(x) if isinstance(x, str) else 1000 for x in inputs) > 20_000
        token_ids = await asyncio.to_thread(self.encode, inputs) if big else self.encode(inputs)
        fits = [len(ids) <= self.max_model_len for ids in token_ids]
        if not all(fits) and not skip_overlong:
            i = fits.index(False)
            raise InvalidArgument(
                f"inputs[{i}] is {len(token_ids[i])} tokens; {self.model_name} is served with max_model_len={self.max_model_len}"
            )
        todo = [ids for ids, ok in zip(token_ids, fits) if ok]
        scored = iter(await self._score_ids(todo) if todo else [])
        return [next(scored) if ok else math.nan for ok in fits]

    @abc.abstractmethod
    async def _score_ids(self, token_ids: list[list[int]]) -> list[float]: ...


def _scalar(values: Any, model_name: str) -> float:
    flat = values.reshape(-1)
    if flat.numel() != 1:
        raise ConfigError(
            f"{model_name} outputs {flat.numel()} values per input; a scoring model needs one (num_labels=1)"
        )
    return float(flat[0])


# -- vLLM pooling runner -------------------------------------------------------------------------


class VLLMScoringEngine(_TokenizingEngine):
    """vLLM's pooling runner in process (`AsyncLLM`, ``runner="pooling"``).

    Args:
        model: model directory (or id resolvable offline).
        served_name: name recorded in provenance (default: the directory name).
        max_model_len: longest input in tokens.
        dtype: compute dtype ("auto": the checkpoint's; vLLM on CPU computes float32
            checkpoints in bfloat16 unless told "float32").
        tokenizer: tokenizer directory (default: the model's).
        engine_kwargs: further `AsyncEngineArgs` fields (seed, kv_cache_gib, enforce_eager and
            gpu_memory_utilization are understood as by `VLLMEngine`).
    """

    def __init__(
        self,
        model: str | Path,
        served_name: str | None = None,
        *,
        max_model_len: int = 2048,
        dtype: str = "auto",
        tokenizer: str | None = None,
        **engine_kwargs: Any,
    ) -> None:
        super().__init__(model, served_name, max_model_len, tokenizer)
        self._dtype = dtype
        self._engine_kwargs = engine_kwargs
        self._llm: Any = None
        self._task: str | None = None
        self._start_lock: asyncio.Lock | None = None

    @property
    def ready(self) -> bool:
        return self._llm is not None and self._llm.ready and self._task is not None and not self._closed

    @property
    def task(self) -> str | None:
        """The pooling task used: "classify", or "token_classify" for per-token value heads."""
        return self._task

    async def start(self) -> None:
        if self._llm is not None:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._llm is not None:
                return
            # The generation engine's lifecycle (threaded build, KV-cache size on CPU, ordered
            # shutdown) applies unchanged; only the runner differs.
            from libs.engines.vllm_engine import VLLMEngine

            started = time.monotonic()
            llm = VLLMEngine(
                self.model_path,
                served_name=self.model_name,
                max_model_len=self.max_model_len,
                dtype=self._dtype,
                runner="pooling",
                **({"tokenizer": self._tokenizer_path} if self._tokenizer_path != self.model_path else {}),
                **self._engine_kwargs,
            )
            await llm.start()
            try:
                tasks = tuple(await llm._engine.get_supported_tasks())
                if "classify" in tasks:
                    task = "classify"
                elif "token_classify" in tasks:
                    task = "token_classify"
                else:
                    raise ConfigError(
                        f"{self.model_name} is not a scoring model: vLLM's pooling runner offers {tasks}, "
                        "need 'classify' (a *ForSequenceClassification checkpoint) or 'token_classify'"
                    )
                self._tokenizer = await asyncio.to_thread(self._load_tokenizer)
            except BaseException:
                await llm.close()
                raise
            self._llm, self._task, self._closed = llm, task, False
            self.load_seconds = time.monotonic() - started
            log.info("vLLM scoring engine for %s ready in %.1fs (task %s)", self.model_name, self.load_seconds, task)

    async def close(self) -> None:
        llm, self._llm = self._llm, None
        self._closed = True
        if llm is not None:
            await llm.close()

    async def _score_ids(self, token_ids: list[list[int]]) -> list[float]:
        return list(await asyncio.gather(*(self._score_one(ids) for ids in token_ids)))

    async def _score_one(self, ids: list[int]) -> float:
        from vllm import PoolingParams
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError

        llm = self._llm
        if llm is None:
            raise NotReady("engine closed")
        params = PoolingParams(task=self._task, use_activation=False)
        request_id = f"sq-score-{uuid.uuid4().hex}"
        final = None
        try:
            engine_input = await llm._engine_input(ids)
            async for output in llm._engine.encode(engine_input, params, request_id):
                final = output
        except VLLMClientError as exc:
            raise InvalidArgument(str(exc)) from exc
        except EngineDeadError as exc:
            raise NotReady(f"vLLM scoring engine for {self.model_name} died: {exc}") from exc
        if final is None or not final.finished:
            raise NotReady(f"request {request_id} ended without output (engine shutting down?)")
        error = getattr(final, "error", None)
        if error is not None:
            raise NotReady(f"request {request_id} failed in the engine: {error}")
        data = final.outputs.data
        if self._task == "token_classify":  # [tokens, labels]: the score sits at the last token
            data = data[-1]
        return _scalar(data, self.model_name)


# -- transformers runner -------------------------------------------------------------------------


class TransformersScoringEngine(_TokenizingEngine):
    """`AutoModelForSequenceClassification` on one worker thread, no grad.

    Args:
        model, served_name, max_model_len, tokenizer: as for `VLLMScoringEngine`.
        dtype: "auto" (the checkpoint's), "float32", "bfloat16", "float16".
        batch_size: inputs per forward pass (inputs are sorted by length first).
        device: torch device ("cpu", "cuda"; None = cuda when available).
    """

    def __init__(
        self,
        model: str | Path,
        served_name: str | None = None,
        *,
        max_model_len: int = 2048,
        dtype: str = "auto",
        tokenizer: str | None = None,
        batch_size: int = 8,
        device: str | None = None,
    ) -> None:
        super().__init__(model, served_name, max_model_len, tokenizer)
        if batch_size < 1:
            raise ConfigError("batch_size must be >= 1")
        self._dtype = dtype
        self._batch_size = batch_size
        self._device = device
        self._model: Any = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._start_lock: asyncio.Lock | None = None

    @property
    def ready(self) -> bool:
        return self._model is not None and not self._closed

    async def start(self) -> None:
        if self._model is not None:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._model is not None:
                return
            started = time.monotonic()
            # One thread owns the model: torch runs one forward at a time on it, and the event
            # loop never blocks on a forward pass.
            executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sq-score")
            loop = asyncio.get_running_loop()
            try:
                model, tok = await loop.run_in_executor(executor, self._load)
            except BaseException:
                executor.shutdown(wait=False)
                raise
            self._executor, self._model, self._tokenizer, self._closed = executor, model, tok, False
            self.load_seconds = time.monotonic() - started
            log.info("transformers scoring engine for %s ready in %.1fs", self.model_name, self.load_seconds)

    def _load(self) -> tuple[Any, Any]:
        import torch
        from transformers import AutoModelForSequenceClassification

        dtype: Any = "auto" if self._dtype == "auto" else getattr(torch, self._dtype)
        device = self._device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = AutoModelForSequenceClassification.from_pretrained(self.model_path, dtype=dtype, local_files_only=True)
        if getattr(model.config, "num_labels", 1) != 1:
            raise ConfigError(f"{self.model_name} has num_labels={model.config.num_labels}; a scoring model needs 1")
        model.to(device).eval()
        return model, self._load_tokenizer()

    async def close(self) -> None:
        self._closed = True
        model, self._model = self._model, None
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True)
        del model

    async def _score_ids(self, token_ids: list[list[int]]) -> list[float]:
        if self._executor is None:
            raise NotReady("engine closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._forward_all, token_ids)

    def _forward_all(self, token_ids: list[list[int]]) -> list[float]:
        import torch

        model = self._model
        if model is None:
            raise NotReady("engine closed")
        order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
        out = [0.0] * len(token_ids)
        with torch.inference_mode():
            for start in range(0, len(order), self._batch_size):
                rows = order[start : start + self._batch_size]
                logits = last_token_outputs(model, [token_ids[i] for i in rows]).float().cpu()
                for i, row in zip(rows, logits):
                    out[i] = _scalar(row, self.model_name)
        return out


# -- fake ----------------------------------------------------------------------------------------


def _hash_score(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") / 2**32 * 8.0 - 4.0


class FakeScoringEngine(ScoringEngine):
    """Scores with ``fn(text)`` (default: a hash of the text, in [-4, 4)). Chat messages are
    rendered as ``role: content`` lines. Records every rendered text in `calls`."""

    def __init__(self, fn: Callable[[str], float] | None = None, *, model_name: str = "fake-scorer", max_model_len: int = 1 << 30) -> None:
        self.fn = fn or _hash_score
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.calls: list[str] = []
        self._started = False

    @property
    def ready(self) -> bool:
        return self._started

    async def start(self) -> None:
        self._started = True

    async def close(self) -> None:
        self._started = False

    @staticmethod
    def render(messages: Sequence[Mapping[str, str]]) -> str:
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages)

    async def score(self, inputs: Sequence[ScoreInput], *, skip_overlong: bool = False) -> list[float]:
        if not self._started:
            raise NotReady("fake scoring engine is not started")
        out = []
        for i, item in enumerate(inputs):
            text = item if isinstance(item, str) else self.render(item)
            if len(text.split()) > self.max_model_len:
                if not skip_overlong:
                    raise InvalidArgument(f"inputs[{i}] is longer than max_model_len={self.max_model_len}")
                out.append(math.nan)
                continue
            self.calls.append(text)
            out.append(float(self.fn(text)))
        return out


# -- settings -> registry ------------------------------------------------------------------------


def scoring_spec(
    model: str,
    runner: str = "vllm",
    *,
    max_model_len: int = 2048,
    dtype: str = "auto",
    gpu_memory_utilization: float | None = None,
) -> Any:
    """The registry key for a scoring model (one engine per process per spec)."""
    from libs.engines.registry import ScoringSpec

    options: tuple[tuple[str, Any], ...] = (("max_model_len", max_model_len), ("dtype", dtype))
    if runner == "vllm" and gpu_memory_utilization is not None:
        options += (("gpu_memory_utilization", gpu_memory_utilization),)
    return ScoringSpec(kind=runner, model=model, options=options)


async def get_scorer(model: str, runner: str = "vllm", **kwargs: Any) -> ScoringEngine:
    """The started scoring engine for `model` from the registry."""
    from libs.engines.registry import get_scoring_engine

    return await get_scoring_engine(scoring_spec(model, runner, **kwargs))
