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
    # Reward model (METHOD §5; the paper: InternLM2-7B-Reward): a *ForSequenceClassification
    # checkpoint with one output (or a reward model vLLM serves with a per-token value head),
    # scoring (question, solution) rendered with its chat template (libs/engines/pooling.py).
    reward_model: str = Field("", description="Reward model directory/id; empty = no reward model.")
    reward_model_runner: Literal["vllm", "transformers"] = Field(
        "vllm", description="vllm: pooling runner in process; transformers: AutoModelForSequenceClassification."
    )
    reward_model_weight: float = Field(1.0, ge=0, le=1, description="Weight of the reward model in the reward.")
    # sigmoid: sigmoid(raw score), comparable across questions; minmax: (raw - min) / (max - min)
    # over the question's scored candidates (0.5 when they tie), which only ranks within a group.
    reward_model_normalize: Literal["sigmoid", "minmax"] = Field(
        "sigmoid", description="How raw reward-model scores map to [0, 1]."
    )
    reward_model_max_len: int = Field(4096, ge=16, description="Reward-model context (question + solution tokens).")
    reward_model_dtype: str = Field("auto", description="Reward-model compute dtype (auto = the checkpoint's).")
    reward_model_gpu_memory_utilization: float = Field(
        0.4, gt=0, le=1, description="Accelerator memory share of the reward model's vLLM engine (vllm runner)."
    )
    # Target difficulty mix (services/reward/difficulty.py): "UPPER:KEEP,..."; a run's
    # difficulty_keep overrides it. Empty = keep every difficulty.
    difficulty_keep: str = Field("", description="Keep probability per difficulty bin, e.g. '0:0.5'.")

    @field_validator("difficulty_keep")
    @classmethod
    def _keep(cls, v: str) -> str:
        parse_keep(v)
        return v
