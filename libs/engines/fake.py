"""A deterministic, zero-cost engine for unit tests and orchestration benchmarks.

It answers from a `responder(prompt, params, index)` callable (index = which of the `n`
completions), counts whitespace-separated words as tokens, honours `max_tokens` and `stop`
like a real engine, and renders ChatML so stages can build prompts exactly as they would for
SmolLM2.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

from libs.engines.base import Completion, Engine, GenerationResult, SamplingSpec
from libs.errors import InvalidArgument, NotReady

Responder = Callable[[str, SamplingSpec, int], "str | Awaitable[str]"]

DEFAULT_TEXT = "What is the sum of 2 and 3?"
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
MAX_RECORDED_CALLS = 4096


def _burn(seconds: float) -> None:
    """Keep this thread on the CPU for ``seconds`` of its own CPU time."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


class _Result(GenerationResult):
    """A GenerationResult whose prompt token count (whitespace words) is counted when read: no
    stage reads it, and splitting every prompt was a visible part of the zero-cost engine's
    cost in the orchestration benchmark."""

    def __init__(self, completions: list[Completion], prompt: str) -> None:  # noqa: D107 -- not the dataclass init
        self.completions = completions
        self._prompt = prompt

    @property
    def prompt_tokens(self) -> int:  # type: ignore[override]
        return len(self._prompt.split())


class FakeEngine(Engine):
    """Engine whose completions come from a Python callable.

    Args:
        responder: ``(prompt, params, index) -> str`` (may be async). Default: returns `text`.
        text: the fixed completion of the default responder.
        model_name: recorded in provenance.
        logprobs: the ``{token: logprob}`` alternatives reported for every generated token
            when a request asks for logprobs (the first `params.logprobs` entries).
        delay: seconds each `generate` call sleeps, to simulate latency.
        cpu: seconds of CPU each `generate` call burns on the event loop's thread (holding the
            GIL, like an engine computing in-process): a compute-bound engine for scaling
            benchmarks, where `delay` is a latency-bound one.
        max_model_len: prompts longer than this (in whitespace tokens) raise InvalidArgument.
        system_prompt: default system turn of the ChatML template (None: no system turn).
    """

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        text: str = DEFAULT_TEXT,
        model_name: str = "fake",
        logprobs: dict[str, float] | None = None,
        delay: float = 0.0,
        cpu: float = 0.0,
        max_model_len: int | None = None,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    ) -> None:
        self.model_name = model_name
        self._text = text
        self._responder = responder or (lambda prompt, params, index: self._text)
        self._logprobs = dict(logprobs) if logprobs is not None else {"the": -0.1, "a": -2.5, "an": -4.0}
        self._alternatives_by_k: dict[int, dict[str, float]] = {}
        self._delay = delay
        self._cpu = cpu
        self._max_model_len = max_model_len
        self._system_prompt = system_prompt
        self._started = False
        self._closed = False
        #: The (prompt, params) received, in order; tests inspect it. Only the last
        #: ``MAX_RECORDED_CALLS`` are kept, so a long-running service does not grow without bound.
        self.calls: list[tuple[str, SamplingSpec]] = []
        self.generated_tokens = 0

    async def start(self) -> None:
        self._started = True
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        self._started = False

    @property
    def ready(self) -> bool:
        return self._started and not self._closed

    async def generate(self, prompt: str, params: SamplingSpec) -> GenerationResult:
        if not self._started or self._closed:
            raise NotReady("fake engine is not started")
        n = params.n
        if n < 1:
            raise InvalidArgument(f"n must be >= 1, got {n}")
        if params.max_tokens < 1:
            raise InvalidArgument(f"max_tokens must be >= 1, got {params.max_tokens}")
        if self._max_model_len is not None:
            prompt_tokens = len(prompt.split())
            if prompt_tokens >= self._max_model_len:
                raise InvalidArgument(
                    f"prompt has {prompt_tokens} tokens; the model's context is {self._max_model_len} tokens"
                )
        calls = self.calls
        calls.append((prompt, params))
        if len(calls) > MAX_RECORDED_CALLS:
            del calls[: MAX_RECORDED_CALLS // 2]
        if self._delay:
            await asyncio.sleep(self._delay)
        if self._cpu:
            _burn(self._cpu)
        completions = []
        tokens = 0
        for index in range(n):
            raw = self._responder(prompt, params, index)
            if raw.__class__ is not str:
                raw = str(await raw) if inspect.isawaitable(raw) else str(raw)
            c = self._finish(raw, params)
            tokens += c.num_tokens
            completions.append(c)
        self.generated_tokens += tokens
        return _Result(completions, prompt)

    def _finish(self, text: str, params: SamplingSpec) -> Completion:
        # The zero-cost engine of the orchestration benchmark: every microsecond here is counted
        # as orchestration overhead, so the common cases (one stop string, no cut) stay cheap.
        finish_reason = "stop"
        for s in params.stop:
            if s and s in text:
                text = text[: min(i for i in (text.find(s) for s in params.stop if s) if i >= 0)]
                break
        words = text.split()
        if len(words) > params.max_tokens:
            # Keep the original spacing of the words that fit.
            end = 0
            for word in words[: params.max_tokens]:
                end = text.index(word, end) + len(word)
            text, words, finish_reason = text[:end], words[: params.max_tokens], "length"
        top = []
        if params.logprobs > 0 and words:
            alternatives = self._alternatives(params.logprobs)
            top = [alternatives.copy() for _ in words]
        return Completion(text=text, finish_reason=finish_reason, num_tokens=len(words), top_logprobs=top)

    def _alternatives(self, k: int) -> dict[str, float]:
        """The first ``k`` configured logprob alternatives (cached per k)."""
        cached = self._alternatives_by_k.get(k)
        if cached is None:
            cached = self._alternatives_by_k[k] = dict(list(self._logprobs.items())[:k])
        return cached

    # -- chat template (ChatML) ---------------------------------------------------------------

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        parts = []
        if self._system_prompt is not None and (not messages or messages[0]["role"] != "system"):
            parts.append(f"{IM_START}system\n{self._system_prompt}{IM_END}\n")
        for message in messages:
            parts.append(f"{IM_START}{message['role']}\n{message['content']}{IM_END}\n")
        if add_generation_prompt:
            parts.append(f"{IM_START}assistant\n")
        return "".join(parts)

    def chat_prefix(self) -> str:
        rendered = self.apply_chat_template([{"role": "user", "content": ""}], add_generation_prompt=False)
        return rendered[: -len(f"{IM_END}\n")]

    def stop_strings(self) -> list[str]:
        return [IM_END]
