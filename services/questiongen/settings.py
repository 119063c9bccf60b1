"""questiongen settings (environment, prefix SQ_)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from libs.settings import CommonSettings


class QuestionGenSettings(CommonSettings):
    """Defaults reproduce the paper's from-scratch sampling (METHOD §3)."""

    grpc_port: int = Field(50061, ge=0, le=65535)
    gen_mode: Literal["scratch", "instructed"] = Field("scratch", description="Default sampling mode.")
    gen_temperature: float = Field(1.0, ge=0, le=5)
    gen_top_p: float = Field(0.99, gt=0, le=1)
    gen_max_tokens: int = Field(512, ge=1, le=32768)
    gen_max_count: int = Field(256, ge=1, description="Largest `count` one RPC may ask for.")
