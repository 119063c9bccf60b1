"""reward settings (environment, prefix SQ_)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from libs.settings import CommonSettings
from services.reward.difficulty import parse_keep


class RewardSettings(CommonSettings):
    grpc_port: int = Field(50064, ge=0, le=65535)
    selection_rule: Literal["top_reward", "majority_then_reward", "require_agreement"] = Field(
        "majority_then_reward", description="Default best-of-n rule."
    )
    min_agreement: int = Field(2, ge=1, le=64, description="Candidates that must agree (require_agreement).")
    judge_weight: float = Field(0.5, ge=0, le=1, description="Weight of the generative judge in the reward.")
    agreement_weight: float = Field(0.5, ge=0, le=1, description="Weight of answer agreement in the reward.")
    judge_enabled: bool = Field(True, description="Score candidates with the generative judge.")
    max_solution_chars: int = Field(65536, ge=1)
    # Target difficulty mix (services/reward/difficulty.py): "UPPER:KEEP,..."; a run's
    # difficulty_keep overrides it. Empty = keep every difficulty.
    difficulty_keep: str = Field("", description="Keep probability per difficulty bin, e.g. '0:0.5'.")

    @field_validator("difficulty_keep")
    @classmethod
    def _keep(cls, v: str) -> str:
        parse_keep(v)
        return v
