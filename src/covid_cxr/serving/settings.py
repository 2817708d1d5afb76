"""Server settings: a pydantic model, filled from arguments or from COVID_CXR_SERVE_* variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

ENV_PREFIX = "COVID_CXR_SERVE_"
MB = 1024 * 1024


class Settings(BaseModel):
    """What the server serves and the limits it enforces on every request.

    Example:
        >>> Settings(bundle="runs/demo/bundle", api_key="s3cret", max_upload_bytes=10 * MB)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    bundle: Path = Field(description="bundle folder (bundle.json, model.pt, model.onnx)")
    model_name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]+$", description="name in /v1/models/{name}; default: the run name"
    )
    api_key: SecretStr | None = Field(None, description="required as X-API-Key or Bearer token when set")
    backend: Literal["auto", "onnx", "torch"] = "auto"
    threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads (0 = one per core)")
    max_upload_bytes: int = Field(50 * MB, ge=1, description="largest request body accepted")
    max_pixels: int = Field(40_000_000, ge=1, description="largest decoded image (decompression-bomb guard)")
    max_instances: int = Field(64, ge=1, description="most images or arrays in one request")
    batching: bool = Field(
        False,
        description="gather concurrent predict requests into one model call (no gain on CPU: see benchmarks)",
    )
    max_batch: int = Field(16, ge=1, description="most rows in one gathered model call")
    max_wait_ms: float = Field(5.0, ge=0, le=1000, description="how long a request waits for company")
    cam_method: str = Field("gradcam", description="default explanation method of /explain")
    frontal_check: bool = Field(
        True, description="run the lung segmenter in the input gate of /predict, /explain and :explain"
    )
    max_side: int = Field(
        1024, ge=16, description="decoders reduce larger images to about this side while decoding"
    )
    decode_slots: int = Field(2, ge=1, description="requests decoding or parsing at once (per worker)")
    explain_slots: int = Field(1, ge=1, description="explanations computed at once (per worker)")
    queue_limit: int = Field(64, ge=0, description="requests waiting for a slot; beyond them: 503")
    body_timeout_s: float = Field(30.0, gt=0, description="a request body must arrive within this time")
    allowed_hosts: tuple[str, ...] = Field(
        ("*",), description="Host header values accepted (DNS-rebinding guard); '*' accepts any"
    )

    @field_validator("api_key")
    @classmethod
    def _non_empty_key(cls, value: SecretStr | None) -> SecretStr | None:
        """An empty key would silently turn authentication off (or accept an empty header): refuse it."""
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("the API key is empty; give a non-empty key or none at all")
        return value

    @field_validator("cam_method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        """Refuse an explanation method pytorch-grad-cam does not have, at startup rather than per request."""
        if value == "gradcam":  # the default: no need to import torch (the --workers parent never does)
            return value
        from covid_cxr.explain.cam import METHODS

        if value not in METHODS:
            raise ValueError(f"unknown CAM method {value!r}; valid: {', '.join(METHODS)}")
        return value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        """Accept "a,b" (the environment variable's form) as well as a list."""
        return tuple(h.strip() for h in value.split(",") if h.strip()) if isinstance(value, str) else value

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from COVID_CXR_SERVE_<FIELD> variables (e.g. COVID_CXR_SERVE_BUNDLE)."""
        env = os.environ if environ is None else environ
        keys = {name: ENV_PREFIX + name.upper() for name in cls.model_fields}
        return cls.model_validate({name: env[key] for name, key in keys.items() if key in env})

    def to_env(self) -> dict[str, str]:
        """The COVID_CXR_SERVE_* variables that from_env turns back into these settings."""
        env = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                text = value.get_secret_value()
            elif isinstance(value, tuple):
                text = ",".join(value)
            else:
                text = str(value)
            env[ENV_PREFIX + name.upper()] = text
        return env
