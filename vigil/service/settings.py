"""Service configuration: one pydantic-settings class read from `VIGIL_*` environment variables.

`vigil serve` flags (`--bundle`, `--host`, `--port`, ...) override the environment; see
`service.cli`. Every field below is documented with its environment variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PROVIDERS = "CUDAExecutionProvider,CPUExecutionProvider"
GPU_PROVIDER = "CUDAExecutionProvider"


class Settings(BaseSettings):
    """Everything `vigil serve` can be told; each field is `VIGIL_<FIELD NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="VIGIL_", extra="ignore", frozen=True)

    bundle: Path | None = Field(
        default=None, description="bundle directory served at start-up (required)"
    )
    models_dir: Path | None = Field(
        default=None,
        description="the only folder POST /admin/reload may load bundles from "
        "(default: the parent folder of VIGIL_BUNDLE)",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="bearer token for /admin/*; unset or empty disables the admin routes (403)",
    )
    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port to listen on")
    providers: str = Field(
        default=DEFAULT_PROVIDERS,
        description="ONNX Runtime execution providers in order of preference, comma-separated; "
        "unavailable ones are skipped, CPU is the last resort",
    )
    require_gpu: bool = Field(
        default=False,
        description="fail readiness (and reloads) unless the session really runs on "
        "CUDAExecutionProvider, instead of silently running on the CPU",
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        description="ONNX Runtime intra-op threads (0 = one per CPU this process may use, less "
        "one left to the event loop, at least 1)",
    )
    switch_interval_ms: float = Field(
        default=0.5,
        gt=0,
        le=100,
        description="CPython's thread switch interval while serving (sys.setswitchinterval). "
        "With Python's 5 ms, the inference thread can wait up to 5 ms for the GIL after each "
        "ONNX Runtime call while the event loop runs; 0.5 ms hands batches back sooner",
    )
    batching: bool = Field(default=True, description="gather concurrent images into shared batches")
    max_batch: int = Field(
        default=32, ge=1, le=1024, description="images per ONNX Runtime call, at most"
    )
    max_wait_ms: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        description="how long the oldest queued image may wait for others to fill a batch. "
        "0 (as in Triton): no deliberate delay; images that queue while a batch runs share "
        "the next call. A few ms can fill GPU batches at moderate load, at that latency cost "
        "(the event loop's timers have ~1 ms resolution)",
    )
    max_queue: int = Field(
        default=1024,
        ge=0,
        description="images admitted and not yet scored (queued, or in the running batch), at "
        "most: past it a request is refused at once, 503 overloaded with Retry-After, unless "
        "nothing is ahead of it. 0: no bound",
    )
    latency_budget_ms: float = Field(
        default=500.0,
        ge=0,
        description="the longest the model may be expected to take to reach a request's images "
        "(those ahead of them and their own, at the measured time per image): past it the "
        "request is refused at once, 503 overloaded with Retry-After, unless nothing is ahead "
        "of it. 0: no budget",
    )
    max_files: int = Field(default=64, ge=1, description="files per /score request, at most")
    max_header_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="request line and headers of one request, at most (431 headers_too_large); "
        "without a bound a client could make the service buffer any amount of memory",
    )
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1, description="request body size limit in bytes"
    )
    max_image_pixels: int = Field(
        default=16_000_000,
        ge=1,
        description="width x height limit per image, checked from the header before decoding",
    )
    target_fpr: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="default target false-positive rate (default: the bundle's calibrated one)",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="log level of the service and uvicorn"
    )
    access_log: bool = Field(
        default=False, description="uvicorn's per-request access log (costs speed)"
    )
    shutdown_timeout_s: int = Field(
        default=25,
        ge=0,
        description="on SIGTERM, the longest the service takes to exit: the drain, then "
        "in-flight requests finishing",
    )
    drain_s: float = Field(
        default=5.0,
        ge=0,
        description="on SIGTERM, how long the service keeps answering (with Connection: close) "
        "after /readyz turned 503, before it closes its listener; within "
        "VIGIL_SHUTDOWN_TIMEOUT_S. 0: close at once",
    )

    @field_validator("admin_token", mode="after")
    @classmethod
    def _empty_token_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        return value

    @field_validator("providers", mode="after")
    @classmethod
    def _provider_names(cls, value: str) -> str:
        names = [p.strip() for p in value.split(",") if p.strip()]
        if not names:
            raise ValueError("name at least one execution provider")
        for name in names:
            if not name.endswith("ExecutionProvider"):
                raise ValueError(f"{name!r} is not an ONNX Runtime execution provider name")
        return ",".join(names)

    @model_validator(mode="after")
    def _drain_within_shutdown(self) -> Settings:
        if self.drain_s > self.shutdown_timeout_s:
            raise ValueError(
                f"VIGIL_DRAIN_S ({self.drain_s}) must not exceed VIGIL_SHUTDOWN_TIMEOUT_S "
                f"({self.shutdown_timeout_s}): the drain is part of the shutdown"
            )
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @property
    def provider_list(self) -> list[str]:
        return self.providers.split(",")

    @property
    def required_provider(self) -> str | None:
        return GPU_PROVIDER if self.require_gpu else None

    @property
    def max_wait_s(self) -> float:
        return self.max_wait_ms / 1000.0

    @property
    def latency_budget_s(self) -> float:
        return self.latency_budget_ms / 1000.0

    @property
    def reload_root(self) -> Path | None:
        """The folder reloads may read from, resolved (symlinks followed)."""
        if self.models_dir is not None:
            return self.models_dir.resolve()
        if self.bundle is not None:
            return self.bundle.resolve().parent
        return None

    def token(self) -> str | None:
        return None if self.admin_token is None else self.admin_token.get_secret_value()
