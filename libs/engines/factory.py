"""Engine from service settings: resolves 'default' to the packaged model and shares one
engine per (kind, model) per process through the registry."""

from __future__ import annotations

import asyncio

from libs.engines.base import Engine


async def resolve_model(model: str) -> str:
    if model == "default":
        from libs.models.default_model import ensure_default_model

        return str(await asyncio.to_thread(ensure_default_model))
    return model


async def engine_from_settings(settings) -> Engine:
    from libs.engines.registry import EngineSpec, get_engine

    model = await resolve_model(settings.model) if settings.engine == "vllm" else settings.model
    options: tuple = ()
    if settings.engine == "vllm":
        options = (("max_model_len", settings.max_model_len), ("gpu_memory_utilization", settings.gpu_memory_utilization))
    spec = EngineSpec(kind=settings.engine, model=model, base_url=settings.engine_base_url, options=options)
    return await get_engine(spec)
