"""questiongen settings (environment, prefix SQ_)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from libs.settings import CommonSettings


class QuestionGenSettings(CommonSettings):
    """Defaults reproduce the paper's from-scratch sampling (METHOD §3)."""

    grpc_port: int = Field(50061, ge=0, le=65535)
    gen_mode: Literal["scratch", "instructed"] = Field("scratch", description="Default sampling mode.")
    gen_temperature: float = Field(1.0, ge=0, le=5)
    gen_top_p: float = Field(0.99, gt=0, le=1)
    gen_max_tokens: int = Field(512, ge=1, le=32768)
    gen_max_count: int = Field(256, ge=1, description="Largest `count` one RPC may ask for.")
    # --- QPO rewriting (METHOD §2) ------------------------------------------------
    # "same" = the generator's own engine; otherwise a separate engine of that kind.
    optimizer_engine: Literal["same", "vllm", "openai", "fake"] = Field(
        "same", description="Engine of the optimizer model that rewrites questions for QPO."
    )
    optimizer_model: str = Field("", description="Optimizer model path/id/served name (engine != same).")
    optimizer_base_url: str = Field("", description="OpenAI-compatible base URL (optimizer_engine=openai).")
    optimizer_temperature: float = Field(0.0, ge=0, le=5, description="Optimizer sampling temperature.")
    optimizer_max_tokens: int = Field(1024, ge=1, le=32768, description="Optimizer output budget.")

    @model_validator(mode="after")
    def _optimizer(self) -> QuestionGenSettings:
        if self.optimizer_engine == "openai" and not self.optimizer_base_url:
            raise ValueError("SQ_OPTIMIZER_BASE_URL is required when SQ_OPTIMIZER_ENGINE=openai")
        if self.optimizer_engine in ("vllm", "openai") and not self.optimizer_model:
            raise ValueError(f"SQ_OPTIMIZER_MODEL is required when SQ_OPTIMIZER_ENGINE={self.optimizer_engine}")
        return self
