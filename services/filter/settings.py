"""filter settings (environment, prefix SQ_)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from libs.settings import CommonSettings


class FilterSettings(CommonSettings):
    grpc_port: int = Field(50062, ge=0, le=65535)
    judge_enabled: bool = Field(True, description="Run the solvability judge by default (RPC callers choose).")
    judge_max_tokens: int = Field(256, ge=1, le=8192, description="Reasoning budget of the solvability judge.")
    # strict: no parsable final verdict = rejection "judge_unparseable" (METHOD §4).
    # force: then ask for the verdict once more with the reasoning as context and compare P(Yes) vs P(No).
    judge_verdict: Literal["strict", "force"] = Field("force", description="What to do when no verdict parses.")
    max_question_chars: int = Field(16384, ge=1, description="Longest question accepted.")
    min_question_chars: int = Field(10, ge=1, description="Shorter questions are rejected as too_short.")
    dedup_enabled: bool = Field(True, description="Exact duplicate removal within a run.")
