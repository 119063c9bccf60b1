"""solver settings (environment, prefix SQ_)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from libs.settings import CommonSettings


class SolverSettings(CommonSettings):
    """Defaults follow METHOD §5 (5 candidates, T=0.7, top_p=0.95, 2048 tokens)."""

    grpc_port: int = Field(50063, ge=0, le=65535)
    solve_n: int = Field(5, ge=1, le=64, description="Default candidates per question.")
    solve_temperature: float = Field(0.7, ge=0, le=5)
    solve_top_p: float = Field(0.95, gt=0, le=1)
    solve_max_tokens: int = Field(2048, ge=1, le=32768)
    # "last balanced \\boxed{}" only (paper), or also "the answer is N" when no box exists.
    answer_fallback: bool = Field(False, description="Accept 'the answer is N' when no \\boxed{} exists.")
    solve_prompt: Literal["zero_shot", "one_shot"] = Field(
        "zero_shot", description="zero_shot = the paper's instruction; one_shot adds a worked example (small models)."
    )
    max_question_chars: int = Field(16384, ge=1)
