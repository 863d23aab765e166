"""Settings shared by every service: environment variables with the ``FAULTLINE_`` prefix.

Nested groups use ``__`` (``FAULTLINE_KAFKA__BOOTSTRAP_SERVERS``). Each service subclasses
:class:`ServiceSettings` with its own fields; :func:`load_settings` validates at start and
turns a validation error into one readable message instead of a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "faultline"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    # Consumer behaviour.
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    max_poll_records: int = Field(500, ge=1)
    poll_timeout_ms: int = Field(200, ge=1)
    # Transient handler errors are retried this many times with exponential backoff
    # before the message is dead-lettered, so one sick message cannot block a partition.
    max_retries: int = Field(5, ge=0)
    retry_backoff_ms: int = Field(100, ge=1)
    retry_backoff_max_ms: int = Field(5_000, ge=1)

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"security_protocol={self.security_protocol} needs sasl_mechanism, sasl_username and sasl_password"
            )
        return self

    def client_config(self) -> dict[str, object]:
        """Keyword arguments common to kafka-python's producer, consumer and admin client."""
        config: dict[str, object] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            config["sasl_mechanism"] = self.sasl_mechanism
            config["sasl_plain_username"] = self.sasl_username
            config["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(self, key)
            if value is not None:
                config[key] = str(value)
        return config


class GrpcSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)  # 0 picks a free port (tests)
    max_workers: int = Field(16, ge=1)
    max_message_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    # When set, every RPC but the health check needs "authorization: Bearer <token>";
    # health stays open because Kubernetes' gRPC probes cannot send metadata.
    auth_token: SecretStr | None = None
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    shutdown_grace_s: float = Field(10.0, ge=0)

    @model_validator(mode="after")
    def _tls_pair(self) -> GrpcSettings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("tls_certfile and tls_keyfile must be set together")
        for path in (self.tls_certfile, self.tls_keyfile):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file not found: {path}")
        return self


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FAULTLINE_", env_nested_delimiter="__", extra="ignore", validate_default=True
    )

    instance: str = Field(default_factory=lambda: __import__("socket").gethostname())
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    metrics_port: int = Field(9464, ge=0, le=65535)  # 0 disables the Prometheus endpoint
    heartbeat_s: float = Field(10.0, ge=0)  # 0 disables heartbeats on faultline.heartbeats.v1
    kafka: KafkaSettings = KafkaSettings()
    grpc: GrpcSettings = GrpcSettings()


S = TypeVar("S", bound=BaseSettings)


class SettingsError(SystemExit):
    """Raised at start-up for invalid settings; exits with status 2 and a readable reason."""


def describe_validation_error(cls: type[BaseSettings], error: ValidationError) -> str:
    prefix = str(cls.model_config.get("env_prefix", ""))
    delimiter = str(cls.model_config.get("env_nested_delimiter") or "__")
    lines = [f"invalid settings for {cls.__name__}:"]
    for item in error.errors():
        path = [str(p) for p in item["loc"]]
        env = (prefix + delimiter.join(path)).upper() if path else "(settings)"
        lines.append(f"  {env}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def load_settings(cls: type[S], grpc_port: int | None = None, **overrides: object) -> S:
    """Settings from the environment and ``overrides``; ``grpc_port`` (a service's ``--grpc-port``) replaces
    the nested ``grpc.port`` alone, keeping the rest of its gRPC settings from the environment."""
    try:
        settings = cls(**overrides)
    except ValidationError as error:
        print(describe_validation_error(cls, error), file=sys.stderr)
        raise SettingsError(2) from error
    if grpc_port is not None:
        settings = settings.model_copy(update={"grpc": settings.grpc.model_copy(update={"port": grpc_port})})
    return settings
