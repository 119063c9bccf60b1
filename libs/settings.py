"""Service settings, read from the environment with one prefix (``SQ_``).

Every service has its own settings class (``services/<svc>/settings.py``) that extends
:class:`CommonSettings`; the Helm chart sets exactly these names. :func:`load_settings`
validates at start-up and turns a bad value into a :class:`ConfigError` that names the
environment variable, so entrypoints can exit non-zero with a one-line message.
"""

from __future__ import annotations

from typing import Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
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
    # --- gRPC limits (libs/grpc/interceptors.py, libs/grpc/validation.py) --------------
    # Past a limit an RPC ends with RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED and a message
    # naming the setting; health and reflection are never limited.
    grpc_max_concurrent_rpcs: int = Field(
        64, ge=0, le=100000, description="RPCs one service handles at once; more get RESOURCE_EXHAUSTED (0 = unlimited)."
    )
    grpc_max_rpc_seconds: float = Field(
        600.0, ge=0, le=86400, description="Longest a unary RPC may run (DEADLINE_EXCEEDED after; a shorter client "
        "deadline wins; 0 = only the client's deadline)."
    )  # fmt: skip
    grpc_max_stream_seconds: float = Field(
        0.0, ge=0, le=7 * 86400, description="Longest a server-streaming RPC (StreamProgress) may run "
        "(0 = until it ends or the client's deadline)."
    )  # fmt: skip
    grpc_max_request_tokens: int = Field(
        1024 * 1024, ge=1, description="Generation budget of one RPC in tokens (count x max_tokens, n x max_tokens, "
        "questions x judge/optimizer budget); larger requests get RESOURCE_EXHAUSTED."
    )  # fmt: skip
    grpc_max_request_chars: int = Field(
        2 * 1024 * 1024, ge=1, description="Total text characters one RPC may carry (questions, candidate solutions); "
        "larger requests get RESOURCE_EXHAUSTED."
    )  # fmt: skip
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus metrics port (0 = disabled).")
    # --- storage -----------------------------------------------------------------
    store_url: str = Field("./scalequest-data", description="Object store: a directory or s3://bucket/prefix.")
    # --- queue worker --------------------------------------------------------------
    worker_enabled: bool = Field(True, description="Consume this stage's work queue (off = gRPC only).")
    # 64: a stage's queue costs are per batch (a fetch, one envelope per subject, one ack per
    # envelope, one claim-log or ledger entry), and an engine stage offers the engine
    # batch_size x worker_concurrency requests at once. A batch waits for its slowest item, but
    # with two fetch loops the other loop's batch keeps the engine busy meanwhile, and a larger
    # batch still keeps more requests in flight than a smaller one. Zero-cost engine, end to
    # end: x1.2 (filter) and another x1.1 (engine stages) over 16 (docs/benchmarks.md).
    batch_size: int = Field(64, ge=1, le=1024, description="Items per batch (messages are fetched so that a batch holds about this many; an envelope carries several).")
    worker_concurrency: int = Field(2, ge=1, le=256, description="Concurrent fetch loops.")
    fetch_linger_seconds: float = Field(0.02, ge=0, le=10, description="How long a fetched batch that is not full waits for more messages (fewer, fuller batches vs latency).")
    ack_wait_seconds: float = Field(60.0, gt=0, description="JetStream ack wait.")
    max_deliver: int = Field(5, ge=1, le=100, description="Deliveries before a message is dead-lettered.")
    envelope_max_items: int = Field(64, ge=1, le=4096, description="Outputs of one batch packed into one queue message per subject (1 = one message per item); an envelope costs NATS one publish and one ack whatever it carries.")
    queue_max_message_bytes: int = Field(1024 * 1024, ge=1024, description="Work messages larger than this are dead-lettered as 'oversized'.")
    # --- engine ------------------------------------------------------------------
    engine: Literal["vllm", "openai", "fake"] = Field("vllm", description="Inference engine kind.")
    model: str = Field("default", description="Model path/id; 'default' = the packaged SmolLM2-135M-Instruct.")
    engine_base_url: str = Field("", description="Base URL of an OpenAI-compatible server (engine=openai).")
    max_model_len: int = Field(2048, ge=128, description="Engine context length.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    fake_delay_seconds: float = Field(0.0, ge=0, le=60, description="engine=fake: seconds each generate call sleeps (simulated model latency for fault tests, soak and benchmarks).")
    fake_cpu_seconds: float = Field(0.0, ge=0, le=60, description="engine=fake: CPU seconds each generate call burns on the event loop (a compute-bound engine for scaling benchmarks).")
    # --- runtime -----------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = Field(True, description="JSON log lines (off = human-readable).")
    shutdown_grace_seconds: float = Field(20.0, ge=0, description="Grace for in-flight RPCs on SIGTERM.")
    # --- security (docs/security.md) -------------------------------------------------
    # NATS user of this process (libs/queue/auth.py derives each user's permissions); the
    # password only from the environment (a Secret), never a flag or a ConfigMap.
    nats_user: str = Field("", description="NATS user name (empty = no user/password authentication).")
    nats_password: SecretStr = Field(SecretStr(""), description="NATS password of nats_user (from a Secret).")
    nats_creds_file: str = Field("", description="NATS .creds file (JWT + nkey seed; needs the nkeys package).")
    nats_topology: Literal["auto", "ensure", "verify"] = Field(
        "auto", description="Start-up topology: ensure = create/update streams, consumers and buckets; verify = only "
        "check that this service's exist (restricted users); auto = verify when authenticated, else ensure.")
    nats_tls_ca: str = Field("", description="CA bundle (PEM) verifying the NATS server; set = TLS to NATS.")
    nats_tls_cert: str = Field("", description="Client certificate (PEM) for NATS mutual TLS.")
    nats_tls_key: str = Field("", description="Private key (PEM) of nats_tls_cert.")
    grpc_tls_cert: str = Field("", description="Server certificate chain (PEM); set = the gRPC port speaks TLS only.")
    grpc_tls_key: str = Field("", description="Private key (PEM) of grpc_tls_cert.")
    grpc_tls_client_ca: str = Field("", description="CA bundle (PEM) for client certificates; set = mutual TLS required.")
    grpc_tls_ca: str = Field("", description="gRPC clients: CA bundle (PEM) verifying servers; set = TLS channels.")
    grpc_tls_server_name: str = Field("", description="gRPC clients: name expected in the server certificate "
                                      "(default: the target's host).")
    grpc_health_port: int = Field(0, ge=0, le=65535, description="Plaintext port serving only grpc.health.v1 (for "
                                  "Kubernetes probes when gRPC uses TLS); 0 = none.")

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

    @model_validator(mode="after")
    def _security_pairs(self):
        # --- security: a certificate without its key (or the reverse) is a half-done set-up.
        for cert, key in (("grpc_tls_cert", "grpc_tls_key"), ("nats_tls_cert", "nats_tls_key")):
            if bool(getattr(self, cert)) != bool(getattr(self, key)):
                raise ValueError(f"{env_name(type(self), cert)} and {env_name(type(self), key)} go together: set both or neither")
        if self.grpc_tls_client_ca and not self.grpc_tls_cert:
            raise ValueError("SQ_GRPC_TLS_CLIENT_CA (mutual TLS) needs SQ_GRPC_TLS_CERT and SQ_GRPC_TLS_KEY")
        if self.nats_password.get_secret_value() and not self.nats_user:
            raise ValueError("SQ_NATS_PASSWORD is set but SQ_NATS_USER is empty")
        return self


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
            secret = cls.model_fields.get(field.split(".")[0]) is not None and \
                cls.model_fields[field.split(".")[0]].annotation is SecretStr  # --- security: never echo a secret
            shown = "" if isinstance(value, dict) else "=***" if secret else f"={value!r}"
            problems.append(f"{env_name(cls, field)}{shown}: {err.get('msg')}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
