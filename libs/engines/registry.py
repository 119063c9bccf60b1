"""One started engine per `EngineSpec` per process.

Stages ask the registry instead of building engines, so a process hosting several stages on the
same model loads it once, and concurrent first callers wait for the same load.

    spec = EngineSpec(kind="vllm", model="default", options=(("max_model_len", 2048),))
    engine = await get_engine(spec)
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from libs.engines.base import Engine
from libs.errors import ConfigError

log = logging.getLogger(__name__)

ENGINE_KINDS = ("vllm", "openai", "fake")
#: `model` value that means "the embedded default model" (converted on first use).
DEFAULT_MODEL = "default"


@dataclass(frozen=True)
class EngineSpec:
    """Which engine to use; hashable, so it keys the registry.

    kind: "vllm" (in-process), "openai" (HTTP endpoint at `base_url`) or "fake" (tests).
    model: vllm: model directory, or "default" for the embedded SmolLM2; openai: served model
        name; fake: the recorded model name.
    options: extra constructor keyword arguments as ``(name, value)`` pairs, e.g.
        ``(("max_model_len", 4096), ("dtype", "bfloat16"))`` or ``(("tokenizer", "/models/x"),)``.
    """

    kind: str
    model: str
    base_url: str = ""
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ENGINE_KINDS:
            raise ConfigError(f"engine kind {self.kind!r} is not one of {', '.join(ENGINE_KINDS)}")
        if self.kind == "openai" and not self.base_url:
            raise ConfigError("engine kind 'openai' needs base_url")
        names = [name for name, _ in self.options]
        if len(names) != len(set(names)):
            raise ConfigError(f"engine options repeat a name: {names}")


_engines: dict[EngineSpec, Engine] = {}
_locks: dict[EngineSpec, asyncio.Lock] = {}
_loop: asyncio.AbstractEventLoop | None = None


def _bind_loop() -> None:
    """Engines and locks belong to one event loop. If the loop that created them has ended
    (e.g. successive `asyncio.run` calls in tests), forget them; they cannot be used again."""
    global _loop
    loop = asyncio.get_running_loop()
    if _loop is loop:
        return
    if _loop is not None and not _loop.is_closed() and _loop.is_running():
        raise RuntimeError("engines are bound to another running event loop")
    if _engines:
        log.warning("discarding %d engine(s) left by a finished event loop", len(_engines))
    _engines.clear()
    _locks.clear()
    _loop = loop


#: ``engine=fake`` with this model name answers like a well-behaved model in a scripted math
#: world (libs/engines/scripted.py): zero-cost whole-pipeline runs from settings alone, e.g.
#: services started from the Helm chart's environment in tests and benchmarks.
SCRIPTED_MATH = "scripted-math"


def _build(spec: EngineSpec, model_path: str | None) -> Engine:
    options = dict(spec.options)
    if spec.kind == "vllm":
        from libs.engines.vllm_engine import VLLMEngine

        if model_path is not None:
            options.setdefault("served_name", "SmolLM2-135M-Instruct")
        return VLLMEngine(model_path or spec.model, **options)
    if spec.kind == "openai":
        from libs.engines.openai_engine import OpenAIEngine

        return OpenAIEngine(spec.base_url, spec.model, **options)
    if spec.model == SCRIPTED_MATH:
        from libs.engines.scripted import math_engine

        return math_engine(**options)
    from libs.engines.fake import FakeEngine

    return FakeEngine(model_name=spec.model or "fake", **options)


async def get_engine(spec: EngineSpec) -> Engine:
    """The started engine for `spec`, creating and starting it on first use.

    A failed start is not cached: the next call tries again.
    """
    _bind_loop()
    engine = _engines.get(spec)
    if engine is not None:
        return engine
    lock = _locks.setdefault(spec, asyncio.Lock())
    async with lock:
        engine = _engines.get(spec)
        if engine is not None:
            return engine
        model_path = None
        if spec.kind == "vllm" and spec.model in (DEFAULT_MODEL, ""):
            from libs.models.default_model import ensure_default_model

            model_path = str(await asyncio.to_thread(ensure_default_model))
        try:
            engine = _build(spec, model_path)
        except TypeError as exc:  # an unknown option name
            raise ConfigError(f"bad options for {spec.kind} engine: {exc}") from exc
        await engine.start()
        _engines[spec] = engine
        return engine


async def close_all() -> None:
    """Close every engine this process started (idempotent)."""
    engines = list(_engines.values())
    _engines.clear()
    _locks.clear()
    errors = []
    for engine in engines:
        try:
            await engine.close()
        except Exception as exc:  # keep closing the others
            log.exception("closing engine %s failed", getattr(engine, "model_name", engine))
            errors.append(exc)
    if errors:
        raise errors[0]


# -- scoring engines (libs/engines/pooling.py) ---------------------------------------------------
# Kept in the same table as generation engines (a ScoringSpec never equals an EngineSpec), so
# the loop binding and `close_all` cover them too.

SCORING_KINDS = ("vllm", "transformers", "fake")


@dataclass(frozen=True)
class ScoringSpec:
    """Which scoring model to load; hashable, so it keys the registry.

    kind: "vllm" (the pooling runner in process), "transformers" (AutoModelForSequenceClassification
        in a worker thread) or "fake" (tests).
    model: model directory or an id resolvable offline (a reward / regression checkpoint; there
        is no default scoring model); fake: the recorded model name.
    options: extra constructor keyword arguments as ``(name, value)`` pairs, e.g.
        ``(("max_model_len", 4096), ("dtype", "bfloat16"))``.
    """

    kind: str
    model: str
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in SCORING_KINDS:
            raise ConfigError(f"scoring runner {self.kind!r} is not one of {', '.join(SCORING_KINDS)}")
        if self.kind != "fake" and self.model in (DEFAULT_MODEL, ""):
            raise ConfigError("a scoring engine needs a model directory (there is no default scoring model)")
        names = [name for name, _ in self.options]
        if len(names) != len(set(names)):
            raise ConfigError(f"scoring engine options repeat a name: {names}")


def _build_scoring(spec: ScoringSpec) -> Any:
    from libs.engines import pooling

    options = dict(spec.options)
    if spec.kind == "vllm":
        return pooling.VLLMScoringEngine(spec.model, **options)
    if spec.kind == "transformers":
        return pooling.TransformersScoringEngine(spec.model, **options)
    options.pop("dtype", None)
    return pooling.FakeScoringEngine(model_name=spec.model or "fake-scorer", **options)


async def get_scoring_engine(spec: ScoringSpec) -> Any:
    """The started scoring engine (`libs.engines.pooling.ScoringEngine`) for `spec`, created and
    started on first use; concurrent first callers wait for the same load. A failed start is
    not cached."""
    _bind_loop()
    engine = _engines.get(spec)  # type: ignore[call-overload]
    if engine is not None:
        return engine
    lock = _locks.setdefault(spec, asyncio.Lock())  # type: ignore[arg-type]
    async with lock:
        engine = _engines.get(spec)  # type: ignore[call-overload]
        if engine is not None:
            return engine
        try:
            engine = _build_scoring(spec)
        except TypeError as exc:  # an unknown option name
            raise ConfigError(f"bad options for {spec.kind} scoring engine: {exc}") from exc
        await engine.start()
        _engines[spec] = engine  # type: ignore[index]
        return engine
