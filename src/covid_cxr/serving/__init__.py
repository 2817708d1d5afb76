"""The REST server and clinician page: create_app(Settings) and serve() for the CLI."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import ValidationError

from covid_cxr.errors import ConfigError
from covid_cxr.serving.app import create_app
from covid_cxr.serving.settings import Settings

__all__ = ["Settings", "app_from_env", "create_app", "serve"]


def app_from_env() -> FastAPI:
    """uvicorn factory for `serve`: create_app(Settings.from_env()), in each worker process."""
    return create_app(Settings.from_env())


def serve(
    bundle: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    api_key: str | None = None,
    model_name: str | None = None,
    log_level: str = "info",
    **options: Any,
) -> None:
    """Run the server with uvicorn until interrupted; `options` are further Settings fields.

    The bundle is loaded once here first, so a broken bundle fails fast with a BundleError (bad
    settings: ConfigError).
    Each of the `workers` processes then loads it again (settings travel as COVID_CXR_SERVE_* variables).
    """
    import uvicorn

    from covid_cxr.bundle import load_bundle

    try:
        settings = Settings(bundle=Path(bundle), api_key=api_key, model_name=model_name, **options)
    except ValidationError as exc:
        raise ConfigError(f"invalid server settings: {exc}") from None
    load_bundle(settings.bundle, backend=settings.backend)
    os.environ.update(settings.to_env())
    uvicorn.run(
        "covid_cxr.serving:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        server_header=False,
    )
