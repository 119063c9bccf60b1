"""filter settings (environment, prefix SQ_)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from libs.difficulty import DifficultyModelSettings
from libs.settings import CommonSettings


class FilterSettings(CommonSettings, DifficultyModelSettings):
    grpc_port: int = Field(50062, ge=0, le=65535)
    # --- learned difficulty (METHOD §4; libs/difficulty.py) ------------------------------
    # With SQ_DIFFICULTY_MODEL set, every passing question gets `predicted_difficulty`; questions
    # predicted easier than this are rejected as too_easy (the paper trims the easiest).
    difficulty_min_predicted: float = Field(
        0.0, ge=0, le=1, description="Reject questions whose predicted fail rate is below this (0 = keep all)."
    )
    # --- length / language ----------------------------------------------------------
    max_question_chars: int = Field(16384, ge=1, description="Longest question accepted.")
    min_question_chars: int = Field(10, ge=1, description="Shorter questions are rejected as too_short.")
    language_normalize: bool = Field(
        False,
        description="Rewrite math typography as ASCII/LaTeX in the question that travels on "
        "(× → \\times, ≤ → \\le, curly quotes → straight).",
    )
    # --- duplicates --------------------------------------------------------------------
    dedup_enabled: bool = Field(True, description="Exact duplicate removal within a run.")
    neardup_enabled: bool = Field(True, description="Near-duplicate removal (MinHash + LSH) within a run.")
    dedup_protocol: Literal["log", "kv"] = Field(
        "log", description="How filter replicas agree on duplicates: 'log' = one claim-log entry per batch, folded "
        "in order by every replica (services/filter/claimlog.py); 'kv' = per-item KV claims (about 45 round trips "
        "per near-duplicate claim)."
    )  # fmt: skip
    neardup_threshold: float = Field(
        0.65, gt=0, le=1, description="Jaccard similarity from which a question is a near duplicate."
    )
    neardup_num_perm: int = Field(128, ge=16, le=1024, description="MinHash signature length.")
    neardup_bands: int = Field(
        0, ge=0, le=1024, description="LSH bands (0 = derived from the threshold and signature length)."
    )
    neardup_shingle: int = Field(2, ge=1, le=8, description="Words per shingle of the near-duplicate feature set.")
    neardup_number_weight: int = Field(
        8, ge=0, le=64, description="Times each number/operator counts in the feature set."
    )
    # --- decontamination ------------------------------------------------------------------
    decontam_sources: str = Field(
        "", description="Benchmark test sets, comma-separated: local .jsonl/.json/.parquet paths or "
        "hf:<dataset>[:<config>][@<split>] ids; either may end with #<field>. Empty = off."
    )  # fmt: skip
    decontam_ngram: int = Field(13, ge=3, le=64, description="Word n-gram length of the contamination check.")
    decontam_field: str = Field(
        "", description="Question field of the benchmark records ('' = question/problem/input)."
    )
    # --- solvability judge ------------------------------------------------------------------
    judge_enabled: bool = Field(True, description="Run the solvability judge by default (RPC callers choose).")
    judge_max_tokens: int = Field(256, ge=1, le=8192, description="Reasoning budget of the solvability judge.")
    # strict: no parsable final verdict = rejection "judge_unparseable" (METHOD §4).
    # force: then ask for the verdict once more with the reasoning as context and compare P(Yes) vs P(No).
    judge_verdict: Literal["strict", "force"] = Field("force", description="What to do when no verdict parses.")
    judge_prompt_family: Literal["auto", "chatml", "deepseek", "generic"] = Field(
        "auto", description="Judge prompt style; auto = from the engine's chat template, then the model name."
    )

    @field_validator("judge_prompt_family", mode="before")
    @classmethod
    def _lower(cls, v: object) -> object:
        return v.lower() if isinstance(v, str) else v

    @field_validator("decontam_sources")
    @classmethod
    def _sources(cls, v: str) -> str:
        parts = [p.strip() for p in v.split(",")]
        if v.strip() and not all(parts):
            raise ValueError("empty entry in the comma-separated list")
        return ",".join(p for p in parts if p)

    @model_validator(mode="after")
    def _bands_fit(self) -> FilterSettings:
        if self.neardup_bands > self.neardup_num_perm:
            raise ValueError(
                f"SQ_NEARDUP_BANDS={self.neardup_bands} exceeds SQ_NEARDUP_NUM_PERM={self.neardup_num_perm}"
            )
        return self

    @property
    def decontam_source_list(self) -> list[str]:
        return [p for p in self.decontam_sources.split(",") if p]
