"""Service settings, read from the environment with one prefix (``SQ_``).

Every service has its own settings class (``services/<svc>/settings.py``) that extends
:class:`CommonSettings`; the Helm chart sets exactly these names. :func:`load_settings`
validates at start-up and turns a bad value into a :class:`ConfigError` that names the
environment variable, so entrypoints can exit non-zero with a one-line message.
"""

from __future__ import annotations

from typing import Literal, TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.errors import ConfigError

ENV_PREFIX = "SQ_"


class CommonSettings(BaseSettings):
    """Settings every service shares: transport, storage, engine, runtime."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)

    # --- transport ---------------------------------------------------------------
    nats_url: str = Field("nats://127.0.0.1:4222", description="NATS server URL(s), comma-separated.")
    nats_replicas: int = Field(1, ge=1, le=5, description="Replicas of the JetStream streams and KV buckets (3 on a clustered NATS).")
    grpc_host: str = Field("0.0.0.0", description="Interface the gRPC server binds.")
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port (0 = pick a free one).")
    grpc_max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="Max gRPC message size.")
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus metrics port (0 = disabled).")
    # --- storage -----------------------------------------------------------------
    store_url: str = Field("./scalequest-data", description="Object store: a directory or s3://bucket/prefix.")
    # --- queue worker --------------------------------------------------------------
    worker_enabled: bool = Field(True, description="Consume this stage's work queue (off = gRPC only).")
    batch_size: int = Field(16, ge=1, le=1024, description="Messages fetched per batch.")
    worker_concurrency: int = Field(2, ge=1, le=256, description="Concurrent fetch loops.")
    ack_wait_seconds: float = Field(60.0, gt=0, description="JetStream ack wait.")
    max_deliver: int = Field(5, ge=1, le=100, description="Deliveries before a message is dead-lettered.")
    # --- engine ------------------------------------------------------------------
    engine: Literal["vllm", "openai", "fake"] = Field("vllm", description="Inference engine kind.")
    model: str = Field("default", description="Model path/id; 'default' = the packaged SmolLM2-135M-Instruct.")
    engine_base_url: str = Field("", description="Base URL of an OpenAI-compatible server (engine=openai).")
    max_model_len: int = Field(2048, ge=128, description="Engine context length.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    # --- runtime -----------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = Field(True, description="JSON log lines (off = human-readable).")
    shutdown_grace_seconds: float = Field(20.0, ge=0, description="Grace for in-flight RPCs on SIGTERM.")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    @field_validator("store_url")
    @classmethod
    def _store(cls, v: str) -> str:
        if not v:
            raise ValueError("must be a directory or s3://bucket/prefix")
        if "://" in v and not v.startswith(("s3://", "file://")):
            raise ValueError("only local directories, file:// and s3:// URLs are supported")
        return v


S = TypeVar("S", bound=BaseSettings)


def env_name(cls: type[BaseSettings], field: str) -> str:
    prefix = cls.model_config.get("env_prefix", "")
    return f"{prefix}{field}".upper()


def load_settings(cls: type[S], **overrides: object) -> S:
    """Build settings from env (+ overrides); raise ConfigError naming each bad setting."""
    try:
        return cls(**overrides)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            field = ".".join(str(p) for p in err.get("loc", ()))
            if not field:  # a check across settings: its message names them
                problems.append(str(err.get("msg", "")).removeprefix("Value error, "))
                continue
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f"={value!r}"
            problems.append(f"{env_name(cls, field)}{shown}: {err.get('msg')}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
