"""An engine wrapper that records every `generate` call, and a replayer for the recording.

Used by ``benchmarks/efficiency.py``: the pipeline runs on ``RecordingEngine(engine)`` (passed
to ``scalequest_cli.embedded.start_pipeline(engine=...)``), then :func:`replay` sends exactly
the same calls (prompt, sampling parameters incl. seed and ``n``) to an engine driven directly,
all at once, and both sides' generated tokens per second are compared. The wrapper changes
nothing about the calls it forwards; everything except `generate` is delegated unchanged.

    rec = RecordingEngine(await get_engine(spec))
    ...                              # run the pipeline on `rec`
    calls = rec.calls                # [EngineCall(prompt, params, started, ended, ...)]
    direct = await replay(other_engine, calls)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from libs.engines.base import Engine, GenerationResult, SamplingSpec


@dataclass(frozen=True)
class EngineCall:
    """One `generate` call: what was asked, when (``clock`` seconds) and what came back.

    ``completion_tokens``/``finish_reasons`` have one entry per completion (``n``); a call
    that raised has none and ``error`` set."""

    prompt: str
    params: SamplingSpec
    started: float
    ended: float
    prompt_tokens: int = 0
    completion_tokens: tuple[int, ...] = ()
    finish_reasons: tuple[str, ...] = ()
    error: str = ""

    @property
    def generated_tokens(self) -> int:
        return sum(self.completion_tokens)

    @property
    def seconds(self) -> float:
        return self.ended - self.started


class RecordingEngine(Engine):
    """`inner` with every `generate` call appended to :attr:`calls` (in completion order).

    ``start``/``close`` and the template methods go to `inner`; any other attribute
    (``count_tokens``, ``load_seconds``, ...) is looked up on `inner` too."""

    def __init__(self, inner: Engine, clock: Callable[[], float] = time.monotonic) -> None:
        self.inner = inner
        self.clock = clock
        self.calls: list[EngineCall] = []

    @property
    def model_name(self) -> str:  # type: ignore[override]
        return self.inner.model_name

    @property
    def ready(self) -> bool:
        return self.inner.ready

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes this class lacks; `inner` is set first in __init__.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def generate(self, prompt: str, params: SamplingSpec) -> GenerationResult:
        started = self.clock()
        try:
            result = await self.inner.generate(prompt, params)
        except BaseException as exc:
            self.calls.append(EngineCall(prompt, params, started, self.clock(), error=f"{type(exc).__name__}: {exc}"))
            raise
        self.calls.append(
            EngineCall(
                prompt,
                params,
                started,
                self.clock(),
                prompt_tokens=result.prompt_tokens,
                completion_tokens=tuple(c.num_tokens for c in result.completions),
                finish_reasons=tuple(c.finish_reason for c in result.completions),
            )
        )
        return result

    def clear(self) -> None:
        self.calls.clear()

    def chat_prefix(self) -> str:
        return self.inner.chat_prefix()

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.inner.apply_chat_template(messages, add_generation_prompt)

    def stop_strings(self) -> list[str]:
        return self.inner.stop_strings()


async def replay(
    engine: Engine,
    calls: Sequence[EngineCall],
    *,
    order: str = "started",
    max_concurrency: int = 0,
    clock: Callable[[], float] = time.monotonic,
) -> list[EngineCall]:
    """Send every recorded call (that succeeded) to `engine` again and return what happened,
    recorded the same way (in completion order, times from `clock`).

    All calls are submitted at once, as fast as the engine accepts them (its own scheduler
    decides what runs), or at most `max_concurrency` at a time when it is > 0.
    ``order="started"`` submits in the order the recording started them (so an engine's FIFO
    queue sees them in the same order); ``"as_given"`` keeps `calls`' order."""
    todo = [c for c in calls if not c.error]
    if order == "started":
        todo.sort(key=lambda c: c.started)
    elif order != "as_given":
        raise ValueError(f"order must be 'started' or 'as_given', not {order!r}")
    rec = RecordingEngine(engine, clock=clock)
    if max_concurrency > 0:
        gate = asyncio.Semaphore(max_concurrency)

        async def one(c: EngineCall) -> None:
            async with gate:
                await rec.generate(c.prompt, c.params)

    else:

        async def one(c: EngineCall) -> None:
            await rec.generate(c.prompt, c.params)

    # gather starts the coroutines in argument order, so the engine receives them in about
    # that order (each may yield once before it is queued, e.g. VLLMEngine's prompt rendering).
    await asyncio.gather(*(one(c) for c in todo))
    return rec.calls


def busy_window(calls: Sequence[EngineCall]) -> tuple[float, float]:
    """(first start, last end) of `calls`; (0, 0) when there are none."""
    if not calls:
        return 0.0, 0.0
    return min(c.started for c in calls), max(c.ended for c in calls)


def concurrency_profile(calls: Sequence[EngineCall], start: float | None = None, end: float | None = None) -> dict[str, float]:
    """How busy the engine was between `start` and `end` (default: the busy window), from the
    calls' start/end times: time-weighted mean and peak of sequences in flight (a call counts
    ``n``), and the share of that time with none in flight (idle)."""
    if not calls:
        return {"mean_in_flight": 0.0, "idle_share": 0.0, "max_in_flight": 0}
    first, last = busy_window(calls)
    start = first if start is None else start
    end = last if end is None else end
    events = sorted([(max(c.started, start), c.params.n) for c in calls] + [(min(c.ended, end), -c.params.n) for c in calls])
    area = idle = 0.0
    level = peak = 0
    t_prev = start
    for t, step in events:
        t = min(max(t, start), end)
        area += level * (t - t_prev)
        if level == 0:
            idle += t - t_prev
        t_prev = t
        level += step
        peak = max(peak, level)
    idle += max(0.0, end - t_prev) if level == 0 else 0.0
    span = max(end - start, 1e-12)
    return {"mean_in_flight": area / span, "idle_share": idle / span, "max_in_flight": peak}
