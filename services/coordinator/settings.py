"""coordinator settings (environment, prefix SQ_). Run defaults reproduce the paper's settings
(METHOD §3, §5); every field of a StartRun request overrides them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from libs.settings import CommonSettings


class CoordinatorSettings(CommonSettings):
    grpc_port: int = Field(50060, ge=0, le=65535)
    # Records wait un-acked in the sink until their shard is durable, so the sink's fetch window
    # (batch_size x worker_concurrency) bounds how many records one shard can collect.
    batch_size: int = Field(256, ge=1, le=1024, description="Sink messages fetched per batch (bounds records per shard with worker_concurrency).")
    # Records wait for their shard write anyway; lingering longer makes shards of a busy run
    # larger (fewer Parquet files and manifest writes) at the cost of a quarter second.
    fetch_linger_seconds: float = Field(0.25, ge=0, le=10, description="How long a sink batch that is not full waits for more outcomes.")
    run_target: int = Field(1000, ge=1, description="Default accepted pairs per run.")
    run_seed: int = Field(0, ge=0, description="Default run seed.")
    run_mode: Literal["scratch", "instructed"] = Field("scratch")
    run_n_candidates: int = Field(5, ge=1, le=64)
    run_question_temperature: float = Field(1.0, ge=0, le=5)
    run_question_top_p: float = Field(0.99, gt=0, le=1)
    run_question_max_tokens: int = Field(512, ge=1, le=32768)
    run_solution_temperature: float = Field(0.7, ge=0, le=5)
    run_solution_top_p: float = Field(0.95, gt=0, le=1)
    run_solution_max_tokens: int = Field(2048, ge=1, le=32768)
    run_selection_rule: Literal["top_reward", "majority_then_reward", "require_agreement"] = "majority_then_reward"
    run_min_agreement: int = Field(2, ge=1, le=64)
    run_judge_enabled: bool = True
    run_type: Literal["synthesis", "qpo"] = Field("synthesis", description="What a run produces by default.")
    run_optimizer_temperature: float = Field(0.0, ge=0, le=5, description="QPO optimizer temperature (paper: 0).")
    run_optimizer_max_tokens: int = Field(1024, ge=1, le=32768, description="QPO optimizer output budget.")
    max_outstanding: int = Field(256, ge=1, le=100000, description="Generation tasks in flight per run.")
    max_tasks_factor: int = Field(20, ge=1, description="A run gives up after target x factor tasks.")
    shard_max_records: int = Field(1000, ge=1, description="Records per shard before it is closed.")
    shard_max_seconds: float = Field(30.0, gt=0, description="Seconds before a non-empty shard is closed.")
    writer_id: str = Field("w0", pattern=r"^[a-z0-9-]{1,32}$", description="Shard writer name of this replica.")
    # Defaults for model names recorded in provenance when a StartRun leaves them empty.
    generator_model: str = Field("", description="Generator model recorded in run configs.")
    solver_model: str = Field("", description="Solver model recorded in run configs.")
    judge_model: str = Field("", description="Judge model recorded in run configs.")
    optimizer_model: str = Field("", description="QPO optimizer model recorded in run configs.")
